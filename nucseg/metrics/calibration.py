"""Pixel-level calibration of foreground probabilities: expected calibration error (ECE) and the bins of a
reliability diagram.

Binary convention (as torchmetrics' `BinaryCalibrationError`): pixels are binned by their predicted
foreground probability into `n_bins` equal-width bins ([i/n, (i+1)/n), the last one closed), and
ECE = sum_b (n_b / N) * |mean probability in b - fraction of foreground pixels in b|.
The metric keeps only per-bin sums, so a test split of millions of pixels costs O(n_bins) memory.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


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

    def __init__(self, n_bins: int = 15, **kwargs):
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
