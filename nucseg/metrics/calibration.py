"""Pixel-level calibration of foreground probabilities: expected calibration error (ECE) and the bins of a
reliability diagram.

Binary convention (as torchmetrics' `BinaryCalibrationError`): pixels are binned by their predicted
foreground probability into `n_bins` equal-width bins ([i/n, (i+1)/n), the last one closed), and
ECE = sum_b (n_b / N) * |mean probability in b - fraction of foreground pixels in b|.
The metric keeps only per-bin sums, so a test split of millions of pixels costs O(n_bins) memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["CalibrationError", "apply_temperature", "bin_index", "expected_calibration_error", "fit_temperature",
           "image_temperature", "reliability_bins"]


def bin_index(probs: Tensor, n_bins: int) -> Tensor:
    interior = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)[1:-1]
    return torch.bucketize(probs, interior, right=True)


def reliability_bins(probs: Tensor, target: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per-bin `count`, `confidence` (mean probability) and `frequency` (fraction of positives); empty bins
    have count 0 and NaN means."""
    m = CalibrationError(n_bins)
    m.update(probs, target)
    return m.bins()


def expected_calibration_error(probs: Tensor, target: Tensor, n_bins: int = 15) -> Tensor:
    """ECE of probabilities `probs` against binary `target` (any equal shapes)."""
    m = CalibrationError(n_bins)
    m.update(probs, target)
    return m.compute()


class CalibrationError(Metric):
    """Accumulates per-bin counts and sums over images; `compute()` is the ECE, `bins()` the diagram data."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    count: Tensor
    prob_sum: Tensor
    pos_sum: Tensor

    def __init__(self, n_bins: int = 15, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(n_bins) < 1:
            raise ValueError(f"uncertainty.ece_bins: expected a positive integer, got {n_bins}")
        self.n_bins = int(n_bins)
        for name in ("count", "prob_sum", "pos_sum"):
            self.add_state(name, default=torch.zeros(self.n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        if probs.shape != target.shape:
            raise ValueError(f"calibration: probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
        p = probs.detach().flatten().double()
        if p.numel() and (p.min() < 0 or p.max() > 1):
            raise ValueError("calibration: probs must be probabilities in [0, 1]")
        t = (target.detach().flatten() > 0.5).double()
        idx = bin_index(p, self.n_bins)
        self.count.scatter_add_(0, idx, torch.ones_like(p))
        self.prob_sum.scatter_add_(0, idx, p)
        self.pos_sum.scatter_add_(0, idx, t)

    def bins(self) -> dict[str, Tensor]:
        count = self.count
        safe = count.clamp_min(1)
        nan = torch.full_like(count, float("nan"))
        return {
            "count": count.clone(),
            "confidence": torch.where(count > 0, self.prob_sum / safe, nan),
            "frequency": torch.where(count > 0, self.pos_sum / safe, nan),
            "edges": torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64),
        }

    def compute(self) -> Tensor:
        total = self.count.sum()
        if total == 0:
            return torch.tensor(float("nan"))
        gap = (self.prob_sum - self.pos_sum).abs()  # = n_b * |confidence_b - frequency_b|
        return (gap.sum() / total).float()


# --------------------------------------------------------------------------- temperature scaling
def apply_temperature(probs: Tensor, temperature: float, eps: float = 1e-6) -> Tensor:
    """sigmoid(logit(p) / T): T > 1 softens over-confident probabilities, T < 1 sharpens; 0.5 stays 0.5, so
    every mask thresholded at 0.5 is unchanged. T = 1 returns `probs` itself."""
    if float(temperature) == 1.0:
        return probs
    p = probs.float().clamp(eps, 1 - eps)
    return torch.sigmoid(torch.logit(p) / float(temperature))


def fit_temperature(probs: Tensor, target: Tensor, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T minimising the binary cross-entropy of `apply_temperature(probs, T)` against `target`
    (any equal shapes; e.g. validation pixels of the mean MC probability), searched on log T within
    `bounds`. Guo et al. 2017, for one foreground probability."""
    from scipy.optimize import minimize_scalar

    if probs.shape != target.shape:
        raise ValueError(f"temperature: probs {tuple(probs.shape)} and target {tuple(target.shape)} differ")
    if probs.numel() == 0:
        raise ValueError("temperature: no pixels to fit on")
    eps = 1e-6
    logit = torch.logit(probs.detach().flatten().double().clamp(eps, 1 - eps))
    t = (target.detach().flatten() > 0.5).double()

    def nll(log_t: float) -> float:
        z = logit / float(np.exp(log_t))
        # BCE with logits, stable: max(z, 0) - z * t + log(1 + exp(-|z|))
        return float((z.clamp_min(0) - z * t + torch.log1p(torch.exp(-z.abs()))).mean())

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def image_temperature(calibration: dict | None, unlike_training: bool | None) -> float:
    """The temperature for one image from a checkpoint's `calibration` settings: `temperature_unlike` (fitted on
    perturbed validation copies) for an image unlike the training data, else `temperature` (fitted on the
    validation images); 1 without calibration. A checkpoint without `temperature_unlike` uses `temperature`."""
    cal = calibration or {}
    t = float(cal.get("temperature", 1.0))
    return float(cal.get("temperature_unlike", t)) if unlike_training else t
