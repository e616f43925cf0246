"""Test-time uncertainty evaluation: does the model's certainty predict when it is wrong?

For each test image it draws `uncertainty.samples` probability maps (`nucseg.uncertainty.estimate`), scores
the image's certainty and marks it `needs_review` below `uncertainty.review_threshold`, and at the end logs
(`nucseg.uncertainty.review.uncertainty_metrics`)

- `test/certainty_spearman`: Spearman correlation of certainty with the true Dice of the mean prediction
  (and `test/certainty_spearman_<score>` for the alternative scores of `image_scores`);
- `test/failure_auroc`: AUROC of low certainty for detecting images with Dice < `uncertainty.failure_dice`;
- `test/ece` / `test/ece_deterministic`: pixel ECE of the mean probability / of the deterministic pass, with
  a reliability diagram (`<run>/uncertainty/reliability.png` and W&B);
- `test/dice_mc` (mean of the samples) beside `test/dice_deterministic` (MC dropout off) and the module's
  `test/dice` (for a model with MC dropout, that pass is itself one stochastic sample), and review / failure
  fractions.
It also writes one row per test image to `<run>/uncertainty/test_images.csv` and heatmap panels of the first
images to `<run>/uncertainty/heatmaps/`.

The review threshold, the temperatures (`calibration`) and the OOD density (`ood`) it scores with were chosen on
the validation split by the calibrate stage (`nucseg.calibrate`), which `nucseg.train` runs between fit and test
and `nucseg.evaluate` before its test; this callback's `max_val_images`, `store_in_checkpoint`, `calibrate`,
`shift_calibration` and `ood` are that stage's settings (`CalibrationSettings.from_callbacks`). The callback
itself fits nothing:
- `test/ece_calibrated` applies the stored rule (`temperature_unlike` to images unlike the training data,
  `temperature` to the others), `test/ece_calibrated_val` validation's temperature everywhere and
  `test/ece_calibrated_pooled` the pooled one, beside `test/ece`;
- test rows get `ood_score` and `unlike_training`; `needs_review` is low certainty OR unlike the training data,
  `review_reason` says which.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch import Tensor

from nucseg.metrics.calibration import CalibrationError, apply_temperature, image_temperature
from nucseg.models.module import pad_multiple, pixel_threshold
from nucseg.settings import UncertaintySettings
from nucseg.uncertainty.estimate import (
    HEATMAPS,
    deterministic_probs,
    ensemble_members,
    image_rows,
    module_samples,
    module_settings,
)
from nucseg.uncertainty.ood import FeatureDensity, check_ood_settings, encoder_features
from nucseg.uncertainty.review import (
    needs_review,
    uncertainty_metrics,
)
from nucseg.utils.atomic import atomic_write_bytes
from nucseg.utils.distributed import gather_rows, sum_states
from nucseg.utils.files import safe_filename
from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.utils.tables import write_csv
from nucseg.viz.plots import figure_array, figure_png, pad_to_common_size, reliability_diagram, row_panel, row_title

log = logging.getLogger(__name__)



class UncertaintyEvaluation(L.Callback):
    """Evaluate uncertainty on the test split (a no-op for models without uncertainty)."""

    def __init__(self, output_dir: str | None = None, num_heatmaps: int = 4, heatmap: str = "entropy",
                 max_val_images: int | None = None, store_in_checkpoint: bool = True, calibrate: bool = True,
                 shift_calibration: bool = True, ood: dict[str, Any] | None = None):
        if heatmap not in HEATMAPS:
            raise ValueError(f"callbacks.uncertainty.heatmap: expected entropy, mutual_info or variance, "
                             f"got {heatmap!r}")
        self.output_dir = Path(output_dir) if output_dir else None
        self.num_heatmaps, self.heatmap = num_heatmaps, heatmap
        self.max_val_images, self.store_in_checkpoint = max_val_images, store_in_checkpoint
        self.calibrate, self.shift_calibration = bool(calibrate), bool(shift_calibration)
        self.ood_cfg = check_ood_settings(ood)  # checked here, before training, not at test start
        self.settings: UncertaintySettings | None = None
        self.rows: list[dict[str, Any]] = []
        self.review_threshold: float = float("nan")
        self.calibration: dict[str, Any] = {}
        self.density: FeatureDensity | None = None
        self.ood_threshold = math.inf
        self._members: list | None = None
        self._cal: dict[str, CalibrationError] = {}
        self._panels: list = []

    def _out(self, trainer: L.Trainer) -> Path:
        return (self.output_dir or Path(trainer.default_root_dir)) / "uncertainty"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module_settings(pl_module)  # fail fast on a bad uncertainty config, before any training

    def _evaluate(self, pl_module: L.LightningModule, batch: dict, det_probs: Tensor | None,
                  unlike: list[bool] | None = None) -> list[dict]:
        """The batch's rows; the pixel calibration of labelled images is accumulated on the way (`unlike`: per
        image, whether it is unlike the training data, which picks its temperature)."""
        assert self.settings is not None
        samples = module_samples(pl_module, batch["image"], self.settings, self._members)
        rows = image_rows(samples, batch, det_probs, pixel_threshold(pl_module), self.heatmap,
                          self.settings.score)
        for i, row in enumerate(rows):
            mean, _, true = row["_maps"]
            if true is not None and self._cal:
                self._cal["mc"].update(mean.cpu(), true.cpu())
                t = {"calibrated": image_temperature(self.calibration, bool(unlike and unlike[i])),
                     "calibrated_val": image_temperature(self.calibration, False),
                     "calibrated_pooled": float(self.calibration.get("temperature_pooled",
                                                                     image_temperature(self.calibration, False)))}
                for key, temperature in t.items():
                    self._cal[key].update(apply_temperature(mean.cpu(), temperature), true.cpu())
                if det_probs is not None:
                    self._cal["det"].update(det_probs[i, 0].float().cpu(), true.cpu())
        return rows

    def _ood_scores(self, pl_module: L.LightningModule, batch: dict) -> list[float]:
        if self.density is None:
            return [math.nan] * len(batch["id"])
        feats = encoder_features(pl_module.net, batch["image"].to(pl_module.device),  # type: ignore[arg-type]
                                 pad_multiple(pl_module))
        return [float(v) for v in self.density.score(feats)]

    def _load_stored(self, pl_module: L.LightningModule) -> None:
        """The temperature and OOD density the module already holds (a checkpoint being re-evaluated)."""
        hp = getattr(pl_module, "hparams", {})
        self.calibration = dict(hp.get("calibration") or {})
        ood = hp.get("ood") or {}
        self.density = FeatureDensity.from_dict(ood["density"]) if ood.get("density") else None
        self.ood_threshold = float(ood.get("threshold", math.inf)) if self.density is not None else math.inf

    # ----------------------------------------------------------------- test hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.settings = module_settings(pl_module)
        self.rows, self._panels, self._cal = [], [], {}
        if self.settings is None:
            return
        self._members = ensemble_members(pl_module, self.settings)
        self._load_stored(pl_module)
        rt = self.settings.review_threshold
        if rt == "auto":  # chosen by the calibrate stage, which nucseg.train and nucseg.evaluate run before the test
            raise ValueError("uncertainty.review_threshold=auto was not chosen before the test: run "
                             "nucseg.calibrate.calibrate first (nucseg.train and nucseg.evaluate do)")
        self.review_threshold = float(rt)
        n_bins = self.settings.ece_bins
        # summed across DDP processes by hand in on_test_epoch_end (states live on the CPU)
        self._cal = {k: CalibrationError(n_bins, sync_on_compute=False)
                     for k in ("mc", "calibrated", "calibrated_val", "calibrated_pooled", "det")}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                          batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.settings is None:
            return
        ood = self._ood_scores(pl_module, batch)
        unlike_all = [bool(v > self.ood_threshold) for v in ood]
        det = deterministic_probs(pl_module, batch, outputs)
        for i, row in enumerate(self._evaluate(pl_module, batch, det, unlike_all)):
            mean, heat, true = row.pop("_maps")
            flagged, reason = needs_review(row["certainty"], self.review_threshold, unlike_all[i])
            row.update(ood_score=ood[i], unlike_training=unlike_all[i], needs_review=flagged, review_reason=reason)
            self.rows.append(row)
            if i == 0 and isinstance(outputs, dict):  # for later callbacks (report figures); test batches hold 1
                outputs["uncertainty"], outputs["certainty"] = heat.detach().float().cpu(), row["certainty"]
            if len(self._panels) < self.num_heatmaps and trainer.is_global_zero:
                pred = mean > pixel_threshold(pl_module)
                fig = row_panel(batch["image"][i], pred, heat, true, self.heatmap, row)
                atomic_write_bytes(self._out(trainer) / "heatmaps" / f"{safe_filename(row['id'])}.png",
                                   figure_png(fig))
                self._panels.append((figure_array(fig), row_title(row)))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.settings is None:  # decided by the config: the same on every DDP process
            return
        self.rows = gather_rows(trainer, self.rows)  # every process: the whole split's rows and bins
        for cal in self._cal.values():
            sum_states(trainer, cal, ("count", "prob_sum", "pos_sum"))
        if not self.rows:
            return
        metrics = uncertainty_metrics(self.rows, self.settings.failure_dice, self.review_threshold,
                                      float(self._cal["mc"].compute()), float(self._cal["det"].compute()))
        metrics["test/ece_calibrated"] = float(self._cal["calibrated"].compute())
        for key in ("calibrated_val", "calibrated_pooled"):
            metrics[f"test/ece_{key}"] = float(self._cal[key].compute())
        for key in ("temperature", "temperature_unlike", "temperature_pooled"):
            if key in self.calibration:
                metrics[f"val/{key}"] = float(self.calibration[key])
        if self.density is not None:
            metrics["test/unlike_training_fraction"] = float(np.mean([r["unlike_training"] for r in self.rows]))
        for name, value in metrics.items():
            pl_module.log(name, float(value), batch_size=1)
        self._write(trainer, metrics)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        assert self.settings is not None
        out = self._out(trainer)
        _write_rows(out / "test_images.csv", self.rows)
        fig = reliability_diagram(self._cal["mc"].bins(), metrics["test/ece"],
                                  title=f"pixel reliability, {self.settings.method} mean")
        atomic_write_bytes(out / "reliability.png", figure_png(fig))
        log.info("uncertainty: spearman %.3f, failure AUROC %.3f, ECE %.4f (calibrated %.4f, T=%.3f / %.3f unlike "
                 "the training data; deterministic %.4f); wrote %s", metrics["test/certainty_spearman"],
                 metrics["test/failure_auroc"], metrics["test/ece"], metrics["test/ece_calibrated"],
                 image_temperature(self.calibration, False), image_temperature(self.calibration, True),
                 metrics["test/ece_deterministic"], out)
        runs = wandb_experiments(trainer)
        if not runs:
            return
        import wandb

        cols: list[Any] = [k for k in self.rows[0] if not k.startswith("_")]
        arrays = pad_to_common_size([a for a, _ in self._panels])
        payload = {
            "test/reliability_diagram": wandb.Image(figure_array(fig), caption=f"ECE {metrics['test/ece']:.4f}"),
            "test/uncertainty_heatmaps": [wandb.Image(a, caption=c) for a, (_, c) in zip(arrays, self._panels,
                                                                                        strict=True)],
            "test/uncertainty_images": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in self.rows]),
        }
        for run in runs:
            run.log(payload)


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """The rows as CSV, columns in the order of the first row (none written for no rows)."""
    if rows:
        write_csv(path, [k for k in rows[0] if not k.startswith("_")], rows)
