"""Pixel confusion and region scores at validation and test: a thin adapter over `nucseg.metrics.regions` and
torchmetrics' `BinaryConfusionMatrix`.

For every labelled image of the split (foreground at the module's threshold against the binary target):
- the confusion matrix normalised over the true class (rows: true background / foreground, columns: predicted),
  logged as `<stage>/confusion/{tn,fp,fn,tp}` (rates), drawn into `<run>/figures/confusion_matrix.png` at test and
  logged to W&B as `<stage>/confusion_matrix` when a W&B logger is attached;
- `<stage>/pixel_error`, the mean over images of the fraction of wrong pixels;
- with `regions=true`, or `auto` for a model whose post-processing is tuned for regions
  (`postprocess.objective=rand_f`: tissue that objects tile, e.g. ISBI 2012 EM cells): the foreground-restricted
  Rand and information scores (`<stage>/rand_f`, `rand_split`, `rand_merge`, `info_f`, `vi_split`, `vi_merge`) of the
  regions the module's stored post-processing makes of the probabilities, against the label map.
Test rows (id, pixel_error and the region scores) are kept in `rows` for `per_image.csv`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryConfusionMatrix

from nucseg.callbacks.scoring import ScoringCallback
from nucseg.instances.watershed import postprocess_settings, probs_to_instances
from nucseg.metrics.regions import REGION_KEYS, pixel_error, region_scores
from nucseg.models.module import pixel_threshold
from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.viz.plots import figure_array
from nucseg.viz.report import confusion_matrix_figure, save_figure

__all__ = ["RegionScores"]

log = logging.getLogger(__name__)

CONFUSION_KEYS = (("tn", 0, 0), ("fp", 0, 1), ("fn", 1, 0), ("tp", 1, 1))


class RegionScores(ScoringCallback):
    """`regions`: also score the post-processed regions (Rand / VI): true, false or "auto" (when the module's
    `postprocess.objective` is rand_f); `on_validation`: also at validation; `class_names`: the two classes as
    the figure names them (background first)."""

    def __init__(self, regions: bool | str = "auto", on_validation: bool = True,
                 class_names: tuple[str, str] | list[str] = ("background", "foreground"), dirname: str = "figures"):
        if len(class_names) != 2:
            raise ValueError(f"callbacks.region_scores.class_names: expected two names, got {list(class_names)}")
        if regions not in (True, False, "auto"):
            raise ValueError(f"callbacks.region_scores.regions: expected true, false or auto, got {regions!r}")
        super().__init__()
        self.regions, self.on_validation = regions, on_validation
        self._regions = False
        self.class_names, self.dirname = tuple(class_names), dirname
        self._confusion: BinaryConfusionMatrix | None = None
        self._means: dict[str, MeanMetric] = {}

    # ----------------------------------------------------------------- shared
    def _start(self, pl_module: L.LightningModule) -> None:
        # on the module's device, so that DDP sums the states across processes
        self._confusion = BinaryConfusionMatrix(normalize="none").to(pl_module.device)
        self._regions = (postprocess_settings(pl_module).get("objective") == "rand_f" if self.regions == "auto"
                         else bool(self.regions))
        keys = ("pixel_error", *(REGION_KEYS if self._regions else ()))
        self._means = {k: MeanMetric().to(pl_module.device) for k in keys}

    def _update(self, pl_module: L.LightningModule, outputs: Any, batch: dict) -> list[dict[str, Any]]:
        assert self._confusion is not None
        threshold = pixel_threshold(pl_module)
        settings = postprocess_settings(pl_module) if self._regions else {}
        rows = []
        for i in range(outputs["probs"].shape[0]):
            if not batch["labelled"][i]:
                continue
            prob = outputs["probs"][i, 0].detach().float()
            true = batch["target"][i, 0].to(prob.device) > 0.5
            pred = prob > threshold
            self._confusion.update(pred.reshape(-1).long(), true.reshape(-1).long())
            row: dict[str, Any] = {"id": batch["id"][i],
                                   "pixel_error": pixel_error(pred.cpu().numpy(), true.cpu().numpy())}
            if self._regions:
                regions = probs_to_instances(outputs["probs"][i].detach().float().cpu().numpy(), **settings)
                row.update(region_scores(batch["labels"][i].cpu().numpy(), regions))
            for k, metric in self._means.items():
                metric.update(torch.tensor(row[k], dtype=torch.float64, device=pl_module.device))
            rows.append(row)
        return rows

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> np.ndarray | None:
        """Log the stage's scores; returns the true-class-normalised confusion matrix (2, 2), or None when no
        process saw a labelled image."""
        if self._confusion is None:
            return None
        counts = self._confusion.compute().double()  # summed over processes
        self._confusion.reset()
        if counts.sum() == 0:
            log.info("%s: no labelled images, no confusion matrix", stage)
            return None
        rates = (counts / counts.sum(1, keepdim=True).clamp_min(1)).cpu().numpy()
        for name, r, c in CONFUSION_KEYS:
            pl_module.log(f"{stage}/confusion/{name}", float(rates[r, c]), batch_size=1)
        for k, metric in self._means.items():
            pl_module.log(f"{stage}/{k}", float(metric.compute()), batch_size=1)
            metric.reset()
        self._log_wandb(trainer, stage, rates)
        return rates

    @rank_zero_only
    def _log_wandb(self, trainer: L.Trainer, stage: str, rates: np.ndarray) -> None:
        runs = wandb_experiments(trainer)
        if not runs:
            return
        import matplotlib.pyplot as plt
        import wandb

        fig = confusion_matrix_figure(rates, self.class_names)
        image = wandb.Image(figure_array(fig), caption=f"{stage}: rows true, columns predicted, normalised per "
                            "true class")
        plt.close(fig)
        for run in runs:
            run.log({f"{stage}/confusion_matrix": image, "trainer/global_step": trainer.global_step})

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rates = self._finish(trainer, pl_module, stage)
        if stage == "test" and rates is not None and trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.dirname / "confusion_matrix.png"
            save_figure(confusion_matrix_figure(rates, self.class_names), path)
