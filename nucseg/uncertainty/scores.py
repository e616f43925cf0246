"""Uncertainty from probability samples (T,B,K,H,W): per-pixel maps, a per-image certainty, and the tests of
whether that certainty predicts the model's real quality (rank correlation, failure AUROC, review threshold).

Entropies are in bits, so for a binary foreground they lie in [0, 1] and heatmaps share one fixed scale.

Why the image certainty is the mean Dice agreement between each sample's mask and the mean mask (as in the
Bayesian U-Net reference): it is measured on the masks the user receives, in the same unit as the quality
metric, and it is independent of image size and of how much background an image has. Mean pixel entropy is
dominated by the background fraction and by the always-uncertain nucleus boundaries, so a crowded but easy
image looks less certain than a sparse, hard one. `image_scores` computes such alternatives as well; the
test-time callback logs the rank correlation of each with the true Dice, so the choice can be checked on data.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import stats
from torch import Tensor

from nucseg.metrics.pixel import dice_score

log = logging.getLogger(__name__)



def _foreground(samples: Tensor) -> Tensor:
    if samples.ndim != 5:
        raise ValueError(f"samples: expected (T,B,K,H,W) probabilities, got shape {tuple(samples.shape)}")
    return samples[:, :, 0].float()


def binary_entropy(p: Tensor, eps: float = 1e-12) -> Tensor:
    """Entropy in bits of a Bernoulli(p), elementwise; 0 at p in {0, 1}."""
    p = p.clamp(0.0, 1.0)
    q = 1.0 - p
    return -(p * torch.log2(p.clamp_min(eps)) + q * torch.log2(q.clamp_min(eps)))


def pixel_uncertainty(samples: Tensor) -> dict[str, Tensor]:
    """Per-pixel maps (B,H,W) of the foreground channel 0:

    mean: mean probability over the T samples; entropy: predictive entropy H[mean] (total uncertainty);
    mutual_info: H[mean] - mean_t H[p_t], the epistemic part (BALD); variance: population variance over T.
    """
    p = _foreground(samples)
    mean = p.mean(0)
    entropy = binary_entropy(mean)
    expected = binary_entropy(p).mean(0)
    return {
        "mean": mean,
        "entropy": entropy,
        "mutual_info": (entropy - expected).clamp_min(0.0),
        "variance": p.var(0, unbiased=False),
    }


def image_certainty(samples: Tensor, threshold: float = 0.5) -> Tensor:
    """(B,): mean over the T samples of Dice(sample mask, mask of the mean probability), in [0, 1]."""
    p = _foreground(samples)
    masks = p > threshold
    mean_mask = p.mean(0) > threshold
    return dice_score(masks, mean_mask.expand_as(masks)).mean(0)


def image_scores(samples: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
    """Candidate per-image certainties (B,), higher = more certain, to compare against the true Dice.

    dice_agreement: `image_certainty`; entropy: 1 - mean predictive entropy over the image; fg_entropy and
    fg_mutual_info: 1 - their mean over the pixels that any sample calls foreground (1 if none).
    """
    maps = pixel_uncertainty(samples)
    support = (_foreground(samples) > threshold).any(0)  # (B,H,W)
    n = support.sum((-2, -1)).float()

    def fg_mean(m: Tensor) -> Tensor:
        return torch.where(n > 0, (m * support).sum((-2, -1)) / n.clamp_min(1), torch.zeros_like(n))

    return {
        "dice_agreement": image_certainty(samples, threshold),
        "entropy": 1.0 - maps["entropy"].mean((-2, -1)),
        "fg_entropy": 1.0 - fg_mean(maps["entropy"]),
        "fg_mutual_info": 1.0 - fg_mean(maps["mutual_info"]),
    }


# --------------------------------------------------------------------------- does certainty predict quality?
def _array(x: Tensor | ArrayLike) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def spearman(x: Tensor | ArrayLike, y: Tensor | ArrayLike) -> float:
    """Spearman rank correlation (ties averaged); NaN with fewer than 3 points or a constant input."""
    a, b = _array(x), _array(y)
    if a.shape != b.shape:
        raise ValueError(f"spearman: inputs differ in length ({a.size} vs {b.size})")
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(a, b).statistic)


def failure_auroc(certainty: Tensor | ArrayLike, dice: Tensor | ArrayLike, failure_dice: float) -> float:
    """AUROC of low certainty as a detector of failures (Dice < failure_dice): the probability that a failed
    image is less certain than a good one (ties count half). NaN when either class is missing."""
    c, d = _array(certainty), _array(dice)
    if c.shape != d.shape:
        raise ValueError(f"failure_auroc: inputs differ in length ({c.size} vs {d.size})")
    failed = d < failure_dice
    n_pos, n_neg = int(failed.sum()), int((~failed).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(-c)  # high rank = low certainty
    return float((ranks[failed].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def budget_threshold(certainty: Tensor | ArrayLike, fraction: float) -> float:
    """Review threshold that flags the `fraction` least certain images (ceil(fraction * n) of them): the
    midpoint between the last flagged and the first kept certainty. The fallback when validation holds too
    few failures for Youden's J to mean anything."""
    c = np.sort(_array(certainty))
    if c.size == 0:
        raise ValueError("budget_threshold: no images")
    k = min(c.size, math.ceil(fraction * c.size - 1e-9))
    if k == 0:
        return float(c[0])
    if k == c.size:
        return float(math.nextafter(c[-1], math.inf))
    return float((c[k - 1] + c[k]) / 2)


def youden_threshold(certainty: Tensor | ArrayLike, dice: Tensor | ArrayLike, failure_dice: float) -> float:
    """Review threshold t (needs_review = certainty < t) maximising Youden's J = TPR - FPR for detecting
    failures; t is a midpoint between observed certainties, the lowest such t on ties (fewest reviews).

    Without failures in the data, t = the lowest certainty seen (flag only images less certain than all of
    them); when every image failed, t lies just above the highest (flag all).
    """
    c, d = _array(certainty), _array(dice)
    if c.size == 0:
        raise ValueError("youden_threshold: no images")
    failed = d < failure_dice
    if not failed.any():
        log.warning("review threshold: no validation image has Dice < %.3f; flagging only images less "
                    "certain than all of them", failure_dice)
        return float(c.min())
    if failed.all():
        log.warning("review threshold: every validation image has Dice < %.3f; flagging all", failure_dice)
        return float(math.nextafter(c.max(), math.inf))
    u = np.unique(c)
    candidates = np.concatenate([[u[0]], (u[:-1] + u[1:]) / 2, [math.nextafter(u[-1], math.inf)]])
    flagged = c[None, :] < candidates[:, None]
    tpr = (flagged & failed).sum(1) / failed.sum()
    fpr = (flagged & ~failed).sum(1) / (~failed).sum()
    return float(candidates[int(np.argmax(tpr - fpr))])
