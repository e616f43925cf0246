"""The sweep's results: optimization_results.yaml and the best trial as a preset that composes with the
train config (the command it prints is the one a user runs to train it again)."""

from __future__ import annotations

import shlex

import optuna
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from nucseg.sweep.results import PRESET_GROUP, PRESET_NAME, write_results
from nucseg.sweep.space import parse_space, suggest
from nucseg.sweep.worker import OVERRIDES
from tests.helpers.paths import PROJECT_ROOT


def _study(values: list[float]) -> optuna.Study:
    space, _ = parse_space(["optimizer.lr=interval(0.0001, 0.01)", "loss=choice(dice, focal)",
                            "module.threshold=choice(0.4, 0.6)"])
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    for value in values:
        trial = study.ask()
        trial.set_user_attr(OVERRIDES, suggest(trial, space))
        study.tell(trial, value)
    pruned = study.ask()
    suggest(pruned, space)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    return study


def test_results_and_a_preset_that_trains_the_best_trial_again(tmp_path):
    study = _study([0.5, 0.8, 0.6])
    fixed = ["hparams_search=optuna", "model=unetpp", "trainer.max_epochs=3"]
    results = write_results(study, tmp_path, storage="journal:///x.log", fixed=fixed, groups=["loss", "model"],
                            metric="val/dice")
    best = study.trials[1]
    on_disk = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert on_disk == results
    assert results["best_trial"] == 1 and results["best_value"] == 0.8 and results["best_params"] == best.params
    assert results["trials"] == {"complete": 3, "pruned": 1}

    preset = tmp_path / PRESET_GROUP / f"{PRESET_NAME}.yaml"
    assert preset.read_text().startswith("# @package _global_\n")
    command = shlex.split(results["command"])
    assert command[:6] == ["python", "-m", "nucseg.train", "--config-dir", str(tmp_path), "+best=optuna_best"]
    assert command[6:] == ["model=unetpp", "trainer.max_epochs=3"]  # the sweep's own overrides, not the search

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        # --config-dir <dir> is hydra.searchpath=[file://<dir>]
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{tmp_path}]", *command[5:]],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.optimizer.lr == best.params["optimizer.lr"]
    assert cfg.module.threshold == best.params["module.threshold"]
    assert cfg.hydra.runtime.choices.loss == best.params["loss"]  # a config group: chosen, not overwritten
    assert cfg.hydra.runtime.choices.model == "unetpp" and cfg.trainer.max_epochs == 3


def test_no_complete_trial_writes_results_without_a_preset(tmp_path):
    study = _study([])
    results = write_results(study, tmp_path, storage="journal:///x.log", fixed=[], groups=[])
    assert results["best_trial"] is None and results["trials"] == {"pruned": 1}
    assert not (tmp_path / PRESET_GROUP).exists()
