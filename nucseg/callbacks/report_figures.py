"""Figures a user would rather look at than read, written by the run itself into `<run dir>/figures/`:

- `training_curves.png`: train/val loss and val Dice / IoU per epoch;
- `best_worst.png`: for the best and worst test images by Dice, image / ground truth / prediction /
  TP-FP-FN overlay (yellow / green / red, the reference's colours) / uncertainty heatmap when available;
- `certainty_vs_dice.png`: image certainty against true Dice (when the model gives a certainty);
- `per_image.csv` of the same test figures, ranked by Dice, so failures can be studied.

Other test callbacks may add per-image results to the step outputs (`outputs["uncertainty"]` as an (H,W)
map, `outputs["certainty"]` as a float); listed after them, this callback picks those up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT

from nucseg.metrics.pixel import dice_score, iou_score
from nucseg.utils.distributed import gather_rows
from nucseg.utils.tables import write_csv
from nucseg.viz.images import as_uint8_rgb
from nucseg.viz.report import best_worst_figure, certainty_dice_figure, save_figure, thumbnail, training_curves_figure

log = logging.getLogger(__name__)

# foreground: errors of the foreground; membrane: of the background (EM membranes between cells)
ERROR_OVERLAYS = ("foreground", "membrane")
PER_IMAGE_COLUMNS = ("id", "height", "width", "dice", "iou", "n_true_pixels", "certainty")


class ReportFigures(L.Callback):
    def __init__(self, n_best_worst: int = 3, threshold: float = 0.5, max_side: int = 256,
                 dirname: str = "figures", error_overlay: str = "foreground"):
        if error_overlay not in ERROR_OVERLAYS:
            raise ValueError(f"callbacks.report_figures.error_overlay: expected one of {ERROR_OVERLAYS}, got "
                             f"{error_overlay!r}")
        self.n, self.threshold, self.max_side, self.dirname = n_best_worst, threshold, max_side, dirname
        self.error_overlay = error_overlay
        self.history: list[dict[str, float]] = []  # validation epochs
        self.train_history: list[dict[str, float]] = []  # every training epoch
        self.rows: list[dict] = []

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname

    # ------------------------------------------------------------------ training curves
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step)}
        for k in ("val/loss", "val/dice", "val/iou"):
            if k in m:
                row[k] = float(m[k])
        self.history.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every epoch, not only those with validation (which Lightning runs before this hook)
        m = trainer.callback_metrics
        if "train/loss_epoch" in m:
            self.train_history.append({"epoch": float(trainer.current_epoch),
                                       "train/loss": float(m["train/loss_epoch"])})

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history and not self.train_history:
            return
        save_figure(training_curves_figure(self.train_history, self.history),
                    self._dir(trainer) / "training_curves.png")

    # ------------------------------------------------------------------ test figures
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not batch["labelled"][0]:
            return
        assert isinstance(outputs, Mapping)  # SegmentationModule's test step returns a dict
        prob = outputs["probs"][0, 0].float().cpu()
        true = batch["target"][0, 0].cpu() > 0.5
        pred = prob > self.threshold
        image = as_uint8_rgb(batch["image"][0])
        unc = outputs.get("uncertainty")
        cert = outputs.get("certainty")
        self.rows.append({
            "id": batch["id"][0],
            "height": int(true.shape[0]), "width": int(true.shape[1]),
            "dice": float(dice_score(pred, true)), "iou": float(iou_score(pred, true)),
            "n_true_pixels": int(true.sum()),
            "certainty": float(cert) if cert is not None else None,
            "_image": thumbnail(image, self.max_side), "_true": thumbnail(true.numpy(), self.max_side),
            "_pred": thumbnail(pred.numpy(), self.max_side), "_prob": thumbnail(prob.numpy(), self.max_side),
            "_unc": thumbnail(torch.as_tensor(unc).float().cpu().numpy(), self.max_side) if unc is not None else None,
        })

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = gather_rows(trainer, self.rows)  # DDP: every process's test images, once each
        if not self.rows or not trainer.is_global_zero:
            return
        out = self._dir(trainer)
        ranked = sorted(self.rows, key=lambda r: r["dice"])
        write_csv(out / "per_image.csv", PER_IMAGE_COLUMNS, ranked)
        n_best = min(self.n, (len(ranked) + 1) // 2)  # best and worst never repeat an image
        n_worst = min(self.n, len(ranked) - n_best)
        picks = ranked[len(ranked) - n_best:][::-1] + ranked[:n_worst]
        save_figure(best_worst_figure(picks, n_best, self.error_overlay), out / "best_worst.png")
        with_cert = [r for r in self.rows if r["certainty"] is not None]
        if with_cert:
            save_figure(certainty_dice_figure([r["certainty"] for r in with_cert], [r["dice"] for r in with_cert]),
                        out / "certainty_vs_dice.png")
        log.info("wrote figures to %s", out)
