"""Intensity normalisation: every image nucseg reads becomes RGB uint8 stretched between two percentiles.

Percentile stretching makes dim 16-bit fluorescence and bright 8-bit brightfield comparable. NaN / inf pixels
are left out of the percentiles and set to 0; constant images are flagged (`IntensityCheck`). 8- and 16-bit
images are stretched through their histogram and a lookup table, bit-identical to the float path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

__all__ = ["IntensityCheck", "describe", "normalize", "normalize_checked", "percentiles_from_counts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IntensityCheck:
    """What `normalize_checked` found in one image.

    nonfinite_pixels: pixels (H x W positions) with a NaN or infinite value in any channel; they are left out
        of the percentiles and set to 0 in the output.
    warning: None, or why the stretch is not meaningful: "no finite pixels", "constant image" (all finite
        pixels equal; the output is all 0) or "nearly constant image" (the two percentiles are equal, so the
        image is stretched between its minimum and maximum instead).
    """

    nonfinite_pixels: int = 0
    warning: str | None = None

    @property
    def clean(self) -> bool:
        return self.nonfinite_pixels == 0 and self.warning is None


def normalize_checked(arr: np.ndarray, low: float = 0.5, high: float = 99.8) -> tuple[np.ndarray, IntensityCheck]:
    """Stretch intensities between the `low` and `high` percentiles (over all channels) into uint8.

    `arr`: (H, W) or (H, W, C), any dtype -> the same shape as uint8, and what was found (`IntensityCheck`).
    Works the same for 8- and 16-bit data. Non-finite values never reach the arithmetic: they are ignored by
    the percentiles and become 0; a constant image maps to zeros instead of dividing by zero. 8- and 16-bit
    images take a histogram and a lookup table instead of float copies of the image (same result, a fraction
    of the memory and time on large images).
    """
    if arr.dtype in (np.uint8, np.uint16) and arr.size:
        return _normalize_integer(arr, low, high)
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    all_finite = bool(finite.all())
    values = a if all_finite else a[finite]  # the fast path keeps finite images bit-identical to before
    bad = 0 if all_finite else int((~finite).reshape(*a.shape[:2], -1).any(-1).sum())
    zeros = np.zeros(arr.shape, np.uint8)
    if values.size == 0:
        return zeros, IntensityCheck(bad, "no finite pixels")
    lo, hi = np.percentile(values, [low, high])
    warning = None
    if hi <= lo:
        lo, hi, warning = values.min(), values.max(), "nearly constant image"
    if hi <= lo:
        return zeros, IntensityCheck(bad, "constant image")
    out = (a - lo) / (hi - lo)
    if not all_finite:
        out[~finite] = 0.0
    return _to_uint8(out), IntensityCheck(bad, warning)


def _to_uint8(scaled: np.ndarray) -> np.ndarray:
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _normalize_integer(arr: np.ndarray, low: float, high: float) -> tuple[np.ndarray, IntensityCheck]:
    """`normalize_checked` of a uint8 / uint16 image through its histogram: the percentiles are those
    np.percentile returns for the float32 copy, and the stretch is a lookup table holding the float path's
    result for every value, so the output is bit-identical."""
    flat = arr.reshape(-1)
    counts = np.zeros(1 << (8 * arr.itemsize), np.int64)
    for start in range(0, flat.size, 1 << 22):  # bincount widens to int64: chunks bound the temporary
        counts += np.bincount(flat[start:start + (1 << 22)], minlength=counts.size)
    lo, hi = percentiles_from_counts(counts, [low, high])
    present = np.flatnonzero(counts)
    warning = None
    if hi <= lo:
        lo, hi, warning = np.float32(present[0]), np.float32(present[-1]), "nearly constant image"
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8), IntensityCheck(0, "constant image")
    values = np.arange(int(present[-1]) + 1, dtype=np.float32)
    return _to_uint8((values - lo) / (hi - lo))[arr], IntensityCheck(0, warning)


def percentiles_from_counts(counts: np.ndarray, q: list[float]) -> list[np.float64]:
    """np.percentile (method "linear") of the float32 values 0..len(counts)-1 repeated counts[v] times, from
    the histogram alone: the same order statistics and numpy's interpolation, so the same float64 results."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for p in q:
        virtual = (n - 1) * (np.float64(p) / 100)
        prev = min(max(int(np.floor(virtual)), 0), n - 1)
        nxt = min(prev + 1, n - 1)
        a, b = (np.float32(np.searchsorted(cum, i, side="right")) for i in (prev, nxt))
        t = virtual - prev
        diff = np.float32(b - a)
        out.append(np.float64(b - diff * (1 - t)) if t >= 0.5 else np.float64(a + diff * t))
    return out


def normalize(arr: np.ndarray, low: float = 0.5, high: float = 99.8, name: str | os.PathLike | None = None
              ) -> np.ndarray:
    """`normalize_checked` without the report: (H, W[, C]) any dtype -> uint8 of the same shape. With `name`
    (the file), non-finite pixels and constant images are logged as warnings naming it."""
    out, check = normalize_checked(arr, low, high)
    if name is not None and not check.clean:
        log.warning("%s: %s", name, describe(check))
    return out


def describe(check: IntensityCheck) -> str:
    """One phrase for a log line, e.g. '12 non-finite pixels (NaN / inf) set to 0; constant image'."""
    parts = [f"{check.nonfinite_pixels} non-finite pixels (NaN / inf) set to 0"] if check.nonfinite_pixels else []
    return "; ".join(parts + ([check.warning] if check.warning else [])) or "clean"
