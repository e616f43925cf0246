"""Plain progress lines in the log when stdout is not a terminal (a SLURM job, nohup, CI): Lightning's rich bar
draws nothing there until a loop ends. A thin adapter over nucseg.utils.progress (the clock and the lines).

Logged through `logging` (Hydra writes it to `<run dir>/<task>.log` and the console), by rank 0 only, at most
one line per `interval_s` per loop and one when each loop ends (the sanity check is not logged):

    train 120/1512 steps (epoch 2/15) loss 0.4312 0.61 s/step ETA 14:09
    validate 20/67 images 0.93 s/image ETA 0:44
    validate done: 67 images in 1:02 (0.93 s/image)
    test 30/65 images 3.10 s/image ETA 1:48
    train done: 1512 steps in 15:22 (0.61 s/step) loss 0.2170

Training counts optimizer steps (`trainer.global_step` of `trainer.estimated_stepping_batches`); its s/step
leaves out the time spent validating, so its ETA is the training steps left. `loss` is the mean of the training
steps' losses since the previous line (read from the device once per line, not once per step). Validation, test
and predict count batches, which are whole images here (their loaders have batch_size 1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT

from nucseg.utils.progress import DEFAULT_INTERVAL_S, INTERVAL_ATTR, ProgressClock, plain_progress_wanted

__all__ = ["ProgressLog"]

log = logging.getLogger(__name__)


def _total(value: Any) -> int | None:
    """A loop's length as Lightning gives it (an int, inf, or a list of them per dataloader); None if endless."""
    if isinstance(value, (list, tuple)):
        parts = [_total(v) for v in value]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return int(value)


def _step_loss(outputs: Any) -> torch.Tensor | None:
    """The training step's loss from what it returned (a tensor, or a dict with `loss`)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss.detach().float() if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class ProgressLog(L.Callback):
    """A progress line every `interval_s` seconds of each training / validation / test / predict loop, and one
    when it ends; `when`: `auto` (only when stdout is not a terminal), `always`, `never`."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, when: str = "auto",
                 clock: Callable[[], float] | None = None):
        plain_progress_wanted(when)  # a bad value fails when the callback is built, not after the first epoch
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s}: expected seconds >= 0")
        self.interval_s, self.when = float(interval_s), when
        self._clock_kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
        self.enabled = False
        # read by the loops other callbacks run (nucseg.utils.progress.progress_interval); None while off
        setattr(self, INTERVAL_ATTR, None)
        self._train: ProgressClock | None = None
        self._eval: ProgressClock | None = None
        self._eval_total: int | None = None
        self._eval_done = 0
        self._loss_sum: torch.Tensor | None = None
        self._loss_n = 0
        self._last_loss: float | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.enabled = trainer.is_global_zero and plain_progress_wanted(self.when)
        setattr(self, INTERVAL_ATTR, self.interval_s if self.enabled else None)

    def _clock(self, total: int | None, start: int = 0) -> ProgressClock:
        return ProgressClock(total, self.interval_s, start=start, **self._clock_kw)

    # ----------------------------------------------------------------- training
    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train, self._loss_sum, self._loss_n, self._last_loss = None, None, 0, None

    @rank_zero_only
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any],
                             batch_idx: int) -> None:
        # the clock starts at the first batch: what callbacks do before (e.g. timing a budget) is not a step
        if self.enabled and self._train is None:
            self._train = self._clock(_total(trainer.estimated_stepping_batches), start=trainer.global_step)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                           batch: dict[str, Any], batch_idx: int) -> None:
        if self._train is None:
            return
        loss = _step_loss(outputs)
        if loss is not None:  # summed on the device: no host sync per step
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1
        if self._train.due():
            # a budgeted run may re-plan its length (nucseg.callbacks.budget_keeper): the total follows it
            self._train.total = _total(trainer.estimated_stepping_batches)
            log.info(self._train.line("train", trainer.global_step, "step", self._train_details(trainer)))

    def _train_details(self, trainer: L.Trainer) -> str:
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epoch = f"(epoch {trainer.current_epoch + 1}" + (f"/{max_epochs})" if max_epochs else ")")
        if self._loss_sum is not None and self._loss_n:
            self._last_loss = float(self._loss_sum.item()) / self._loss_n
            self._loss_sum, self._loss_n = None, 0
        return epoch + (f" loss {self._last_loss:.4f}" if self._last_loss is not None else "")

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._train is None:
            return
        self._train.resume()
        if self._loss_sum is not None and self._loss_n:
            self._last_loss = float(self._loss_sum.item()) / self._loss_n
        loss = f"loss {self._last_loss:.4f}" if self._last_loss is not None else ""
        log.info(self._train.finished("train", trainer.global_step, "step", loss))
        self._train = None

    # ----------------------------------------------------------------- validation, test, predict
    def _eval_start(self, trainer: L.Trainer, total: Any) -> None:
        self._eval, self._eval_total, self._eval_done = None, None, 0
        if not self.enabled or trainer.sanity_checking:
            return
        if self._train is not None:  # validation inside fit: not training time
            self._train.pause()
        self._eval_total = _total(total)

    def _eval_batch_start(self, trainer: L.Trainer) -> None:
        # the clock starts at the first batch: work other callbacks do at the loop's start (post-processing
        # tuning, the uncertainty pass over the validation split) logs its own progress, and is not an image
        if self.enabled and not trainer.sanity_checking and self._eval is None:
            self._eval = self._clock(self._eval_total)

    def _eval_batch_end(self, stage: str) -> None:
        if self._eval is None:
            return
        self._eval_done += 1
        if self._eval.due():
            log.info(self._eval.line(stage, self._eval_done, "image"))

    def _eval_end(self, stage: str) -> None:
        if self._train is not None:
            self._train.resume()
        if self._eval is not None:
            log.info(self._eval.finished(stage, self._eval_done, "image"))
            self._eval = None

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer, trainer.num_val_batches)

    @rank_zero_only
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any],
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_start(trainer)

    @rank_zero_only
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end("validate")

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("validate")

    @rank_zero_only
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer, trainer.num_test_batches)

    @rank_zero_only
    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any],
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_start(trainer)

    @rank_zero_only
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end("test")

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("test")

    @rank_zero_only
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_start(trainer, trainer.num_predict_batches)

    @rank_zero_only
    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict[str, Any],
                               batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_start(trainer)

    @rank_zero_only
    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                             batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_batch_end("predict")

    @rank_zero_only
    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_end("predict")
