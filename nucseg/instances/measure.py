"""Per-nucleus measurements of an instance label map: the table a biologist reads next to the mask."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

COLUMNS = ("nucleus_id", "area", "centroid_y", "centroid_x", "equivalent_diameter", "eccentricity",
           "mean_intensity")


def measure_instances(labels: np.ndarray, intensity: np.ndarray | None = None) -> list[dict]:
    """One dict per nucleus (`COLUMNS`), in label order; areas and lengths in pixels.

    `intensity` is the image the nuclei were found in, (H, W) or (H, W, C); for colour images the mean
    intensity is averaged over channels. Without it, `mean_intensity` is NaN.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"measure_instances: expected a 2-D integer label map, got {labels.dtype} {labels.shape}")
    if intensity is not None:
        intensity = np.asarray(intensity)
        if intensity.shape[:2] != labels.shape or intensity.ndim not in (2, 3):
            raise ValueError(f"measure_instances: intensity image of shape {intensity.shape} does not match the "
                             f"label map {labels.shape}; expected (H, W) or (H, W, C)")
    area, cy, cx, ecc = _geometry(labels)
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    mean_int = _mean_intensity(labels, intensity) if intensity is not None and ids.size else None
    return [
        {
            "nucleus_id": int(i),
            "area": int(area[i]),
            "centroid_y": float(cy[i]),
            "centroid_x": float(cx[i]),
            "equivalent_diameter": math.sqrt(4.0 * float(area[i]) / math.pi),
            "eccentricity": float(ecc[i]),
            "mean_intensity": float(mean_int[i]) if mean_int is not None else math.nan,
        }
        for i in ids
    ]


def _bands(labels: np.ndarray, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(label, row, column) of every pixel, flat, band by band of `rows` rows: bounded temporaries."""
    h, w = labels.shape
    cols = np.arange(w, dtype=np.float64)
    for y in range(0, h, rows):
        lab = labels[y:y + rows].ravel()
        r = lab.size // w
        yield lab, np.repeat(np.arange(y, y + r, dtype=np.float64), w), np.tile(cols, r)


def _geometry(labels: np.ndarray, rows: int = 512) -> tuple[np.ndarray, ...]:
    """Area, centroid (y, x) and eccentricity per label value 0..max, from image moments summed band by band
    (what skimage's regionprops computes object by object, in one vectorised pass: ~2x faster on a 4096-px
    image with thousands of nuclei). Eccentricity: sqrt(1 - l2 / l1) of the eigenvalues of the second central
    moments, 0 for a single pixel."""
    n = int(labels.max(initial=0)) + 1
    area, sy, sx = np.zeros(n), np.zeros(n), np.zeros(n)
    for lab, ys, xs in _bands(labels, rows):
        area += np.bincount(lab, minlength=n)
        sy += np.bincount(lab, weights=ys, minlength=n)
        sx += np.bincount(lab, weights=xs, minlength=n)
    count = np.maximum(area, 1)
    cy, cx = sy / count, sx / count
    vyy, vxx, vxy = np.zeros(n), np.zeros(n), np.zeros(n)
    for lab, ys, xs in _bands(labels, rows):  # central moments about the centroids: no cancellation
        dy, dx = ys - cy[lab], xs - cx[lab]
        vyy += np.bincount(lab, weights=dy * dy, minlength=n)
        vxx += np.bincount(lab, weights=dx * dx, minlength=n)
        vxy += np.bincount(lab, weights=dy * dx, minlength=n)
    half = (vyy + vxx) / (2 * count)
    root = np.sqrt(((vyy - vxx) / (2 * count)) ** 2 + (vxy / count) ** 2)
    l1, l2 = half + root, np.maximum(half - root, 0.0)
    ecc = np.sqrt(1.0 - l2 / np.where(l1 > 0, l1, 1.0)) * (l1 > 0)
    return area, cy, cx, ecc


def _mean_intensity(labels: np.ndarray, intensity: np.ndarray, rows: int = 512) -> np.ndarray:
    """Mean intensity (over pixels and channels) per label value 0..max, by sums over bands of rows: no float64
    copy of a whole (H, W, C) image."""
    n = int(labels.max()) + 1
    sums, counts = np.zeros(n), np.zeros(n)
    channels = 1 if intensity.ndim == 2 else intensity.shape[-1]
    for y in range(0, labels.shape[0], rows):
        lab = labels[y:y + rows].ravel()
        band = intensity[y:y + rows].reshape(lab.size, channels)
        counts += np.bincount(lab, minlength=n)
        for c in range(channels):
            sums += np.bincount(lab, weights=band[:, c], minlength=n)
    return sums / np.maximum(counts * channels, 1)

