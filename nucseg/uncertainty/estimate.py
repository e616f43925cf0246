"""Uncertainty of a trained `SegmentationModule`, batch by batch: its effective settings, its probability
samples for whole images of any size, and the per-image rows (certainty, alternative scores, mean maps, Dice
of the mean and of the deterministic prediction) that the test-time evaluation is made of."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from nucseg.metrics.pixel import dice_score
from nucseg.models.module import pad_multiple
from nucseg.settings import CertaintyScore, UncertaintyMethod, UncertaintySettings
from nucseg.uncertainty.sampling import eval_mode, load_ensemble, resolve_settings, sample_probs
from nucseg.uncertainty.scores import image_scores, pixel_uncertainty

__all__ = ["deterministic_probs", "ensemble_members", "image_rows", "module_samples", "module_settings"]

HEATMAPS = ("entropy", "mutual_info", "variance")


def _net(pl_module: L.LightningModule) -> nn.Module:
    net = pl_module.net
    assert isinstance(net, nn.Module)
    return net


def module_settings(pl_module: L.LightningModule) -> UncertaintySettings | None:
    """Effective uncertainty settings of a SegmentationModule, from its hparams (None: nothing to estimate)."""
    cfg = getattr(pl_module, "hparams", {}).get("uncertainty")
    return resolve_settings(dict(cfg) if cfg else None, _net(pl_module))


def module_samples(pl_module: L.LightningModule, image: Tensor, settings: UncertaintySettings,
                   models: list | None = None, samples: int | None = None) -> Tensor:
    """(T,B,K,H,W) samples for whole images (B,C,H,W) of any size, padded to the module's `pad_multiple` and
    cropped back. `samples` overrides `settings.samples` (mc_dropout)."""
    return sample_probs(_net(pl_module), image.to(pl_module.device), method=settings.method,
                        samples=int(samples or settings.samples), seed=settings.seed, models=models,
                        batch_size=settings.batch_size, tta_ops=settings.tta_ops,
                        pad_multiple=pad_multiple(pl_module))


def ensemble_members(pl_module: L.LightningModule, settings: UncertaintySettings) -> list | None:
    """The member networks for `method=ensemble` (the module's own first when `include_self`), else None."""
    if settings.method is not UncertaintyMethod.ENSEMBLE:
        return None
    members = ([_net(pl_module)] if settings.include_self else [])
    members += load_ensemble(settings.checkpoints, pl_module.device)
    if len(members) < 2:
        raise ValueError("uncertainty.method=ensemble needs at least 2 members: list trained checkpoints in "
                         "uncertainty.checkpoints (paths or globs), e.g. the jobs of a multirun")
    return members


def deterministic_probs(pl_module: L.LightningModule, batch: dict, outputs: Any = None) -> Tensor:
    """The deterministic pass (MC dropout off): the module's own test pass when given (its `predict_logits`
    switches MC dropout off outside training), else run here."""
    if isinstance(outputs, dict) and "probs" in outputs:
        return outputs["probs"]
    with eval_mode(_net(pl_module), mc_dropout=False):
        return torch.sigmoid(pl_module.predict_logits(batch["image"].to(pl_module.device)))  # type: ignore[operator]


def image_rows(samples: Tensor, batch: dict, det_probs: Tensor | None, threshold: float,
               heatmap: str = "entropy", score: str = CertaintyScore.DICE_AGREEMENT) -> list[dict[str, Any]]:
    """One row per image of `batch` from its (T,B,K,H,W) `samples`: id, certainty (the `score` of
    `image_scores`), every candidate score (`score_*`), mean uncertainty maps (`mean_*`), the Dice of the mean
    prediction (`dice_mc`) and of the deterministic one (`dice_det`; NaN when unlabelled or not given). `_maps` holds
    (mean probability, `heatmap` map, binary truth or None) for calibration and figures."""
    maps = pixel_uncertainty(samples)
    scores = image_scores(samples, threshold)
    rows = []
    for i in range(samples.shape[1]):
        labelled = bool(batch["labelled"][i]) if "labelled" in batch else True
        true = batch["target"][i, 0].to(samples.device) > 0.5 if labelled else None
        mean = maps["mean"][i]
        row: dict[str, Any] = {"id": str(batch["id"][i]), "certainty": float(scores[score][i])}
        row.update({f"score_{k}": float(v[i]) for k, v in scores.items()})
        row.update({f"mean_{k}": float(maps[k][i].mean()) for k in HEATMAPS})
        row["dice_mc"] = float(dice_score(mean > threshold, true)) if true is not None else math.nan
        row["dice_det"] = (float(dice_score(det_probs[i, 0].to(true.device) > threshold, true))
                           if true is not None and det_probs is not None else math.nan)
        row["_maps"] = (mean, maps[heatmap][i], true)
        rows.append(row)
    return rows
