"""Time budget: the schedule arithmetic, and a real run planned from measurements on this machine."""

from __future__ import annotations

import json
import time

import pytest
import torch

from nucseg.train import train
from nucseg.training.budget import plan_schedule, process_elapsed, run_elapsed
from nucseg.utils.errors import ConfigError
from tests.helpers.marks import LONG_RUN


def test_plan_schedule_fills_the_time_with_whole_epochs_and_even_validations():
    # 1000 s: 4 validations of 10 s and a test of 60 s leave 900 s = 1800 steps of 0.5 s: 18 epochs of 100 fit,
    # rounded down to 4 x 4 epochs, which are lengthened to 112 steps so the 1800 steps are all trained
    assert plan_schedule(1000, 0.5, 10, 60, 100, 4) == (16, 4, 112)
    assert plan_schedule(1000, 0.5, 10, 60, 100, 4, max_steps=800) == (8, 2, 100)
    assert plan_schedule(1000, 0.5, 10, 60, 100, 1) == (18, 18, 103)  # 930 s = 1860 steps
    # 200 s - 4 x 10 s - 60 s = 100 s = 200 steps: 2 epochs, fewer than the validations: validate after each,
    # and the 2 validations not run buy 40 more steps: 2 epochs of 120
    assert plan_schedule(200, 0.5, 10, 60, 100, 4) == (2, 1, 120)
    # 672 s after the test fit 3 epochs of 159 s + 50 s (4 validations of 50 s would fit only 2); the rest of
    # the time lengthens them: (1286 - 614 - 3 x 50) / 1.593 = 327 steps
    assert plan_schedule(1286, 1.593, 50, 614, 100, 4) == (3, 1, 109)
    with pytest.raises(ConfigError, match="budget"):
        plan_schedule(100, 0.5, 10, 60, 100, 4)
    for args in [(1000, 0.5, 10, 60, 100, 4), (5000, 0.7, 30, 400, 100, 4), (1286, 1.593, 50, 614, 100, 4)]:
        epochs, every, spe = plan_schedule(*args)
        available, step_s, val_s, test_s = args[:4]
        used = epochs * spe * step_s + epochs // every * val_s + test_s
        assert used <= available < used + (epochs + 1) * step_s + val_s  # fills the time, within one step an epoch


def test_process_elapsed_counts_from_process_start():
    assert 0.0 < process_elapsed() < 24 * 3600


def test_a_run_in_a_long_lived_process_counts_from_its_own_start():
    """A notebook (or this test session) that trains late must not count its earlier hours against the budget."""
    time.sleep(0.2)
    started = time.monotonic()
    assert run_elapsed(started) < process_elapsed() - 0.1  # the time before `started` is not counted
    assert run_elapsed(started - 5.0) >= 5.0 and abs(run_elapsed(None) - process_elapsed()) < 0.05  # /proc: 10 ms ticks


@LONG_RUN
def test_budgeted_run_plans_from_measurements_and_ends_in_time(make_cfg, tmp_path):
    # max_steps caps the plan at 16 steps, 4 epochs of 4, so the test stays short on a fast machine
    cfg = make_cfg(["logger=csv", "budget.minutes=6", "budget.validations=2", "data.samples_per_epoch=8",
                    "budget.max_steps=16", "trainer.limit_train_batches=null", "budget.timing_steps=2",
                    "budget.warmup_steps=1"])
    train(cfg)
    plan = json.loads((tmp_path / "budget.json").read_text())
    assert plan["steps_per_epoch"] == 4 and plan["step_s"] > 0 and plan["forward_s_per_mp"] > 0
    assert plan["epochs"] == 4 and plan["check_val_every_n_epoch"] == 2
    assert plan["steps"] == plan["epochs"] * 4 and plan["train_precision"] == "32"
    assert plan["estimated_total_s"] <= 6 * 60
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == plan["steps"] == 16  # trained exactly the planned schedule
    assert process_elapsed() > 0


def test_a_recorded_plan_is_trained_without_measuring(make_cfg, tmp_path, monkeypatch):
    """budget.plan=<budget.json>: the recorded schedule, not this machine's, so a budgeted run can be rerun."""
    import nucseg.train as train_mod

    recorded = tmp_path / "earlier" / "budget.json"
    recorded.parent.mkdir()
    recorded.write_text(json.dumps({"epochs": 3, "check_val_every_n_epoch": 3, "steps_per_epoch": 4}))

    def must_not_measure(*args, **kwargs):
        raise AssertionError("budget.plan given: nothing is measured")

    monkeypatch.setattr(train_mod, "apply_budget", must_not_measure)
    out = tmp_path  # make_cfg's run directory
    train_mod.train(make_cfg(["logger=csv", "budget.minutes=6", f"budget.plan={recorded}", "data.samples_per_epoch=8",
                              "trainer.limit_train_batches=null", "test=false", "trainer.limit_val_batches=1"]))
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 12 and last["epoch"] == 3  # 3 epochs of 4 steps, as recorded
    assert json.loads((out / "budget.json").read_text()) == json.loads(recorded.read_text())


def test_budget_too_small_is_one_clear_error(make_cfg):
    # 0.6 s: the process has spent more than that starting, so the run stops before measuring anything
    cfg = make_cfg(["logger=csv", "budget.minutes=0.01"])
    with pytest.raises(ConfigError, match=r"budget.minutes=0.01: \d+ s were spent starting the run already"):
        train(cfg)
