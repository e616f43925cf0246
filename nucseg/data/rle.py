"""Kaggle run-length encoding (the DSB2018 submission and solution format).

Kaggle RLE (the 2018 Data Science Bowl format): pixels are numbered 1..H*W down the columns (column-major:
pixel (row r, column c) is number c*H + r + 1), and a mask is written as space-separated `start length` pairs
of its runs, in increasing order. One CSV row describes one nucleus: `ImageId,EncodedPixels[,Height,Width,
Usage]`; the released solutions (stage1_solution.csv, stage2_solution_final.csv) mark rows that do not count
with Usage=Ignored; `nucseg.data.dsb2018_solution` reads them as a data source.
"""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D boolean mask as Kaggle RLE ('' for an empty mask)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode: expected a 2-D mask, got shape {mask.shape}")
    pixels = np.concatenate([[False], mask.astype(bool).ravel(order="F"), [False]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1  # 1-indexed run starts and (exclusive) ends
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs.tolist()))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode Kaggle RLE into a boolean mask of `shape` (H, W); raise ValueError on a malformed string."""
    h, w = (int(v) for v in shape)
    n = h * w
    text = (rle or "").strip()
    if not text:
        return np.zeros((h, w), bool)
    try:
        nums = np.array(text.split(), dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"RLE: expected integers 'start length ...', got {text[:40]!r}") from exc
    if nums.size % 2:
        raise ValueError(f"RLE: expected start/length pairs, got an odd number of values ({nums.size})")
    starts, lengths = nums[0::2] - 1, nums[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise ValueError("RLE: starts are 1-indexed and lengths must be positive")
    ends = starts + lengths
    if ends.max() > n:
        raise ValueError(f"RLE: a run ends at pixel {int(ends.max())}, beyond the {h}x{w} image ({n} pixels)")
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    flat = np.cumsum(delta[:-1]) > 0
    return flat.reshape((h, w), order="F")


def labels_to_rles(labels: np.ndarray) -> list[str]:
    """One RLE per instance of a label map, in increasing label order (the rows of a submission)."""
    return [rle_encode(labels == k) for k in np.unique(labels) if k != 0]
