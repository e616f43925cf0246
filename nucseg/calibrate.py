"""The calibrate stage of a run: fit → **calibrate** → test (→ predict / export read what it stored).

With the weights that will be tested, and on the validation split only, it chooses

- the post-processing (`postprocess.tune`, `nucseg.instances.tuning`): the deterministic probabilities;
- the review threshold (`uncertainty.review_threshold=auto`, `nucseg.uncertainty.review`) from the MC rows;
- the temperatures (`calibration.temperature`, and `temperature_unlike` on a perturbed copy of each image,
  `nucseg.uncertainty.perturb`) from a fixed sample of pixels of the mean MC probability;
- the OOD density (`ood.density`, `ood.threshold`, `nucseg.uncertainty.ood`): the encoder features of up to
  `max_train_images` training images, the threshold a quantile of the validation images' scores.

One loop over the validation images computes what every choice reads (an image's deterministic pass, MC
samples and encoder features are computed once), then the stage writes the module's hyper-parameters and the
checkpoint once, and its records: `<run>/postprocess_tuning.json`, `<run>/uncertainty/{review_threshold.json,
trust.json, val_images.csv}`. The test callbacks only score with what it stored. `nucseg.train` calls it between
fit and test, `nucseg.evaluate` before its test, `nucseg.tune` for the post-processing alone. A checkpoint that
already holds a temperature or density keeps it; the tuning and an `auto` review threshold are chosen anew.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from nucseg.callbacks.postprocess_tuning import PostprocessTuning
from nucseg.callbacks.uncertainty import UncertaintyEvaluation
from nucseg.instances.tuning import TUNED_KEYS, TuneResult, tune_postprocess
from nucseg.metrics.calibration import fit_temperature
from nucseg.models.module import pad_multiple, pixel_threshold
from nucseg.settings import UncertaintySettings
from nucseg.uncertainty.estimate import ensemble_members, image_rows, module_samples, module_settings
from nucseg.uncertainty.ood import OOD_DEFAULTS, FeatureDensity, check_ood_settings, encoder_features
from nucseg.uncertainty.perturb import perturbed_copy
from nucseg.uncertainty.review import ReviewThreshold, choose_review_threshold, ood_threshold
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.progress import progress_interval
from nucseg.utils.tables import write_csv
from nucseg.utils.validation_pass import has_validation, validation_batches

__all__ = ["PIXELS_PER_IMAGE", "Calibration", "CalibrationSettings", "calibrate", "calibrate_before_test"]

log = logging.getLogger(__name__)

PIXELS_PER_IMAGE = 20_000  # validation pixels per image for the temperature: plenty for one parameter


@dataclass
class CalibrationSettings:
    """What the stage fits and where it writes. `tune` / `review`: None follows the module's own settings
    (`postprocess.tune`, `uncertainty.review_threshold == "auto"`)."""

    run_dir: Path  # postprocess_tuning.json
    uncertainty_dir: Path | None = None  # review_threshold.json, trust.json, val_images.csv (None: run_dir/uncertainty)
    tune: bool | None = None
    tune_max_images: int | None = None
    tune_grid: Mapping[str, Any] | None = None  # candidates (None: the tuning's own grid)
    tune_from_base: bool = False  # start from the values the checkpoint had before an earlier tuning
    uncertainty: bool = True  # review threshold, temperatures and OOD density (models with uncertainty only)
    review: bool | None = None
    temperature: bool = True
    shift_temperature: bool = True
    ood: dict[str, Any] | None = field(default_factory=lambda: dict(OOD_DEFAULTS))
    uncertainty_max_images: int | None = None
    store_tuning: bool = True  # the tuned post-processing into the checkpoint
    store_in_checkpoint: bool = True  # the review threshold, temperatures and density into the checkpoint
    progress_interval: float | None = None  # seconds between plain progress lines (None: none)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.uncertainty_dir = Path(self.uncertainty_dir) if self.uncertainty_dir else self.run_dir / "uncertainty"
        self.ood = check_ood_settings(self.ood)

    @classmethod
    def from_callbacks(cls, callbacks: Sequence[Any], run_dir: str | Path, progress_interval: float | None = None
                       ) -> CalibrationSettings:
        """The settings a run's config gives through its `callbacks.postprocess_tuning` and
        `callbacks.uncertainty` (no tuning without the first, no uncertainty fitting without the second)."""
        tuning = next((c for c in callbacks if isinstance(c, PostprocessTuning)), None)
        unc = next((c for c in callbacks if isinstance(c, UncertaintyEvaluation)), None)
        return cls(
            run_dir=Path(run_dir),
            uncertainty_dir=(unc.output_dir or Path(run_dir)) / "uncertainty" if unc else None,
            tune=None if tuning else False,
            tune_max_images=tuning.max_val_images if tuning else None,
            store_tuning=tuning.store_in_checkpoint if tuning else False,
            uncertainty=unc is not None,
            temperature=unc.calibrate if unc else False,
            shift_temperature=unc.shift_calibration if unc else False,
            ood=unc.ood_cfg if unc else None,
            uncertainty_max_images=unc.max_val_images if unc else None,
            store_in_checkpoint=unc.store_in_checkpoint if unc else False,
            progress_interval=progress_interval,
        )


@dataclass
class Calibration:
    """What the stage chose; `updates` ({hyper-parameter group: values}) went into the module and checkpoint."""

    updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning: TuneResult | None = None
    review: ReviewThreshold | None = None
    val_rows: list[dict[str, Any]] = field(default_factory=list)


def _cap(cap: int | None) -> int:
    return math.inf if cap is None else int(cap)  # type: ignore[return-value]


@torch.no_grad()
def calibrate(module: L.LightningModule, datamodule: Any, settings: CalibrationSettings,
              ckpt_path: str | Path | None = None, limit_val_batches: Any = None, write: bool = True
              ) -> Calibration:
    """Fit what `settings` asks for on `datamodule`'s validation split with `module`'s current weights; merge the
    choices into `module.hparams` and (with `settings.store_in_checkpoint`) into `ckpt_path`, once.

    `write`: this process writes the records and the checkpoint (False on DDP ranks other than 0: every rank
    calibrates on the same images, so all test with the same settings). Raises ValueError when a choice that must
    be made (`postprocess.tune`, `review_threshold=auto`) has no labelled validation image.
    """
    hp = module.hparams
    post = dict(hp.get("postprocess") or {})
    tune = bool(post.get("tune")) if settings.tune is None else settings.tune
    unc = module_settings(module) if settings.uncertainty else None
    review = fit_t = fit_ood = False
    if unc is not None:
        review = unc.review_threshold == "auto" if settings.review is None else settings.review
        fit_t = settings.temperature and "temperature" not in (hp.get("calibration") or {})
        fit_ood = bool(settings.ood) and not (hp.get("ood") or {}).get("density")
        if (fit_t or fit_ood) and not review and not has_validation(datamodule):
            log.warning("calibrate: no validation images here (e.g. nucseg.evaluate on a folder): no temperature or "
                        "OOD density is fitted; the checkpoint's are used where it has them")
            fit_t = fit_ood = False
    result = Calibration()
    n_tune = _cap(settings.tune_max_images) if tune else 0
    n_unc = _cap(settings.uncertainty_max_images) if (review or fit_t or fit_ood) else 0
    if not (n_tune or n_unc):
        if write and unc is not None:
            _write_records(settings, result, unc, dict(hp.get("calibration") or {}), hp.get("ood") or {})
        return result
    if not has_validation(datamodule):
        needs = [name for name, on in (("postprocess.tune=true", tune), ("uncertainty.review_threshold=auto", review))
                 if on]
        raise ValueError(f"{' and '.join(needs)} need(s) the validation split (a datamodule with val_dataloader)")

    device = module.device
    pad = pad_multiple(module)
    members = ensemble_members(module, unc) if unc is not None else None
    threshold = pixel_threshold(module)
    probs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    pixels: dict[str, list[Tensor]] = {"val": [], "shift": []}
    feats: list[Tensor] = []
    gen, perturb_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)

    def sample_pixels(row: dict[str, Any], into: str) -> None:
        mean, _, true = row["_maps"]
        flat_p, flat_t = mean.flatten().cpu(), true.flatten().cpu()
        pick = torch.randperm(flat_p.numel(), generator=gen)[:PIXELS_PER_IMAGE]
        pixels[into].append(torch.stack([flat_p[pick], flat_t[pick].float()]))

    def mc_rows(batch: dict) -> list[dict[str, Any]]:
        assert unc is not None
        samples = module_samples(module, batch["image"], unc, members)
        rows = image_rows(samples, batch, None, threshold, "entropy", unc.score)
        return [r for r in rows if not math.isnan(r["dice_mc"])]

    was_training = module.training
    module.eval()
    try:
        for i, batch in enumerate(validation_batches(datamodule, limit_val_batches, max(n_tune, n_unc),
                                                     "calibrate: val", settings.progress_interval)):
            image = batch["image"].to(device)
            if i < n_tune:  # the deterministic pass the post-processing is tuned on
                p = torch.sigmoid(module.predict_logits(image)).float().cpu().numpy()  # type: ignore[operator]
                for k in range(p.shape[0]):
                    if batch["labelled"][k]:
                        probs.append(p[k])
                        labels.append(batch["labels"][k].cpu().numpy())
            if i < n_unc:
                if fit_ood:
                    feats.append(encoder_features(module.net, image, pad))  # type: ignore[arg-type]
                rows = mc_rows(batch)
                for row in rows:
                    sample_pixels(row, "val")
                    result.val_rows.append({k: v for k, v in row.items() if k != "_maps"})
                if fit_t and settings.shift_temperature and rows:
                    copy, _, _ = perturbed_copy(batch["image"], len(pixels["shift"]), perturb_gen)
                    for row in mc_rows({**batch, "image": copy}):
                        sample_pixels(row, "shift")
    finally:
        module.train(was_training)

    updates = result.updates
    if tune:
        if not probs:
            raise ValueError("postprocess.tune=true: the validation split has no labelled images to tune on")
        base = {k: v for k, v in post.items() if k != "tuned"}
        if settings.tune_from_base:
            base.update((post.get("tuned") or {}).get("base") or {})
        result.tuning = tune_postprocess(probs, labels, base, settings.tune_grid, settings.progress_interval)
        tuned = {k: result.tuning.settings[k] for k in TUNED_KEYS if k in result.tuning.settings}
        updates["postprocess"] = {**tuned, "tuned": result.tuning.summary()}
    if unc is not None and review:
        rows = result.val_rows
        result.review = choose_review_threshold([r["certainty"] for r in rows], [r["dice_mc"] for r in rows],
                                                unc.failure_dice, unc.min_val_failures, unc.review_budget)
        updates["uncertainty"] = {"review_threshold": result.review.value}
    if fit_t and pixels["val"]:
        updates["calibration"] = _fit_temperature(pixels)
    if fit_ood and feats:
        assert settings.ood is not None
        density, ood_at = _fit_density(module, datamodule, torch.cat(feats), settings.ood)
        if density is not None:
            updates["ood"] = {"density": density.to_dict(), "threshold": ood_at}
    for group, values in updates.items():  # the module's own copy: the test and a checkpoint saved later
        hp[group] = {**dict(hp.get(group) or {}), **values}
    if write:
        _write_records(settings, result, unc, dict(hp.get("calibration") or {}), hp.get("ood") or {})
        stored = {group: values for group, values in updates.items()
                  if (settings.store_tuning if group == "postprocess" else settings.store_in_checkpoint)}
        if stored:
            update_checkpoint_hparams(ckpt_path, stored)
    return result


def calibrate_before_test(trainer: L.Trainer, module: L.LightningModule, datamodule: Any, callbacks: Sequence[Any],
                          ckpt_path: str | Path | None) -> Calibration:
    """The stage as the entry points run it before `trainer.test`: settings from the run's callbacks, the module
    on the trainer's device, records in the run folder, and the checkpoint written by the first process only."""
    datamodule.setup("test")
    module.to(trainer.strategy.root_device)
    settings = CalibrationSettings.from_callbacks(callbacks, trainer.default_root_dir, progress_interval(trainer))
    return calibrate(module, datamodule, settings, ckpt_path, trainer.limit_val_batches, write=trainer.is_global_zero)


def _fit_temperature(pixels: dict[str, list[Tensor]]) -> dict[str, Any]:
    """The `calibration` hyper-parameters from the sampled (probability, truth) pixels."""
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


def _fit_density(module: L.LightningModule, datamodule: Any, val_feats: Tensor, ood: Mapping[str, Any]
                 ) -> tuple[FeatureDensity | None, float]:
    if datamodule is None or not hasattr(datamodule, "whole_image_loader") or not (datamodule.splits or {}).get(
            "train"):
        log.warning("ood: no training split to fit the density on (e.g. nucseg.evaluate on a folder): the "
                    "checkpoint's density is kept")
        return None, math.inf
    pad = pad_multiple(module)
    feats = [encoder_features(module.net, b["image"].to(module.device), pad)  # type: ignore[arg-type]
             for b in datamodule.whole_image_loader("train", ood["max_train_images"])]
    density = FeatureDensity.fit(torch.cat(feats), int(ood["components"]), int(ood["neighbours"]))
    at = ood_threshold(density.score(val_feats), float(ood["quantile"]))
    log.info("ood: density of %d training images' encoder features (%d dims); unlike the training data above "
             "%.3f (the %.0f %% quantile of %d validation images)", len(feats), feats[0].shape[1], at,
             100 * float(ood["quantile"]), len(val_feats))
    return density, at


def _write_records(settings: CalibrationSettings, result: Calibration, unc: UncertaintySettings | None,
                   calibration: dict[str, Any], ood: Mapping[str, Any]) -> None:
    if result.tuning is not None:
        atomic_write_text(settings.run_dir / "postprocess_tuning.json",
                          json.dumps({"tuned": result.tuning.summary(), "trials": result.tuning.trials}, indent=2)
                          + "\n")
    if unc is None:
        return
    out = settings.uncertainty_dir
    assert out is not None
    if result.review is not None:
        chosen = result.review
        info = {"review_threshold": chosen.value, "failure_dice": unc.failure_dice, "method": str(unc.method),
                "score": str(unc.score), "rule": chosen.rule, "n_val_images": chosen.n_images,
                "n_val_failures": chosen.n_failures}
        atomic_write_text(out / "review_threshold.json", json.dumps(info, indent=2) + "\n")
    trust = {"calibration": calibration, "ood_threshold": ood.get("threshold") if ood.get("density") else None,
             "ood_quantile": (settings.ood or {}).get("quantile"), "n_val_images": len(result.val_rows)}
    atomic_write_text(out / "trust.json", json.dumps(trust, indent=2) + "\n")
    if result.val_rows:
        write_csv(out / "val_images.csv", [k for k in result.val_rows[0] if not k.startswith("_")], result.val_rows)
