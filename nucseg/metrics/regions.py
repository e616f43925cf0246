"""Scores of a segmentation into regions that tile the tissue (ISBI 2012 EM cells), and of a binary pixel map.

- `pixel_error`: the fraction of pixels whose binary label is wrong (the ISBI challenge's pixel error in its
  simple, thresholded form).
- `region_scores`: the challenge's foreground-restricted Rand and information-theoretic scores (Arganda-Carreras
  et al. 2015, "Crowdsourcing the creation of image segmentation algorithms for connectomics"), counted only on
  pixels the ground truth calls a cell (true label > 0; membranes are not scored), from scikit-image:
  - `rand_f` (V_rand): the F-score of the pixel pairs that both segmentations put in one region, equal to
    1 - `skimage.metrics.adapted_rand_error`; `rand_split` (low when the prediction splits a cell) and
    `rand_merge` (low when it merges cells) are its two parts. Pairs of distinct pixels are counted, as skimage
    does, which differs from the paper's normalised contingency table only by terms of order 1 / pixels.
  - `vi_split` = H(pred | true) and `vi_merge` = H(true | pred) in bits (the two terms of
    `skimage.metrics.variation_of_information`), and `info_f` (V_info) = 2 I(true; pred) / (H(true) + H(pred)).
  A predicted background pixel (label 0) inside a true cell counts as one more region, as in skimage; a
  post-processing that assigns every pixel to a cell (`postprocess.grow=true`) avoids that penalty.
Higher is better for `rand_*` and `info_f`, lower for `pixel_error` and `vi_*`.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import contingency_table

__all__ = ["REGION_KEYS", "entropy", "pixel_error", "rand_f", "region_scores"]

REGION_KEYS = ("rand_f", "rand_split", "rand_merge", "info_f", "vi_split", "vi_merge")


def _labels(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name}: expected a 2-D integer label map (H, W), got {x.dtype} of shape {x.shape}")
    return x.astype(np.int64, copy=False)


def _pair(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, pred = _labels(true, "true"), _labels(pred, "pred")
    if true.shape != pred.shape:
        raise ValueError(f"region scores: true labels are {true.shape} but predicted labels {pred.shape}")
    return true, pred


def pixel_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of pixels where the binary masks (H, W) differ (non-zero = foreground); 0 for empty images."""
    pred, true = np.asarray(pred) != 0, np.asarray(true) != 0
    if pred.shape != true.shape:
        raise ValueError(f"pixel_error: pred is {pred.shape} but true is {true.shape}")
    return float(np.count_nonzero(pred != true) / pred.size) if pred.size else 0.0


def entropy(labels: np.ndarray) -> float:
    """Shannon entropy in bits of the label frequencies of `labels` (any shape)."""
    _, counts = np.unique(labels, return_counts=True)
    return _h(counts.astype(np.float64))


def _h(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def rand_f(true: np.ndarray, pred: np.ndarray) -> float:
    """Foreground-restricted Rand F-score (V_rand) of two (H, W) label maps; 1 when there is no true cell."""
    return region_scores(true, pred)["rand_f"]


def region_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The scores of `REGION_KEYS` for (H, W) true and predicted label maps (0 = membrane / background in
    `true`, not scored). An image without true cells scores 1 / 0 (nothing to get wrong).

    From one contingency table (`skimage.metrics.contingency_table`, rows = true cells, columns = predicted
    regions, pixel counts n_ij): with pairs(x) = sum x^2 - sum x (ordered pairs of distinct pixels),
    rand_split = pairs(n_ij) / pairs(true sizes), rand_merge = pairs(n_ij) / pairs(predicted sizes),
    rand_f their harmonic mean (= 1 - skimage's adapted_rand_error); vi_split = H(pred | true),
    vi_merge = H(true | pred) in bits (skimage's variation_of_information), info_f = 2 I / (H(true) + H(pred)).
    """
    true, pred = _pair(true, pred)
    if not (true > 0).any():
        return {"rand_f": 1.0, "rand_split": 1.0, "rand_merge": 1.0, "info_f": 1.0, "vi_split": 0.0,
                "vi_merge": 0.0}
    table = contingency_table(true, pred, ignore_labels=(0,), normalize=False, sparse_type="array")
    n_ij = np.asarray(table.data, np.float64)
    n_true = np.asarray(table.sum(axis=1), np.float64).ravel()
    n_pred = np.asarray(table.sum(axis=0), np.float64).ravel()
    n = n_ij.sum()
    both, same_true, same_pred = n_ij @ n_ij - n, n_true @ n_true - n, n_pred @ n_pred - n
    split = both / same_true if same_true > 0 else 1.0  # every true cell one pixel: nothing to split
    merge = both / same_pred if same_pred > 0 else 1.0
    f = 2 * both / (same_true + same_pred) if same_true + same_pred > 0 else 1.0
    h_true, h_pred, h_joint = _h(n_true), _h(n_pred), _h(n_ij)
    mutual = max(h_true + h_pred - h_joint, 0.0)
    # both segmentations one region each: nothing to split or merge, a perfect information score
    info = 2.0 * mutual / (h_true + h_pred) if h_true + h_pred > 1e-12 else 1.0
    return {"rand_f": float(f), "rand_split": float(split), "rand_merge": float(merge), "info_f": float(info),
            "vi_split": max(h_joint - h_true, 0.0), "vi_merge": max(h_joint - h_pred, 0.0)}
