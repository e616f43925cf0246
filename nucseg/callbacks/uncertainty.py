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

In the same validation pass, with the same weights, two more things are fitted and stored in the checkpoint
(`<run>/uncertainty/trust.json` records them; a checkpoint that already holds them keeps them):
- `calibration`: temperature scaling of the foreground probability (`fit_temperature` on a fixed sample of
  pixels of the mean MC probability): `temperature` fitted on the validation images, and with
  `shift_calibration` (default) `temperature_unlike`, fitted on one perturbed copy of each
  (`nucseg.uncertainty.perturb`: noise, blur, contrast, gamma, tint or inversion at a random strength) and
  applied to images unlike the training data (`image_temperature`). One temperature for all images cannot fit
  both: fitted on validation it leaves the confident errors on a new image type as they are, fitted on
  validation and perturbed copies together it softens the familiar images too (`temperature_pooled`, kept for
  the record). `test/ece_calibrated` (the rule applied), `test/ece_calibrated_val` (validation's temperature
  everywhere) and `test/ece_calibrated_pooled` beside `test/ece`;
- `ood`: the k-NN density of the encoder features of up to `ood.max_train_images` training images
  (`nucseg.uncertainty.ood`) and the threshold above which an image is "unlike the training data" (the
  `ood.quantile` of the validation images' scores). Test rows get `ood_score` and `unlike_training`;
  `needs_review` is low certainty OR unlike the training data, `review_reason` says which.
"""

from __future__ import annotations

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

from nucseg.data.io import atomic_write_bytes, atomic_write_text
from nucseg.metrics.calibration import CalibrationError, apply_temperature, fit_temperature, image_temperature
from nucseg.uncertainty.estimate import (
    HEATMAPS,
    deterministic_probs,
    ensemble_members,
    image_rows,
    module_samples,
    module_settings,
)
from nucseg.uncertainty.ood import FeatureDensity, encoder_features
from nucseg.uncertainty.perturb import perturbed_copy
from nucseg.uncertainty.review import (
    ReviewThreshold,
    choose_review_threshold,
    needs_review,
    ood_threshold,
    uncertainty_metrics,
)
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.distributed import gather_rows, sum_states
from nucseg.utils.files import safe_filename
from nucseg.utils.loops import has_validation, validation_batches
from nucseg.utils.run import wandb_experiments
from nucseg.utils.tables import write_csv

log = logging.getLogger(__name__)

OOD_DEFAULTS = {"components": 8, "neighbours": 5, "max_train_images": 128, "quantile": 0.95}
PIXELS_PER_IMAGE = 20_000  # validation pixels per image for the temperature: plenty for one parameter


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
        self.ood_cfg = {**OOD_DEFAULTS, **dict(ood)} if ood else None
        if self.ood_cfg:  # checked here, before training, not at test start
            unknown = set(self.ood_cfg) - set(OOD_DEFAULTS)
            if unknown:
                raise ValueError(f"callbacks.uncertainty.ood: unknown key(s) {sorted(unknown)}; expected "
                                 f"{', '.join(OOD_DEFAULTS)}")
            for key, low in (("components", 1), ("neighbours", 1), ("max_train_images", 3)):
                if key == "max_train_images" and self.ood_cfg[key] is None:  # every training image
                    continue
                if not isinstance(self.ood_cfg[key], int) or self.ood_cfg[key] < low:
                    raise ValueError(f"callbacks.uncertainty.ood.{key}: expected an integer >= {low}, got "
                                     f"{self.ood_cfg[key]!r}")
            if not 0.0 < float(self.ood_cfg["quantile"]) <= 1.0:
                raise ValueError(f"callbacks.uncertainty.ood.quantile: expected a fraction in (0, 1], got "
                                 f"{self.ood_cfg['quantile']!r}")
        self.settings: dict[str, Any] | None = None
        self.rows: list[dict[str, Any]] = []
        self.val_rows: list[dict[str, Any]] = []
        self.review_threshold: float = float("nan")
        self.review_rule = "fixed"
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
        rows = image_rows(samples, batch, det_probs, float(getattr(pl_module, "threshold", 0.5)), self.heatmap,
                          self.settings["score"])
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
                                 int(getattr(pl_module, "pad_multiple", 32)))
        return [float(v) for v in self.density.score(feats)]

    # ----------------------------------------------------------------- choices on validation
    def _validation_pass(self, trainer: L.Trainer, pl_module: L.LightningModule, purpose: str, shifted: bool
                         ) -> tuple[dict[str, list[Tensor]], list[Tensor]]:
        """Rows of the validation images (in `val_rows`); a fixed random sample of (mean probability, truth)
        pixels per image for the temperature ("val", and with `shifted` "shift" from a perturbed copy of each
        image); the encoder features for the OOD threshold."""
        self.val_rows = []
        pixels: dict[str, list[Tensor]] = {"val": [], "shift": []}
        feats = []
        gen, perturb_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

        def sample(row: dict[str, Any], into: str) -> None:
            mean, _, true = row["_maps"]
            flat_p, flat_t = mean.flatten().cpu(), true.flatten().cpu()
            pick = torch.randperm(flat_p.numel(), generator=gen)[:PIXELS_PER_IMAGE]
            pixels[into].append(torch.stack([flat_p[pick], flat_t[pick].float()]))

        for batch in validation_batches(trainer, self.max_val_images, purpose):
            if self.ood_cfg:
                feats.append(encoder_features(pl_module.net, batch["image"].to(pl_module.device),  # type: ignore[arg-type]
                                              int(getattr(pl_module, "pad_multiple", 32))))
            rows = [r for r in self._evaluate(pl_module, batch, None) if not math.isnan(r["dice_mc"])]
            for row in rows:
                sample(row, "val")
                self.val_rows.append({k: v for k, v in row.items() if k != "_maps"})
            if shifted and rows:
                image, _, _ = perturbed_copy(batch["image"], len(pixels["shift"]), perturb_gen)
                for row in self._evaluate(pl_module, {**batch, "image": image}, None):
                    if not math.isnan(row["dice_mc"]):
                        sample(row, "shift")
        return pixels, feats

    def _fit_temperature(self, pixels: dict[str, list[Tensor]]) -> dict[str, Any]:
        """The `calibration` hyper-parameters (see the module doc) from the sampled pixels."""
        val = torch.cat(pixels["val"], dim=1)
        cal: dict[str, Any] = {"temperature": fit_temperature(val[0], val[1]), "n_val_images": len(pixels["val"])}
        if pixels["shift"]:
            shift = torch.cat(pixels["shift"], dim=1)
            both = torch.cat([val, shift], dim=1)
            cal.update(temperature_unlike=fit_temperature(shift[0], shift[1]),
                       temperature_pooled=fit_temperature(both[0], both[1]))
        log.info("calibration: temperature %.3f fitted on %d validation images; %s", cal["temperature"],
                 len(pixels["val"]), f"{cal['temperature_unlike']:.3f} for images unlike the training data "
                 f"(fitted on a perturbed copy of each)" if pixels["shift"] else "no shift calibration")
        return cal

    def _fit_ood(self, trainer: L.Trainer, pl_module: L.LightningModule, val_feats: list[Tensor]) -> None:
        assert self.ood_cfg is not None
        dm: Any = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "whole_image_loader") or not (dm.splits or {}).get("train"):
            log.warning("ood: no training split to fit the density on (e.g. nucseg.evaluate on a folder): the "
                        "checkpoint's density is kept")
            return
        feats = [encoder_features(pl_module.net, b["image"].to(pl_module.device),  # type: ignore[arg-type]
                                  int(getattr(pl_module, "pad_multiple", 32)))
                 for b in dm.whole_image_loader("train", self.ood_cfg["max_train_images"])]
        self.density = FeatureDensity.fit(torch.cat(feats), int(self.ood_cfg["components"]),
                                          int(self.ood_cfg["neighbours"]))
        val_scores = self.density.score(torch.cat(val_feats))
        self.ood_threshold = ood_threshold(val_scores, float(self.ood_cfg["quantile"]))
        log.info("ood: density of %d training images' encoder features (%d dims); unlike the training data above "
                 "%.3f (the %.0f %% quantile of %d validation images)", len(feats), feats[0].shape[1],
                 self.ood_threshold, 100 * float(self.ood_cfg["quantile"]), len(val_scores))

    def _load_stored(self, pl_module: L.LightningModule) -> None:
        """The temperature and OOD density the module already holds (a checkpoint being re-evaluated)."""
        hp = getattr(pl_module, "hparams", {})
        self.calibration = dict(hp.get("calibration") or {})
        ood = hp.get("ood") or {}
        self.density = FeatureDensity.from_dict(ood["density"]) if ood.get("density") else None
        self.ood_threshold = float(ood.get("threshold", math.inf)) if self.density is not None else math.inf

    @rank_zero_only
    def _store(self, trainer: L.Trainer, chosen: ReviewThreshold | None, updates: dict[str, dict[str, Any]]
               ) -> None:
        assert self.settings is not None
        out = self._out(trainer)
        if chosen is not None:
            info = {"review_threshold": chosen.value, "failure_dice": self.settings["failure_dice"],
                    "method": self.settings["method"], "score": self.settings["score"], "rule": chosen.rule,
                    "n_val_images": chosen.n_images, "n_val_failures": chosen.n_failures}
            atomic_write_text(out / "review_threshold.json", json.dumps(info, indent=2) + "\n")
        trust = {"calibration": self.calibration, "ood_threshold": self.ood_threshold if self.density else None,
                 "ood_quantile": (self.ood_cfg or {}).get("quantile"), "n_val_images": len(self.val_rows)}
        atomic_write_text(out / "trust.json", json.dumps(trust, indent=2) + "\n")
        _write_rows(out / "val_images.csv", self.val_rows)
        if self.store_in_checkpoint and updates:
            update_checkpoint_hparams(getattr(trainer, "ckpt_path", None), updates)

    # ----------------------------------------------------------------- test hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.settings = module_settings(pl_module)
        self.rows, self._panels, self._cal, self.val_rows = [], [], {}, []
        if self.settings is None:
            return
        self._members = ensemble_members(pl_module, self.settings)
        self._load_stored(pl_module)
        rt = self.settings["review_threshold"]
        chosen: ReviewThreshold | None = None
        updates: dict[str, dict[str, Any]] = {}
        # fitted once, with the weights being tested (nucseg.train); a checkpoint that holds them keeps them
        fit_t = self.calibrate and "temperature" not in (pl_module.hparams.get("calibration") or {})
        fit_ood = bool(self.ood_cfg) and self.density is None
        if (fit_t or fit_ood) and rt != "auto" and not has_validation(trainer):
            log.warning("callbacks.uncertainty: no validation images here (e.g. nucseg.evaluate on a folder): no "
                        "temperature or OOD density is fitted; the checkpoint's are used where it has them")
            fit_t = fit_ood = False
        if rt == "auto" or fit_t or fit_ood:
            purpose = "uncertainty.review_threshold=auto, callbacks.uncertainty.calibrate and .ood (or set them off)"
            pixels, feats = self._validation_pass(trainer, pl_module, purpose, fit_t and self.shift_calibration)
            if rt == "auto":
                s = self.settings
                chosen = choose_review_threshold([r["certainty"] for r in self.val_rows],
                                                 [r["dice_mc"] for r in self.val_rows], s["failure_dice"],
                                                 s["min_val_failures"], s["review_budget"])
                self.review_threshold, self.review_rule = chosen.value, chosen.rule
                updates["uncertainty"] = {"review_threshold": chosen.value}
            if fit_t and pixels["val"]:
                self.calibration = updates["calibration"] = self._fit_temperature(pixels)
            if fit_ood and feats:
                self._fit_ood(trainer, pl_module, feats)
                if self.density is not None:
                    updates["ood"] = {"density": self.density.to_dict(), "threshold": self.ood_threshold}
        if rt != "auto":
            self.review_threshold = float(rt)
        for group, values in updates.items():  # the module's own copy, for a checkpoint saved after the test
            pl_module.hparams[group] = {**dict(pl_module.hparams.get(group) or {}), **values}
        self._store(trainer, chosen, updates)
        n_bins = int(self.settings.get("ece_bins", 15))
        # summed across DDP processes by hand in on_test_epoch_end (states live on the CPU)
        self._cal = {k: CalibrationError(n_bins, sync_on_compute=False)
                     for k in ("mc", "calibrated", "calibrated_val", "calibrated_pooled", "det")}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
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
        from nucseg.viz.plots import figure_array, figure_png, pad_to_common_size, reliability_diagram

        assert self.settings is not None
        out = self._out(trainer)
        _write_rows(out / "test_images.csv", self.rows)
        fig = reliability_diagram(self._cal["mc"].bins(), metrics["test/ece"],
                                  title=f"pixel reliability, {self.settings['method']} mean")
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
