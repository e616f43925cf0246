"""Group images into acquisitions and split by group, so that near-copies never straddle train and test.

stage1_train holds many crops of the same acquisition (same microscope, staining, magnification and size): a
split over images puts near-copies of test images into training and overstates what a user gets on images
from a new experiment. Images are described by cheap statistics that are constant within an acquisition and
differ between them (size, colour, intensity percentiles, the typical size of bright objects), clustered by
average linkage, and whole clusters are assigned to train / val / test, stratified by imaging type.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.cluster.hierarchy import fcluster, linkage
from skimage.filters import threshold_otsu

__all__ = ["ACQUISITION_THRESHOLD", "acquisition_features", "cluster_acquisitions", "grouped_split",
           "dhash", "FEATURE_NAMES", "imaging_type"]

# distance at which average linkage stops merging (features are scaled so that 1 is a large difference);
# chosen by looking at montages of the groups (experiments/split_leakage.py writes one)
ACQUISITION_THRESHOLD = 0.5
FEATURE_NAMES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "p5", "p50", "p95",
                 "log_object_area", "foreground_fraction", "log_height", "log_width")


def imaging_type(rgb: np.ndarray) -> str:
    """Classify an image as 'stained' (colour), 'brightfield' (gray, light background) or 'fluorescence'."""
    a = rgb.astype(np.float32)
    if np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean() > 2.0:
        return "stained"
    gray = a.mean(-1)
    scale = 255.0 if rgb.dtype == np.uint8 else max(float(gray.max()), 1.0)
    return "brightfield" if np.median(gray) / scale > 0.5 else "fluorescence"


def acquisition_features(rgb: np.ndarray) -> list[float]:
    """Statistics of one image (H, W, 3) uint8 that identify its acquisition, scaled to comparable ranges.

    Object size comes from an Otsu threshold of the gray image (inverted when the background is bright), so no
    labels are needed: it stands for the magnification, which differs several-fold between experiments.
    """
    a = rgb[..., :3].astype(np.float32) / 255.0
    gray = a.mean(-1)
    flat = a.reshape(-1, 3)
    p5, p50, p95 = np.percentile(gray, [5, 50, 95])
    g = 1.0 - gray if p50 > 0.5 else gray
    area, frac = 1.0, 0.0
    if float(g.max()) > float(g.min()):
        fg = g > threshold_otsu(g)
        labels, n = ndi.label(fg)
        sizes = np.bincount(labels.ravel())[1:]
        sizes = sizes[sizes >= 4]
        area, frac = (float(np.median(sizes)) if sizes.size else 1.0), float(fg.mean())
    h, w = gray.shape
    values = [*(4 * flat.mean(0)), *(4 * flat.std(0)), 4 * p5, 4 * p50, 4 * p95,
              math.log(area) / 2, 2 * frac, math.log(h), math.log(w)]
    return [round(float(v), 6) for v in values]  # plain floats: stored in the JSON index


def cluster_acquisitions(features: np.ndarray, threshold: float = ACQUISITION_THRESHOLD) -> np.ndarray:
    """(N, F) features -> (N,) int cluster ids 0..K-1 (average linkage, Euclidean, cut at `threshold`),
    numbered by first appearance so ids do not depend on scipy's internal order."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        return np.zeros(len(features), np.int64)
    raw = fcluster(linkage(features, "average"), threshold, "distance")
    first: dict[int, int] = {}
    return np.array([first.setdefault(int(c), len(first)) for c in raw], np.int64)


def _assign(groups: list[tuple[str, int]], n_test: int, n_val: int) -> dict[str, str]:
    """Greedy: each group (in the given order) goes to the first of test / val that still needs images and
    that it does not overfill by more than half its size; the rest trains."""
    need = {"test": n_test, "val": n_val}
    out: dict[str, str] = {}
    for name, size in groups:
        dest = next((s for s in ("test", "val") if need[s] > 0 and size <= 2 * need[s]), "train")
        out[name] = dest
        if dest != "train":
            need[dest] -= size
    # a type with several groups is represented in each requested split even if its groups are large
    for s, n in (("test", n_test), ("val", n_val)):
        if n > 0 and s not in out.values():
            train = sorted((size, name) for name, size in groups if out[name] == "train")
            if len(train) >= 2:
                out[train[0][1]] = s
    return out


def grouped_split(ids: Sequence[str], types: Sequence[str], acquisitions: Sequence[str], val_fraction: float,
                  test_fraction: float, seed: int) -> dict[str, list[str]]:
    """Split ids into train / val / test by whole acquisition groups, per imaging type (each type keeps about
    its share of every split). Deterministic for a seed and a set of ids."""
    members: dict[str, list[str]] = defaultdict(list)
    for rid, acq in zip(ids, acquisitions, strict=True):
        members[acq].append(rid)
    type_of = dict(zip(ids, types, strict=True))
    # an acquisition's type is its majority type (statistics rarely mix types within a cluster)
    by_type: dict[str, list[str]] = defaultdict(list)
    for acq, rids in members.items():
        by_type[Counter(type_of[r] for r in rids).most_common(1)[0][0]].append(acq)
    rng = np.random.default_rng(seed)
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for t in sorted(by_type):
        acqs = sorted(by_type[t])
        rng.shuffle(acqs)
        n = sum(len(members[a]) for a in acqs)
        n_test = int(math.floor(n * test_fraction + 0.5))
        n_val = int(math.floor(n * val_fraction + 0.5))
        dest = _assign([(a, len(members[a])) for a in acqs], n_test, n_val)
        for a in acqs:
            out[dest[a]] += members[a]
    return {k: sorted(v) for k, v in out.items()}


def dhash(rgb: np.ndarray, size: int = 8) -> int:
    """64-bit difference hash of an image (gray, resized to (size, size+1), sign of horizontal gradients):
    near-identical images (re-crops, re-saves, small shifts) differ in a few bits."""
    from skimage.transform import resize

    gray = rgb[..., :3].astype(np.float32).mean(-1)
    small = resize(gray, (size, size + 1), anti_aliasing=True)
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))
