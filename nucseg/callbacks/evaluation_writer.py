"""Per test image of `python -m nucseg.evaluate`: pixel Dice / IoU rows and TP/FP/FN error overlays."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from nucseg.instances.watershed import postprocess_settings, probs_to_instances
from nucseg.metrics.pixel import dice_score, iou_score
from nucseg.models.module import pixel_threshold
from nucseg.utils.files import safe_filename
from nucseg.viz.images import as_uint8_rgb
from nucseg.viz.overlays import (
    membrane_error_overlay,
    object_error_overlay,
    pixel_error_overlay,
    save_png,
)

__all__ = ["EvaluationWriter"]


class EvaluationWriter(L.Callback):
    """Per test image: pixel Dice / IoU at the module's threshold (kept in `rows`), and a TP/FP/FN overlay
    PNG under `<output_dir>/overlays/` for the first `max_overlays` images (`level` pixel, object, or membrane:
    EM membranes found yellow / false green / missed red)."""

    def __init__(self, output_dir: str | Path, level: str = "pixel", max_overlays: int = 16, alpha: float = 0.5,
                 iou_threshold: float = 0.5):
        if level not in ("pixel", "object", "membrane"):
            raise ValueError(f"overlays.level: expected 'pixel', 'object' or 'membrane', got {level!r}")
        self.output_dir, self.level, self.max_overlays = Path(output_dir), level, int(max_overlays)
        self.alpha, self.iou_threshold = alpha, iou_threshold
        self.rows: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        thr = pixel_threshold(pl_module)
        probs = outputs["probs"].detach().float().cpu()
        for i in range(probs.shape[0]):
            pred = probs[i, 0] > thr
            true = batch["target"][i, 0].cpu() > 0.5
            labelled = bool(batch["labelled"][i])
            row: dict[str, Any] = {"id": str(batch["id"][i]), "height": int(pred.shape[0]), "width": int(pred.shape[1]),
                   "dice": float(dice_score(pred, true)) if labelled else math.nan,
                   "iou": float(iou_score(pred, true)) if labelled else math.nan}
            self.rows.append(row)
            if labelled and len(self.rows) <= self.max_overlays and trainer.is_global_zero:
                self._overlay(pl_module, batch, i, probs[i], pred.numpy(), str(row["id"]))

    def _overlay(self, pl_module: L.LightningModule, batch: dict, i: int, probs: torch.Tensor, pred: np.ndarray,
                 rid: str) -> None:
        image = as_uint8_rgb(batch["image"][i])
        if self.level in ("pixel", "membrane"):
            draw = pixel_error_overlay if self.level == "pixel" else membrane_error_overlay
            rgb = draw(image, pred, batch["target"][i, 0].cpu().numpy() > 0.5, self.alpha)
        else:
            pred_labels = probs_to_instances(probs.numpy(), **postprocess_settings(pl_module))
            rgb = object_error_overlay(image, pred_labels, batch["labels"][i].cpu().numpy(), self.iou_threshold,
                                       self.alpha)
        save_png(self.output_dir / "overlays" / f"{safe_filename(rid)}.png", rgb)
