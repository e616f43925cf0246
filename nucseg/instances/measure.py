"""Per-nucleus measurements of an instance label map: the table a biologist reads next to the mask."""

from __future__ import annotations

import math

import numpy as np
from skimage.measure import regionprops_table

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
    props = ["label", "area", "centroid", "equivalent_diameter_area", "eccentricity"]
    table = regionprops_table(labels, properties=props)
    n = len(table["label"])
    mean_int = (_mean_intensity(labels, intensity)[table["label"]] if intensity is not None and n
                else [math.nan] * n)
    return [
        {
            "nucleus_id": int(table["label"][i]),
            "area": int(table["area"][i]),
            "centroid_y": float(table["centroid-0"][i]),
            "centroid_x": float(table["centroid-1"][i]),
            "equivalent_diameter": float(table["equivalent_diameter_area"][i]),
            "eccentricity": float(table["eccentricity"][i]),
            "mean_intensity": float(mean_int[i]),
        }
        for i in range(n)
    ]


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

