"""Optuna hyper-parameter search as a Hydra sweeper (`hparams_search=optuna`).

`hydra_plugins.nucseg_optuna_sweeper` registers the sweeper with Hydra; the work is done here:

- `storage`: the study's storage URL (a journal file by default, or any SQLAlchemy URL) and the pruner;
- `space`: the search space from `hydra.sweeper.params` (`choice`, `range`, `interval`);
- `worker`: one sweeper process: ask trials, launch them through Hydra's launcher, tell the results, with the
  study-wide trial count shared by every worker on the same study and the trials of dead workers re-queued;
- `trial_env`: how a launched job finds its trial (environment variables), for the pruning callback;
- `results`: `optimization_results.yaml` and the best trial as a preset to train again.

optuna is imported lazily: nucseg works without the `sweep` extra.
"""
