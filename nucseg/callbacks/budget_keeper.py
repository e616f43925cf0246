"""Keep a budgeted run (`budget.minutes`) on time while it trains.

The plan (`nucseg.training.budget.apply_budget`) times ten training steps before training; on a shared or
thermally throttled machine the pace then drifts (on the slow 2-core kind the start-of-run timing read 10 % high
in two of four runs, and those runs ended 3-4 minutes early). At each epoch end this callback re-plans the total
epochs from the pace of the last epochs and the validations' measured durations (`replan_epochs`), stretches
or shrinks the LR schedule to the new length (`respan_schedule`) and makes the last epoch validate, so the best
checkpoint can be the final weights. Each change is logged and recorded under `replans` in `budget.json`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from nucseg.training.budget import BudgetPlan, replan_epochs, respan_schedule
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.cluster import rank_zero_decides

__all__ = ["BudgetKeeper"]

log = logging.getLogger(__name__)


class BudgetKeeper(Callback):
    """Re-plan a budgeted run's epochs at each epoch end. `elapsed`: seconds the run has used so far
    (`nucseg.training.budget.run_elapsed`); `window`: epochs whose pace counts (the first epoch, which warms
    caches, only while it is the only one); `budget_json`: the plan file that gets the `replans` record."""

    def __init__(self, plan: BudgetPlan, elapsed: Callable[[], float], budget_json: str | Path | None = None,
                 window: int = 3, max_steps: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.plan, self.elapsed, self.window, self.clock = plan, elapsed, max(1, int(window)), clock
        self.budget_json = Path(budget_json) if budget_json else None
        self.max_steps = max_steps
        self.every = max(1, int(plan.check_val_every_n_epoch))
        self.epoch_s: list[float] = []  # training seconds of each finished epoch (validation excluded)
        self.val_s: list[float] = []
        self.replans: list[dict[str, Any]] = []
        self._epoch_start = self._val_start = 0.0
        self._val_in_epoch = 0.0

    # ----------------------------------------------------------------- timing
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start, self._val_in_epoch = self.clock(), 0.0
        last = trainer.current_epoch == int(trainer.fit_loop.max_epochs or 0) - 1
        if last and (trainer.current_epoch + 1) % self.every:
            trainer.check_val_every_n_epoch = 1  # the run ends here: validate, so the final weights can be best

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        took = self.clock() - self._val_start
        self.val_s.append(took)
        self._val_in_epoch += took

    # ----------------------------------------------------------------- re-planning
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_s.append(self.clock() - self._epoch_start - self._val_in_epoch)
        done = trainer.current_epoch + 1
        planned = int(trainer.fit_loop.max_epochs or 0)
        if done >= planned:
            return
        steps_per_epoch = max(1, int(trainer.num_training_batches))
        recent = self.epoch_s[1:][-self.window:] or self.epoch_s[-self.window:]
        step_s = sum(recent) / len(recent) / steps_per_epoch
        val_s = sum(self.val_s) / len(self.val_s) if self.val_s else self.plan.val_s
        remaining = self.plan.minutes * 60 - self.plan.reserve_s - self.elapsed()
        cap = self.max_steps // steps_per_epoch if self.max_steps else None
        new = replan_epochs(remaining, step_s, val_s, self.plan.test_s, steps_per_epoch, done, self.every, cap)
        if new > planned:  # lengthen only with half an epoch to spare: no back and forth on noise
            new = max(planned, replan_epochs(remaining - 0.5 * step_s * steps_per_epoch, step_s, val_s,
                                             self.plan.test_s, steps_per_epoch, done, self.every, cap))
        new = int(rank_zero_decides(new))  # DDP: every rank trains the same schedule
        if new == planned:
            return
        trainer.fit_loop.max_epochs = new
        for config in trainer.lr_scheduler_configs:
            total = new * steps_per_epoch if config.interval == "step" else new
            if not respan_schedule(config.scheduler, total):
                log.debug("budget: %s does not depend on the run's length", type(config.scheduler).__name__)
        change = {"after_epoch": done, "step_s": round(step_s, 4), "val_s": round(val_s, 2),
                  "remaining_s": round(remaining, 1), "epochs_before": planned, "epochs_after": new}
        self.replans.append(change)
        log.info("budget: %.3f s/step over the last %d epochs (planned %.3f), %.0f s left: %d epochs instead of %d "
                 "(%d steps)", step_s, len(recent), self.plan.step_s, remaining, new, planned,
                 new * steps_per_epoch)
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        if self.budget_json is None or not trainer.is_global_zero or not self.budget_json.is_file():
            return
        data = json.loads(self.budget_json.read_text())
        data["replans"] = self.replans
        atomic_write_text(self.budget_json, json.dumps(data, indent=2) + "\n")
