"""The hooks every scoring callback shares: score the test split (keeping one row per image for per_image.csv)
and, when asked, the validation split at each validation (never the sanity check)."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.utilities.types import STEP_OUTPUT

__all__ = ["ScoringCallback"]


class ScoringCallback(L.Callback):
    """Base of the callbacks that score whole images at validation and test.

    A subclass sets `self.on_validation` and gives `_start(pl_module)` (reset the accumulators),
    `_update(pl_module, outputs, batch) -> rows` (score one batch of the LightningModule's outputs; one dict per
    image) and `_end(trainer, pl_module, stage)` (log the `stage` metrics, `stage` being "val" or "test").
    The test's rows are in `self.rows` when the test ends.
    """

    on_validation: bool = False

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def _start(self, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def _update(self, pl_module: L.LightningModule, outputs: Any, batch: dict) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        raise NotImplementedError

    # ----------------------------------------------------------------- test
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []
        self._start(pl_module)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.rows += self._update(pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module, "test")

    # ----------------------------------------------------------------- validation
    def _validating(self, trainer: L.Trainer) -> bool:
        return self.on_validation and not trainer.sanity_checking

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating(trainer):
            self._start(pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._validating(trainer):
            self._update(pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating(trainer):
            self._end(trainer, pl_module, "val")
