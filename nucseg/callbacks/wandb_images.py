"""Log image / ground truth / prediction overlays of the first validation images to W&B each epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT

from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.viz.images import as_uint8_rgb


class WandbSegmentationImages(L.Callback):
    """`wandb.Image(..., masks={'prediction', 'ground_truth'})` for the first `num_images` validation images."""

    def __init__(self, num_images: int = 4, threshold: float = 0.5, max_side: int = 512):
        self.num_images, self.threshold, self.max_side = num_images, threshold, max_side
        self._images: list = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = []

    @rank_zero_only
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if trainer.sanity_checking or batch_idx >= self.num_images or not wandb_experiments(trainer):
            return
        import wandb

        assert isinstance(outputs, Mapping)  # SegmentationModule's validation step returns a dict
        image = as_uint8_rgb(batch["image"][0])
        pred = (outputs["probs"][0, 0] > self.threshold).cpu().numpy().astype(np.uint8)
        true = (batch["target"][0, 0] > 0.5).cpu().numpy().astype(np.uint8)
        step = max(1, int(np.ceil(max(image.shape[:2]) / self.max_side)))  # keep W&B payloads small
        self._images.append(wandb.Image(
            image[::step, ::step],
            masks={"prediction": {"mask_data": pred[::step, ::step], "class_labels": {1: "nucleus"}},
                   "ground_truth": {"mask_data": true[::step, ::step], "class_labels": {1: "nucleus"}}},
            caption=str(batch["id"][0]),
        ))

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._images:
            return
        for run in wandb_experiments(trainer):
            run.log({"val/overlays": self._images, "trainer/global_step": trainer.global_step})
        self._images = []
