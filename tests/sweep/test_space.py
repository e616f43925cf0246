"""The search space from Hydra's sweep syntax, as optuna 4 distributions."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from nucseg.sweep.space import parse_space, suggest
from nucseg.utils.errors import ConfigError


def test_sweeps_become_distributions_and_other_overrides_stay_fixed():
    space, fixed = parse_space(["optimizer.lr=tag(log, interval(1e-4, 1e-2))", "loss=choice(bce_dice, dice)",
                                "data.batch_size=range(2, 9, 2)", "x=interval(0, 1)", "model=unetpp",
                                "+tags=[a,b]", "module.threshold=range(0.3, 0.6, 0.1)"])
    assert space["optimizer.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["loss"] == CategoricalDistribution(["bce_dice", "dice"])
    assert space["data.batch_size"] == IntDistribution(2, 8, step=2)  # Hydra's range excludes its stop
    assert space["x"] == FloatDistribution(0.0, 1.0)  # Hydra: an interval is always float
    thr = space["module.threshold"]
    assert isinstance(thr, FloatDistribution) and thr.low == 0.3 and thr.high == pytest.approx(0.5) and thr.step == 0.1
    assert fixed == ["model=unetpp", "+tags=[a,b]"]


def test_a_later_override_of_a_key_wins():
    space, fixed = parse_space(["loss=choice(dice, focal)", "loss=dice"])
    assert space == {} and fixed == ["loss=dice"]


def test_suggest_gives_overrides_inside_the_space():
    space, _ = parse_space(["lr=interval(0.001, 0.01)", "loss=choice(dice, focal)", "n=range(1, 4)"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    overrides = dict(o.split("=") for o in suggest(trial, space))
    assert 0.001 <= float(overrides["lr"]) <= 0.01 and overrides["loss"] in ("dice", "focal")
    assert overrides["n"] in ("1", "2", "3") and set(trial.params) == {"lr", "loss", "n"}


def test_a_bad_override_names_the_params_key():
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.params"):
        parse_space(["lr=interval(0.1"])
