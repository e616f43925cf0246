"""The 2018 Data Science Bowl instance score, plus AP@0.5 and the relative count error.

For each IoU threshold t in 0.5, 0.55, ..., 0.95 a predicted nucleus matches a true one when their IoU is
strictly above t; the image scores TP / (TP + FP + FN) averaged over the thresholds (Kaggle's "mean average
precision"). Above 0.5 a nucleus can overlap at most one other by more than half their union, so matches are
one-to-one without an assignment step.

All overlaps come from one joint histogram of (true label, predicted label) pairs, so an image with thousands
of nuclei costs one pass over its pixels, not one pass per nucleus.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torchmetrics import Metric

DSB_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # 0.50, 0.55, ..., 0.95
# IoUs are ratios of pixel counts: one that differs from a threshold k/20 differs by at least 1 / (20 * union),
# far above this tolerance, which only keeps "exactly at the threshold" from matching through float rounding.
_EPS = 1e-12
_DENSE_LIMIT = 1 << 24  # joint histograms up to this many cells are counted densely with bincount


def _as_labels(x: np.ndarray | Tensor, name: str) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D instance label map (H, W), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == bool):
        raise ValueError(f"{name}: expected integer labels (0 = background), got dtype {x.dtype}")
    x = x.astype(np.int64, copy=False)
    if x.size and x.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0 (0 = background), got negative values")
    return x


def _compact(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0 (background), 1..n (objects in label order); return the new labels and n."""
    top = int(flat.max()) if flat.size else 0
    if top <= 4 * flat.size + 1024:  # usual case: labels are small integers, count them without sorting
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        lut = np.cumsum(present)
        lut[~present] = 0
        return lut[flat], int(present.sum())
    values, inverse = np.unique(flat, return_inverse=True)
    offset = 0 if values[0] == 0 else 1
    return inverse.reshape(-1) + offset, len(values) - (1 - offset)


def overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Sparse IoUs of all overlapping (true, pred) pairs: (true index, pred index, IoU, n_true, n_pred).

    Indices count objects from 0 in label order.
    """
    t, p = _as_labels(true, "true labels"), _as_labels(pred, "predicted labels")
    if t.shape != p.shape:
        raise ValueError(f"true and predicted label maps differ in shape: {t.shape} vs {p.shape}")
    t, n_true = _compact(t.ravel())
    p, n_pred = _compact(p.ravel())
    cells = (n_true + 1) * (n_pred + 1)
    pair = t * (n_pred + 1) + p
    if cells <= _DENSE_LIMIT:
        joint = np.bincount(pair, minlength=cells)
        area_t = joint.reshape(n_true + 1, n_pred + 1).sum(1)
        area_p = joint.reshape(n_true + 1, n_pred + 1).sum(0)
        cell = np.flatnonzero(joint)
        count = joint[cell]
    else:  # very many objects on both sides: count only the pairs that occur
        cell, count = np.unique(pair, return_counts=True)
        area_t = np.bincount(t, minlength=n_true + 1)
        area_p = np.bincount(p, minlength=n_pred + 1)
    ti, pj = np.divmod(cell, n_pred + 1)
    both = (ti > 0) & (pj > 0)
    ti, pj, inter = ti[both], pj[both], count[both]
    iou = inter / (area_t[ti] + area_p[pj] - inter)
    return ti - 1, pj - 1, iou, n_true, n_pred


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n_true, n_pred) IoU of every true nucleus with every predicted one (objects in label order)."""
    ti, pj, iou, n_true, n_pred = overlaps(true, pred)
    out = np.zeros((n_true, n_pred), np.float64)
    out[ti, pj] = iou
    return out


def _check_thresholds(thresholds: ArrayLike) -> np.ndarray:
    th = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if th.size == 0 or th.min() < 0.5 or th.max() >= 1.0:
        raise ValueError(f"IoU thresholds: expected values in [0.5, 1) (one-to-one matching needs IoU > 0.5), "
                         f"got {th.tolist()}")
    return th


def _precision_at(iou: np.ndarray, n_true: int, n_pred: int, thresholds: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per threshold; 1 when both images are empty."""
    if n_true == 0 and n_pred == 0:
        return np.ones(len(thresholds))
    tp = (iou[None, :] > thresholds[:, None] + _EPS).sum(1)
    return tp / (n_true + n_pred - tp)  # TP + FP + FN = TP + (n_pred - TP) + (n_true - TP)


def dsb_score_image(true: np.ndarray, pred: np.ndarray, thresholds: ArrayLike = DSB_THRESHOLDS) -> float:
    """The DSB2018 score of one image: mean over IoU thresholds of TP / (TP + FP + FN)."""
    th = _check_thresholds(thresholds)
    _, _, iou, n_true, n_pred = overlaps(true, pred)
    return float(_precision_at(iou, n_true, n_pred, th).mean())


def ap_at(true: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> float:
    """TP / (TP + FP + FN) at one IoU threshold (AP@0.5 for threshold=0.5)."""
    return dsb_score_image(true, pred, [threshold])


def count_error(true: np.ndarray, pred: np.ndarray) -> float:
    """|n_pred - n_true| / max(n_true, 1): the relative error of the nucleus count."""
    _, n_true = _compact(_as_labels(true, "true labels").ravel())
    _, n_pred = _compact(_as_labels(pred, "predicted labels").ravel())
    return abs(n_pred - n_true) / max(n_true, 1)


def instance_scores(true: np.ndarray, pred: np.ndarray) -> dict[str, float | int]:
    """dsb_score, ap50, count_error, n_true, n_pred of one image, from a single overlap count."""
    _, _, iou, n_true, n_pred = overlaps(true, pred)
    prec = _precision_at(iou, n_true, n_pred, DSB_THRESHOLDS)
    return {
        "dsb_score": float(prec.mean()),
        "ap50": float(prec[0]),
        "count_error": abs(n_pred - n_true) / max(n_true, 1),
        "n_true": n_true,
        "n_pred": n_pred,
    }


class DSBScore(Metric):
    """Mean over images of the DSB2018 score, AP@0.5 and count error of instance label maps.

    `update(preds, target)` takes label maps (H, W) or (B, H, W), numpy or tensors. States are sums, so
    distributed runs add them up before `compute()`. `last` holds the per-image scores of the latest update
    (this process only), for callers that also write a per-image table.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False
    METRICS = ("dsb_score", "ap50", "count_error")
    n_images: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in self.METRICS:
            self.add_state(f"{name}_sum", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.last: list[dict[str, float | int]] = []

    def update(self, preds: np.ndarray | Tensor, target: np.ndarray | Tensor) -> None:
        preds = preds.detach().cpu().numpy() if isinstance(preds, Tensor) else np.asarray(preds)
        target = target.detach().cpu().numpy() if isinstance(target, Tensor) else np.asarray(target)
        if preds.ndim == 2:
            preds, target = preds[None], target[None]
        if preds.shape != target.shape:
            raise ValueError(f"DSBScore: preds {preds.shape} and target {target.shape} differ in shape")
        self.last = [instance_scores(t, p) for p, t in zip(preds, target, strict=True)]
        for s in self.last:
            for name in self.METRICS:
                state = getattr(self, f"{name}_sum")
                state += float(s[name])
            self.n_images += 1

    def compute(self) -> dict[str, Tensor]:
        """Means of `METRICS` over the images, and `n_images` (0: nothing was scored, the means are 0)."""
        n = self.n_images.clamp_min(1).double()
        out = {name: (getattr(self, f"{name}_sum") / n).float() for name in self.METRICS}
        return {**out, "n_images": self.n_images.clone()}
