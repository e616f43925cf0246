"""Which images need an expert: the review threshold on certainty, and the test-split statistics of whether
certainty predicts the model's real quality.

The threshold is chosen on validation images with the weights being tested. With enough failures (Dice below
`failure_dice`) it maximises Youden's J (TPR - FPR) for detecting them: the best balance of failures caught
against good images sent to an expert, without assuming either cost. One or two failures make Youden's J a
coin toss (it flagged 0 % or 40 % of the test split in two CPU-preset runs), so with fewer than
`min_failures` the `budget` share of least certain images is flagged instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nucseg.uncertainty.scores import budget_threshold, failure_auroc, spearman, youden_threshold

__all__ = ["LOW_CERTAINTY", "UNLIKE_TRAINING", "ReviewThreshold", "choose_review_threshold", "needs_review",
           "ood_threshold", "review_reason", "uncertainty_metrics"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReviewThreshold:
    """needs_review = certainty < `value`; `rule` youden_j or budget; the images and failures it was chosen on."""

    value: float
    rule: str
    n_images: int
    n_failures: int


def choose_review_threshold(certainty: Sequence[float], dice: Sequence[float], failure_dice: float,
                            min_failures: int, budget: float) -> ReviewThreshold:
    """The review threshold for images with these certainties and true Dice values (see the module doc)."""
    if len(certainty) == 0:
        raise ValueError("uncertainty.review_threshold=auto: no labelled validation images to choose it on")
    fd = float(failure_dice)
    n_fail = sum(d < fd for d in dice)
    if n_fail >= int(min_failures):
        value, rule = youden_threshold(certainty, dice, fd), "youden_j"
        log.info("review threshold %.4f chosen on %d validation images (Youden's J, %d failures with "
                 "Dice < %.2f)", value, len(certainty), n_fail, fd)
    else:
        value, rule = budget_threshold(certainty, float(budget)), "budget"
        log.info("review threshold %.4f: the %.0f %% least certain of %d validation images "
                 "(uncertainty.review_budget; only %d validation failures with Dice < %.2f, fewer than "
                 "uncertainty.min_val_failures=%d for Youden's J)", value, 100 * float(budget), len(certainty),
                 n_fail, fd, int(min_failures))
    return ReviewThreshold(value, rule, len(certainty), int(n_fail))


def uncertainty_metrics(rows: Sequence[dict[str, Any]], failure_dice: float, review_threshold: float,
                        ece: float, ece_deterministic: float) -> dict[str, float]:
    """The `test/` statistics of per-image rows (`nucseg.uncertainty.estimate.image_rows` with
    `needs_review`): rank correlation of certainty (and of each `score_*`) with the true Dice, failure AUROC,
    the pixel ECEs given, mean Dice of the samples' mean and of the deterministic pass, review and failure
    fractions; unlabelled rows (NaN Dice) count only for the certainty mean and the review fraction."""
    fd = float(failure_dice)
    labelled = [r for r in rows if not math.isnan(r["dice_mc"])]
    cert = np.array([r["certainty"] for r in labelled])
    dice = np.array([r["dice_mc"] for r in labelled])
    metrics = {
        "test/certainty_spearman": spearman(cert, dice),
        "test/failure_auroc": failure_auroc(cert, dice, fd),
        "test/ece": float(ece),
        "test/ece_deterministic": float(ece_deterministic),
        "test/dice_mc": float(dice.mean()) if dice.size else float("nan"),
        "test/dice_deterministic": float(np.mean([r["dice_det"] for r in labelled])) if labelled else float("nan"),
        "test/certainty_mean": float(np.mean([r["certainty"] for r in rows])),
        "test/failure_fraction": float((dice < fd).mean()) if dice.size else float("nan"),
        "test/review_fraction": float(np.mean([r["needs_review"] for r in rows])),
        "val/review_threshold": float(review_threshold),
    }
    for key in [k for k in rows[0] if k.startswith("score_")]:
        metrics[f"test/certainty_spearman_{key[6:]}"] = spearman([r[key] for r in labelled], dice)
    return metrics


LOW_CERTAINTY = "low certainty"
UNLIKE_TRAINING = "unlike the training data"


def review_reason(low_certainty: bool, unlike_training: bool, warning: str | None = None) -> str:
    """Why an image is flagged for review, in words for the biologist ('' when it is not flagged)."""
    parts = [p for p, on in ((LOW_CERTAINTY, low_certainty), (UNLIKE_TRAINING, unlike_training)) if on]
    if warning:
        parts.append(warning)
    return "; ".join(parts)


def needs_review(certainty: float | None, threshold: float | None, unlike_training: bool,
                 warning: str | None = None) -> tuple[bool, str]:
    """The review rule, the one place it is written (the test callback and `Predictor` both call it): an image
    needs review when its certainty is below `threshold`, when it is unlike the training data, or when it
    carries a `warning` (a blank image is predicted with high certainty). No certainty or no threshold (or a
    NaN one) flags nothing by certainty. Returns (needs review, the reason in words, '' when not flagged)."""
    low = certainty is not None and threshold is not None and bool(certainty < threshold)
    return bool(low or unlike_training or warning), review_reason(low, unlike_training, warning)


def ood_threshold(val_scores: Sequence[float] | np.ndarray, quantile: float) -> float:
    """The OOD score above which an image is "unlike the training data": the `quantile` of the validation
    images' scores (held-out acquisitions of the imaging types trained on: new but not unlike)."""
    s = np.asarray(val_scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("ood: no validation images to set the threshold on")
    if not 0.0 < float(quantile) <= 1.0:
        raise ValueError(f"callbacks.uncertainty.ood.quantile: expected a fraction in (0, 1], got {quantile!r}")
    return float(np.quantile(s, float(quantile)))
