"""Optuna sweep (hydra-optuna-sweeper, in-memory storage): trials are Hydra jobs, `nucseg.train` returns
`val/dice`, and the study maximises it."""

from __future__ import annotations

import json
import logging

import pytest
import yaml

from nucseg.train import objective
from tests.helpers.marks import LONG_RUN
from tests.helpers.train_cli import LEAN, run_train


@LONG_RUN
def test_two_trial_optuna_sweep_maximises_val_dice(tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    run_train(*LEAN, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
              "hydra.sweeper.sampler.n_startup_trials=2", "test=false", f"hydra.sweep.dir={sweep}",
              cache_dir=cache_dir)
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
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


def test_objective_needs_the_metric_only_when_a_sweeper_optimises_it(caplog):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"optimized_metric": "val/dice"})
    assert objective(cfg, {"val/dice": 0.5}) == 0.5
    with caplog.at_level(logging.WARNING):
        assert objective(cfg, {"test/dice": 0.5}) is None  # e.g. train=false: warn, do not fail
    assert "optimized_metric: 'val/dice' was not logged" in caplog.text
    assert objective(OmegaConf.create({"optimized_metric": None}), {}) is None
