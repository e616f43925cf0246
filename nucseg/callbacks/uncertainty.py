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

`review_threshold: auto` is chosen at test start, on the validation split, with the weights being tested
(`nucseg.uncertainty.review.choose_review_threshold`). It is logged as `val/review_threshold`, written to
`<run>/uncertainty/review_threshold.json` and into the tested checkpoint's `uncertainty` hyper-parameters, so
that prediction from that checkpoint flags the same images.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from nucseg.data.io import atomic_write_bytes, atomic_write_text
from nucseg.metrics.calibration import CalibrationError
from nucseg.uncertainty.estimate import (
    HEATMAPS,
    deterministic_probs,
    ensemble_members,
    image_rows,
    module_samples,
    module_settings,
)
from nucseg.uncertainty.review import ReviewThreshold, choose_review_threshold, uncertainty_metrics
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.distributed import gather_rows, sum_states
from nucseg.utils.files import safe_filename
from nucseg.utils.loops import validation_batches
from nucseg.utils.run import wandb_experiments
from nucseg.utils.tables import write_csv

log = logging.getLogger(__name__)


class UncertaintyEvaluation(L.Callback):
    """Evaluate uncertainty on the test split (a no-op for models without uncertainty)."""

    def __init__(self, output_dir: str | None = None, num_heatmaps: int = 4, heatmap: str = "entropy",
                 max_val_images: int | None = None, store_in_checkpoint: bool = True):
        if heatmap not in HEATMAPS:
            raise ValueError(f"callbacks.uncertainty.heatmap: expected entropy, mutual_info or variance, "
                             f"got {heatmap!r}")
        self.output_dir = Path(output_dir) if output_dir else None
        self.num_heatmaps, self.heatmap = num_heatmaps, heatmap
        self.max_val_images, self.store_in_checkpoint = max_val_images, store_in_checkpoint
        self.settings: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.val_rows: list[dict[str, Any]] = []
        self.review_threshold: float = float("nan")
        self.review_rule = "fixed"
        self._members: list | None = None
        self._cal: dict[str, CalibrationError] = {}
        self._panels: list = []

    def _out(self, trainer: L.Trainer) -> Path:
        return (self.output_dir or Path(trainer.default_root_dir)) / "uncertainty"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        module_settings(pl_module)  # fail fast on a bad uncertainty config, before any training

    def _evaluate(self, pl_module: L.LightningModule, batch: dict, det_probs: Tensor | None) -> list[dict]:
        """The batch's rows; the pixel calibration of labelled images is accumulated on the way."""
        assert self.settings is not None
        samples = module_samples(pl_module, batch["image"], self.settings, self._members)
        rows = image_rows(samples, batch, det_probs, float(getattr(pl_module, "threshold", 0.5)), self.heatmap)
        for i, row in enumerate(rows):
            mean, _, true = row["_maps"]
            if true is not None and self._cal:
                self._cal["mc"].update(mean.cpu(), true.cpu())
                if det_probs is not None:
                    self._cal["det"].update(det_probs[i, 0].float().cpu(), true.cpu())
        return rows

    # ----------------------------------------------------------------- review threshold on validation
    def _choose_threshold(self, trainer: L.Trainer, pl_module: L.LightningModule) -> ReviewThreshold:
        assert self.settings is not None
        self.val_rows = []
        for batch in validation_batches(trainer, self.max_val_images,
                                        "uncertainty.review_threshold=auto (or set it to a number)"):
            for row in self._evaluate(pl_module, batch, None):
                row.pop("_maps")
                if not math.isnan(row["dice_mc"]):
                    self.val_rows.append(row)
        s = self.settings
        return choose_review_threshold([r["certainty"] for r in self.val_rows], [r["dice_mc"] for r in self.val_rows],
                                       s["failure_dice"], s["min_val_failures"], s["review_budget"])

    @rank_zero_only
    def _store_threshold(self, trainer: L.Trainer, chosen: ReviewThreshold) -> None:
        assert self.settings is not None
        out = self._out(trainer)
        info = {"review_threshold": chosen.value, "failure_dice": self.settings["failure_dice"],
                "method": self.settings["method"], "rule": chosen.rule, "n_val_images": chosen.n_images,
                "n_val_failures": chosen.n_failures}
        atomic_write_text(out / "review_threshold.json", json.dumps(info, indent=2) + "\n")
        _write_rows(out / "val_images.csv", self.val_rows)
        if self.store_in_checkpoint:
            update_checkpoint_hparams(getattr(trainer, "ckpt_path", None),
                                      {"uncertainty": {"review_threshold": chosen.value}})

    # ----------------------------------------------------------------- test hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.settings = module_settings(pl_module)
        self.rows, self._panels, self._cal = [], [], {}
        if self.settings is None:
            return
        self._members = ensemble_members(pl_module, self.settings)
        n_bins = int(self.settings.get("ece_bins", 15))
        # summed across DDP processes by hand in on_test_epoch_end (states live on the CPU)
        self._cal = {"mc": CalibrationError(n_bins, sync_on_compute=False),
                     "det": CalibrationError(n_bins, sync_on_compute=False)}
        rt = self.settings["review_threshold"]
        if rt == "auto":
            chosen = self._choose_threshold(trainer, pl_module)
            self.review_threshold, self.review_rule = chosen.value, chosen.rule
            self._store_threshold(trainer, chosen)
            hp = dict(pl_module.hparams.get("uncertainty") or {})
            pl_module.hparams["uncertainty"] = {**hp, "review_threshold": self.review_threshold}
        else:
            self.review_threshold = float(rt)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self.settings is None:
            return
        for i, row in enumerate(self._evaluate(pl_module, batch, deterministic_probs(pl_module, batch, outputs))):
            mean, heat, true = row.pop("_maps")
            row["needs_review"] = bool(row["certainty"] < self.review_threshold)
            self.rows.append(row)
            if i == 0 and isinstance(outputs, dict):  # for later callbacks (report figures); test batches hold 1
                outputs["uncertainty"], outputs["certainty"] = heat.detach().float().cpu(), row["certainty"]
            if len(self._panels) < self.num_heatmaps and trainer.is_global_zero:
                from nucseg.viz.plots import figure_array, figure_png, row_panel, row_title

                pred = mean > float(getattr(pl_module, "threshold", 0.5))
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
        metrics = uncertainty_metrics(self.rows, self.settings["failure_dice"], self.review_threshold,
                                      float(self._cal["mc"].compute()), float(self._cal["det"].compute()))
        for name, value in metrics.items():
            pl_module.log(name, float(value), batch_size=1)
        self._write(trainer, metrics)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        from nucseg.viz.plots import figure_array, figure_png, pad_to_common_size, reliability_diagram

        assert self.settings is not None
        out = self._out(trainer)
        _write_rows(out / "test_images.csv", self.rows)
        fig = reliability_diagram(self._cal["mc"].bins(), metrics["test/ece"],
                                  title=f"pixel reliability, {self.settings['method']} mean")
        atomic_write_bytes(out / "reliability.png", figure_png(fig))
        log.info("uncertainty: spearman %.3f, failure AUROC %.3f, ECE %.4f (deterministic %.4f); wrote %s",
                 metrics["test/certainty_spearman"], metrics["test/failure_auroc"], metrics["test/ece"],
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
