"""Optuna sweeps through the real command (nucseg's sweeper on optuna 4+, `hparams_search=optuna`): trials are
Hydra jobs, `nucseg.train` returns `val/dice`, the study maximises it and lives in a journal file; two sweeps
share one study; a trial is pruned from its validation values; user errors end in one line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from nucseg.sweep.storage import open_storage
from nucseg.train import objective
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import PROJECT_ROOT
from tests.helpers.train_cli import LEAN, run_train, train_cmd, train_env

SWEEP = [*LEAN, "hparams_search=optuna", "hydra.sweeper.sampler.n_startup_trials=2", "test=false"]


def _study(url: str, name: str = "nucseg") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url))


@LONG_RUN
def test_two_trial_optuna_sweep_maximises_val_dice(tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    run_train(*SWEEP, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", cache_dir=cache_dir)
    trials = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in trials] == ["0", "1"]
    dice, params = [], []
    for trial in trials:
        dice.append(json.loads((trial / "metrics.json").read_text())["val/dice"])
        overrides = yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text())
        params.append(sorted(o for o in overrides if o.split("=")[0] in ("optimizer.lr", "loss")))
    assert params[0] != params[1] and all(len(p) == 2 for p in params)  # the sampler chose each trial

    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(dice))  # the returned val/dice, maximised
    best = dice.index(max(dice))
    assert result["best_params"]["optimizer.lr"] == pytest.approx(float(params[best][1].split("=")[1]))
    # the study is in the default journal file; each trial's validation values were reported to it
    study = _study(result["storage"])
    assert result["storage"] == f"journal://{sweep}/optuna_journal.log"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert all(t.intermediate_values for t in study.trials)
    preset = sweep / "best" / "optuna_best.yaml"
    assert preset.read_text().startswith("# @package _global_") and "+best=optuna_best" in result["command"]


@LONG_RUN
def test_two_sweeps_on_one_journal_study_finish_n_trials_between_them(tmp_path, cache_dir, data_dir):
    """The cluster recipe: the same command twice (two machines or Slurm jobs), one study on shared storage."""
    url = f"journal://{tmp_path}/shared/study.log"
    env = train_env()
    procs = [subprocess.Popen(train_cmd(*SWEEP, "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={url}",
                                        "hydra.sweeper.study_name=shared", f"hydra.sweep.dir={tmp_path}/sweep{i}",
                                        cache_dir=cache_dir),
                              cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=560)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-3000:] for o in outputs]
    study = _study(url, "shared")
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 3  # n_trials is the study's total
    assert all(t.state == TrialState.FAIL for t in study.trials if t not in done)  # asked in a race, not run
    job_dirs = {t.user_attrs["nucseg_output_dir"] for t in done}
    assert len(job_dirs) == 3  # three different jobs, none run twice
    for d in job_dirs:
        assert (tmp_path / d).is_dir()
    # each sweep reports the study as it was when that sweep stopped (the other's trial may still be running);
    # the one that stopped last reports every trial
    finished = []
    for i in range(2):
        result = yaml.safe_load((tmp_path / f"sweep{i}" / "optimization_results.yaml").read_text())
        assert result["study_name"] == "shared" and result["storage"] == url
        assert sum(result["trials"].get(k, 0) for k in ("complete", "pruned", "running")) == 3
        finished.append(sum(result["trials"].get(k, 0) for k in ("complete", "pruned")))
    assert max(finished) == 3


@LONG_RUN
def test_a_trial_pruned_at_its_first_validation_is_recorded_as_pruned(tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    # ThresholdPruner(lower=2): any dice is below 2, so the first reported value prunes the trial
    run_train(*SWEEP, "hydra.sweeper.n_trials=1", "trainer.max_epochs=3",
              "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:2.0}",
              f"hydra.sweep.dir={sweep}", cache_dir=cache_dir)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["trials"] == {"pruned": 1} and result["best_trial"] is None
    (trial,) = _study(result["storage"]).trials
    assert trial.state == TrialState.PRUNED and len(trial.intermediate_values) == 1  # stopped at once
    assert not (sweep / "0" / "metrics.json").exists()  # the training stopped there


@LONG_RUN
def test_a_sweep_killed_mid_trial_and_started_again_goes_on_with_its_trials(tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    args = [*SWEEP, "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    with open(tmp_path / "killed.log", "w") as out:
        proc = subprocess.Popen(train_cmd(*args, cache_dir=cache_dir), cwd=PROJECT_ROOT, env=train_env(),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        started = sweep / "1" / ".hydra" / "config.yaml"  # trial 1's job has started
        deadline = time.monotonic() + 500
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its job, as a lost node or `scancel -s KILL`
        proc.wait(timeout=60)
    assert started.exists(), (tmp_path / "killed.log").read_text()[-3000:]
    url = f"journal://{sweep}/optuna_journal.log"
    before = _study(url).trials
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    first_metrics = (sweep / "0" / "metrics.json").read_text()

    run_train(*args, cache_dir=cache_dir)  # the same command again
    trials = _study(url).trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == before[0].value  # kept, not rerun
    assert (sweep / "0" / "metrics.json").read_text() == first_metrics
    assert trials[1].state == TrialState.FAIL and "stopped" in trials[1].user_attrs["nucseg_fail_reason"]
    assert len(trials) == 3 and trials[2].user_attrs["nucseg_requeued_from"] == 1
    assert trials[2].params == trials[1].params and trials[2].state == TrialState.COMPLETE
    assert json.loads((sweep / "2" / "metrics.json").read_text())["val/dice"] == pytest.approx(trials[2].value)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["trials"] == {"complete": 2, "fail": 1}


@pytest.mark.parametrize(("override", "key", "outside"),
                         [("hydra.sweeper.storage=redis://localhost", "hydra.sweeper.storage", True),
                          # a bad pruner is checked in-process in tests/sweep; this subprocess run is in the slow suite
                          pytest.param("hydra.sweeper.pruner=medain", "hydra.sweeper.pruner", False,
                                       marks=pytest.mark.slow)])
def test_a_bad_sweeper_setting_is_one_line_and_exit_2(tmp_path, cache_dir, override, key, outside):
    """`outside`: the `nucseg` command run outside the checkout, where an editable install hides the plugin from
    Hydra's scan (nucseg.utils.extras.register_own_plugins): the sweeper must still be the one reporting."""
    cmd = train_cmd(*SWEEP, override, f"hydra.sweep.dir={tmp_path}/sweep", cache_dir=cache_dir)
    if outside:
        cmd[1:3] = ["-m", "nucseg.cli", "train"]
    proc = subprocess.run(cmd, cwd=tmp_path if outside else PROJECT_ROOT, env=train_env(HYDRA_FULL_ERROR="0"),
                          capture_output=True, text=True, timeout=110)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if key in line]
    assert len(lines) == 1 and "expected" in lines[0] and "Traceback" not in proc.stdout + proc.stderr
    assert not list((tmp_path / "sweep").glob("0"))  # no trial was launched


def test_the_sweeper_plugin_is_found_and_the_search_config_composes():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    assert "NucsegOptunaSweeper" in [c.__name__ for c in Plugins.instance().discover(Sweeper)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=optuna", "callbacks=[model_checkpoint]"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.nucseg_optuna_sweeper.sweeper.NucsegOptunaSweeper"
    assert sweeper.storage is None and sweeper.load_if_exists and sweeper.direction == "maximize"
    # the pruning callback is part of the search, whatever the callbacks selection
    assert cfg.callbacks.optuna_pruning._target_ == "nucseg.callbacks.optuna_pruning.OptunaPruning"


def test_objective_needs_the_metric_only_when_a_sweeper_optimises_it(caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"optimized_metric": "val/dice"})
    assert objective(cfg, {"val/dice": 0.5}) == 0.5
    with caplog.at_level(logging.WARNING):
        assert objective(cfg, {"test/dice": 0.5}) is None  # e.g. train=false: warn, do not fail
    assert "optimized_metric: 'val/dice' was not logged" in caplog.text
    assert objective(OmegaConf.create({"optimized_metric": None}), {}) is None
