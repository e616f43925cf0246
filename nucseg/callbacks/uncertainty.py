"""Test-time uncertainty evaluation: does the model's certainty predict when it is wrong?

For each test image it draws `uncertainty.samples` probability maps (`nucseg.uncertainty.sampling`), scores
the image's certainty and marks it `needs_review` below `uncertainty.review_threshold`, and at the end logs

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

`review_threshold: auto` is chosen at test start, on the validation split, with the weights being tested: the
threshold on certainty that maximises Youden's J (TPR - FPR) for detecting Dice < failure_dice, i.e. the best
balance of failures caught against good images sent to an expert, without assuming either cost. It is logged
as `val/review_threshold`, written to `<run>/uncertainty/review_threshold.json` and into the tested
checkpoint's `uncertainty` hyper-parameters, so that prediction from that checkpoint flags the same images.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from nucseg.callbacks.wandb_images import to_uint8_hwc, wandb_experiments
from nucseg.data.io import atomic_write_bytes, atomic_write_text
from nucseg.metrics.calibration import CalibrationError
from nucseg.metrics.pixel import dice_score
from nucseg.models.module import pad_to_multiple
from nucseg.uncertainty.sampling import eval_mode, load_ensemble, resolve_settings, sample_probs
from nucseg.uncertainty.scores import (
    budget_threshold,
    failure_auroc,
    image_scores,
    pixel_uncertainty,
    spearman,
    youden_threshold,
)
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.distributed import gather_rows, sum_states
from nucseg.utils.loops import validation_batches

log = logging.getLogger(__name__)


def module_settings(pl_module: L.LightningModule) -> dict[str, Any] | None:
    """Effective uncertainty settings of a SegmentationModule (None: nothing to estimate)."""
    cfg = getattr(pl_module, "hparams", {}).get("uncertainty")
    return resolve_settings(dict(cfg) if cfg else None, pl_module.net)


def module_samples(pl_module: L.LightningModule, image: Tensor, settings: dict[str, Any],
                   models: list | None = None, samples: int | None = None) -> Tensor:
    """(T,B,K,H,W) samples for whole images of any size: padded to the module's multiple, cropped back."""
    padded, (h, w) = pad_to_multiple(image.to(pl_module.device), getattr(pl_module, "pad_multiple", 32))
    out = sample_probs(pl_module.net, padded, method=settings["method"],
                       samples=int(samples or settings["samples"]), seed=settings.get("seed"),
                       models=models, batch_size=settings.get("batch_size"), tta_ops=settings.get("tta_ops", "all"))
    return out[..., :h, :w]


def ensemble_members(pl_module: L.LightningModule, settings: dict[str, Any]) -> list | None:
    if settings["method"] != "ensemble":
        return None
    members = ([pl_module.net] if settings.get("include_self", True) else [])
    members += load_ensemble(settings.get("checkpoints") or [], pl_module.device)
    if len(members) < 2:
        raise ValueError("uncertainty.method=ensemble needs at least 2 members: list trained checkpoints in "
                         "uncertainty.checkpoints (paths or globs), e.g. the jobs of a multirun")
    return members


def deterministic_probs(pl_module: L.LightningModule, batch: dict, outputs: Any = None) -> Tensor:
    """The deterministic pass (MC dropout off): the module's own test pass when given (its `predict_logits`
    switches MC dropout off outside training), else run here."""
    if isinstance(outputs, dict) and "probs" in outputs:
        return outputs["probs"]
    with eval_mode(pl_module.net, mc_dropout=False):
        return torch.sigmoid(pl_module.predict_logits(batch["image"].to(pl_module.device)))


class UncertaintyEvaluation(L.Callback):
    """Evaluate uncertainty on the test split (a no-op for models without uncertainty)."""

    def __init__(self, output_dir: str | None = None, num_heatmaps: int = 4, heatmap: str = "entropy",
                 max_val_images: int | None = None, store_in_checkpoint: bool = True):
        if heatmap not in ("entropy", "mutual_info", "variance"):
            raise ValueError(f"callbacks.uncertainty.heatmap: expected entropy, mutual_info or variance, got {heatmap!r}")
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

    # ----------------------------------------------------------------- per image
    def _evaluate(self, pl_module: L.LightningModule, batch: dict, det_probs: Tensor | None) -> list[dict]:
        assert self.settings is not None
        thr = float(getattr(pl_module, "threshold", 0.5))
        samples = module_samples(pl_module, batch["image"], self.settings, self._members)
        maps = pixel_uncertainty(samples)
        scores = image_scores(samples, thr)
        rows = []
        for i in range(samples.shape[1]):
            labelled = bool(batch["labelled"][i]) if "labelled" in batch else True
            true = batch["target"][i, 0].to(samples.device) > 0.5 if labelled else None
            mean = maps["mean"][i]
            row: dict[str, Any] = {"id": str(batch["id"][i]), "certainty": float(scores["dice_agreement"][i])}
            row.update({f"score_{k}": float(v[i]) for k, v in scores.items() if k != "dice_agreement"})
            row.update({f"mean_{k}": float(maps[k][i].mean()) for k in ("entropy", "mutual_info", "variance")})
            row["dice_mc"] = float(dice_score(mean > thr, true)) if true is not None else float("nan")
            row["dice_det"] = (float(dice_score(det_probs[i, 0].to(true.device) > thr, true))
                               if true is not None and det_probs is not None else float("nan"))
            if true is not None and self._cal:
                self._cal["mc"].update(mean.cpu(), true.cpu())
                if det_probs is not None:
                    self._cal["det"].update(det_probs[i, 0].float().cpu(), true.cpu())
            row["_maps"] = (mean, maps[self.heatmap][i], true)
            rows.append(row)
        return rows

    # ----------------------------------------------------------------- review threshold on validation
    def _choose_threshold(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float:
        assert self.settings is not None
        self.val_rows = []
        for batch in validation_batches(trainer, self.max_val_images,
                                        "uncertainty.review_threshold=auto (or set it to a number)"):
            for row in self._evaluate(pl_module, batch, None):
                row.pop("_maps")
                if not math.isnan(row["dice_mc"]):
                    self.val_rows.append(row)
        if not self.val_rows:
            raise ValueError("uncertainty.review_threshold=auto: no labelled validation images to choose it on")
        cert = [r["certainty"] for r in self.val_rows]
        dice = [r["dice_mc"] for r in self.val_rows]
        fd = float(self.settings["failure_dice"])
        n_fail = sum(d < fd for d in dice)
        if n_fail >= int(self.settings["min_val_failures"]):
            value, self.review_rule = youden_threshold(cert, dice, fd), "youden_j"
            log.info("review threshold %.4f chosen on %d validation images (Youden's J, %d failures with "
                     "Dice < %.2f)", value, len(cert), n_fail, fd)
        else:
            # one or two failures make Youden's J a coin toss (it flagged 0 % or 40 % of the test split in two
            # CPU-preset runs): flag a fixed share of the least certain images instead
            budget = float(self.settings["review_budget"])
            value, self.review_rule = budget_threshold(cert, budget), "budget"
            log.info("review threshold %.4f: the %.0f %% least certain of %d validation images "
                     "(uncertainty.review_budget; only %d validation failures with Dice < %.2f, fewer than "
                     "uncertainty.min_val_failures=%d for Youden's J)", value, 100 * budget, len(cert), n_fail,
                     fd, int(self.settings["min_val_failures"]))
        return value

    @rank_zero_only
    def _store_threshold(self, trainer: L.Trainer, value: float) -> None:
        assert self.settings is not None
        out = self._out(trainer)
        info = {"review_threshold": value, "failure_dice": self.settings["failure_dice"],
                "method": self.settings["method"], "rule": self.review_rule, "n_val_images": len(self.val_rows),
                "n_val_failures": sum(r["dice_mc"] < self.settings["failure_dice"] for r in self.val_rows)}
        atomic_write_text(out / "review_threshold.json", json.dumps(info, indent=2) + "\n")
        _write_csv(out / "val_images.csv", self.val_rows)
        if self.store_in_checkpoint:
            update_checkpoint_hparams(getattr(trainer, "ckpt_path", None), {"uncertainty": {"review_threshold": value}})

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
            self.review_threshold = self._choose_threshold(trainer, pl_module)
            self._store_threshold(trainer, self.review_threshold)
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
                thr = float(getattr(pl_module, "threshold", 0.5))
                self._panels.append(self._panel(trainer, batch["image"][i], mean > thr, heat, true, row))

    def _panel(self, trainer, image: Tensor, pred: Tensor, heat: Tensor, true: Tensor | None, row: dict):
        from nucseg.viz.plots import figure_array, figure_png, uncertainty_panel

        title = (f"{row['id'][:24]}  certainty {row['certainty']:.3f}"
                 + ("" if math.isnan(row["dice_mc"]) else f"  Dice {row['dice_mc']:.3f}")
                 + ("  NEEDS REVIEW" if row.get("needs_review") else ""))
        fig = uncertainty_panel(to_uint8_hwc(image), None if true is None else true.cpu().numpy(),
                                pred.cpu().numpy(), heat.float().cpu().numpy(), self.heatmap, title=title)
        atomic_write_bytes(self._out(trainer) / "heatmaps" / f"{_safe(row['id'])}.png", figure_png(fig))
        return figure_array(fig), title

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.settings is None:  # decided by the config: the same on every DDP process
            return
        self.rows = gather_rows(trainer, self.rows)  # every process: the whole split's rows and bins
        for cal in self._cal.values():
            sum_states(trainer, cal, ("count", "prob_sum", "pos_sum"))
        if not self.rows:
            return
        fd = float(self.settings["failure_dice"])
        labelled = [r for r in self.rows if not math.isnan(r["dice_mc"])]
        cert = np.array([r["certainty"] for r in labelled])
        dice = np.array([r["dice_mc"] for r in labelled])
        metrics = {
            "test/certainty_spearman": spearman(cert, dice),
            "test/failure_auroc": failure_auroc(cert, dice, fd),
            "test/ece": float(self._cal["mc"].compute()),
            "test/ece_deterministic": float(self._cal["det"].compute()),
            "test/dice_mc": float(dice.mean()) if dice.size else float("nan"),
            "test/dice_deterministic": float(np.mean([r["dice_det"] for r in labelled])) if labelled else float("nan"),
            "test/certainty_mean": float(np.mean([r["certainty"] for r in self.rows])),
            "test/failure_fraction": float((dice < fd).mean()) if dice.size else float("nan"),
            "test/review_fraction": float(np.mean([r["needs_review"] for r in self.rows])),
            "val/review_threshold": self.review_threshold,
        }
        for key in [k for k in self.rows[0] if k.startswith("score_")]:
            metrics[f"test/certainty_spearman_{key[6:]}"] = spearman([r[key] for r in labelled], dice)
        for name, value in metrics.items():
            pl_module.log(name, float(value), batch_size=1)
        self._write(trainer, metrics)

    @rank_zero_only
    def _write(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        from nucseg.viz.plots import figure_array, figure_png, pad_to_common_size, reliability_diagram

        out = self._out(trainer)
        _write_csv(out / "test_images.csv", self.rows)
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

        cols = [k for k in self.rows[0] if not k.startswith("_")]
        table = wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in self.rows])
        payload = {
            "test/reliability_diagram": wandb.Image(figure_array(fig), caption=f"ECE {metrics['test/ece']:.4f}"),
            "test/uncertainty_heatmaps": [
                wandb.Image(arr, caption=cap)
                for arr, (_, cap) in zip(pad_to_common_size([a for a, _ in self._panels]), self._panels, strict=True)
            ],
            "test/uncertainty_images": table,
        }
        for run in runs:
            run.log(payload)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "image"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = [k for k in rows[0] if not k.startswith("_")]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
