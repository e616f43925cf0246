"""nucseg's Hydra sweeper on optuna 4+ (`hydra/sweeper=nucseg_optuna`, selected by `hparams_search=optuna`).

Hydra finds it by scanning the `hydra_plugins` namespace package; the modules it imports at that scan
(`config`, `sweeper`) import neither optuna nor torch. The work is done in `nucseg.sweep`.
"""

__version__ = "0.1.0"
