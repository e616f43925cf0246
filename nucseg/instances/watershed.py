"""Probability maps -> instance label maps (one integer per nucleus).

Connected components of the thresholded foreground merge nuclei that touch. With the instance head's contour
and touching-border channels (`nucseg.instances.targets`), the foreground minus those borders leaves one seed
per nucleus, and a watershed grows the seeds back over the foreground, cutting along the predicted borders.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from nucseg.settings import PostprocessMethod

__all__ = ["fill_object_holes", "postprocess_settings", "probs_to_instances", "watershed_in_bands"]

log = logging.getLogger(__name__)

# postprocess keys that say how the settings were chosen (postprocess=auto), not settings themselves
META_KEYS = frozenset({"tune", "tuned", "objective"})
_warned: set[str] = set()


def _relabel_sequential(labels: np.ndarray, keep: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Map kept labels (boolean per label value) to 1..N in label order, everything else to 0. `in_place`
    (int32 labels the caller owns) writes into `labels`: no second full-size array on large images."""
    lut = np.zeros(keep.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    if in_place and labels.dtype == np.int32:
        return np.take(lut, labels, out=labels, mode="clip")  # element i is read before it is written
    return lut[labels]


def fill_object_holes(labels: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Fill background enclosed by a single object with that object's label (into `labels` itself with
    `in_place`, for a caller that owns it).

    Background enclosed by several touching objects (a ring of nuclei around an empty spot) stays background,
    unlike a hole filling of the union mask.
    """
    fg = labels > 0
    # holes: background components that do not reach the image border (what ndi.binary_fill_holes fills, with
    # the same 4-connectivity, in one labelling pass instead of its iterated dilation: 3x faster on large images)
    hole_ids, n_bg = ndi.label(~fg)
    edge = np.concatenate([hole_ids[0], hole_ids[-1], hole_ids[:, 0], hole_ids[:, -1]])
    is_hole = np.ones(n_bg + 1, bool)
    is_hole[0] = False
    is_hole[edge] = False
    if not is_hole.any():
        return labels
    hole_ids = _relabel_sequential(hole_ids, is_hole, in_place=True)
    n_holes = int(is_hole.sum())
    holes = hole_ids > 0
    # which objects border each hole: dilate the hole ids by one pixel onto the objects
    near = ndi.maximum_filter(hole_ids, size=3)
    near *= fg
    pairs = np.unique(near[near > 0].astype(np.int64) * (int(labels.max()) + 1) + labels[near > 0])
    hole_of, obj_of = np.divmod(pairs, int(labels.max()) + 1)
    n_neighbours = np.bincount(hole_of, minlength=n_holes + 1)
    owner = np.zeros(n_holes + 1, labels.dtype)
    single = n_neighbours[hole_of] == 1
    owner[hole_of[single]] = obj_of[single]
    out = labels if in_place else labels.copy()
    out[holes] = owner[hole_ids[holes]]
    return out


def _seeded_watershed(probs: np.ndarray, threshold: float, contour_threshold: float,
                      seed_min_size: int, distance_threshold: float = 0.0) -> np.ndarray:
    foreground = probs[0] > threshold
    border = probs[1:3].max(0)  # contour and touching-border probabilities
    seeds = foreground & (border <= contour_threshold)
    if probs.shape[0] >= 4:  # the inner distance: seeds at nucleus centres, flooded down from them
        seeds &= probs[3] >= distance_threshold
        border = 0.5 * (border + 1.0 - probs[3])
    markers, n = ndi.label(seeds)
    del seeds
    if seed_min_size > 1 and n:
        keep = np.bincount(markers.ravel(), minlength=n + 1) >= seed_min_size
        keep[0] = False
        markers = _relabel_sequential(markers, keep, in_place=True)
    labels = watershed_in_bands(border, markers, foreground, out=markers)  # markers become the labels
    del border  # full-size arrays: an 8192-px image holds 0.3 GB in each
    # foreground blobs without a seed (nuclei thinner than the contour band) are nuclei too
    unreached, n_extra = ndi.label(foreground & (labels == 0))
    if n_extra:
        extra = unreached > 0
        np.add(unreached, labels.max(), out=unreached, where=extra)
        np.copyto(labels, unreached, where=extra)
    return labels


def watershed_in_bands(image: np.ndarray, markers: np.ndarray, mask: np.ndarray, band_rows: int = 1024,
                       out: np.ndarray | None = None) -> np.ndarray:
    """`skimage.segmentation.watershed(image, markers, mask=mask)` run on bands of whole mask components.

    Flooding never leaves the mask, so each 4-connected mask component floods on its own: running the
    components of ~`band_rows` rows at a time gives the same labels, while skimage's float64 copies of the
    image cover one band instead of the whole image (an 8192-px image: 0.5 GB per copy) and the run is faster.
    (H, W) float `image`, (H, W) int `markers`, (H, W) bool `mask` -> (H, W) int32 labels, written into `out`
    when given (it may be `markers` itself: each band reads its markers before writing its own pixels).
    """
    comp, n = ndi.label(mask)
    if out is None:
        out = np.zeros(mask.shape, np.int32)
    out[~mask] = 0
    if n == 0:
        return out
    spans = ndi.find_objects(comp)
    starts = np.array([s[0].start for s in spans])  # non-decreasing: components are numbered in raster order
    stops = np.array([s[0].stop for s in spans])
    i = 0
    while i < n:  # components i+1..j start within band_rows of component i+1's first row
        j = max(int(np.searchsorted(starts, starts[i] + band_rows, "left")), i + 1)
        r0, r1 = int(starts[i]), int(stops[i:j].max())
        band = (comp[r0:r1] > i) & (comp[r0:r1] <= j)
        labels = watershed(image[r0:r1], np.where(band, markers[r0:r1], 0), mask=band)
        out[r0:r1][band] = labels[band]
        i = j
    return out


def postprocess_settings(pl_module: Any) -> dict[str, Any]:
    """A module's `postprocess` hyper-parameter as keyword arguments of `probs_to_instances`."""
    return dict(pl_module.hparams.get("postprocess") or {})


def probs_to_instances(
    probs: np.ndarray,
    method: str = "auto",
    threshold: float = 0.5,
    contour_threshold: float = 0.5,
    min_size: int = 10,
    fill_holes: bool = True,
    seed_min_size: int = 10,
    grow: bool = False,
    distance_threshold: float = 0.0,
    **kwargs: Any,
) -> np.ndarray:
    """Probabilities -> instance labels.

    Args:
        probs: (K, H, W) probabilities (or (H, W) for K = 1): foreground, then contour and touching borders,
            then (K = 4, data.targets=instance_distance) the inner distance.
        method: "cc": connected components of `probs[0] > threshold`; "watershed": seeds = foreground minus
            pixels whose contour/touching probability exceeds `contour_threshold`, grown over the foreground
            along the border probability (needs K >= 2); "auto": watershed when K >= 2, else cc
            (`nucseg.settings.PostprocessMethod`).
        threshold: foreground probability threshold.
        contour_threshold: border probability above which a pixel is not a seed.
        min_size: objects under this many pixels are dropped.
        fill_holes: fill holes inside single objects.
        seed_min_size: seeds under this many pixels are ignored.
        distance_threshold: with an inner-distance channel, seeds are also at least this far in (0..1, share
            of their nucleus's depth), and the relief flooded is the mean of the border probability and
            1 - distance.
        grow: flood the objects over the background along 1 - probs[0] (a watershed on the membrane map), so
            every pixel belongs to an object: for tissue that objects tile, such as EM cells.
        **kwargs: the rest of a whole `postprocess` config; unknown keys are logged once and ignored.

    Returns:
        (H, W) int32 labels 1..N, 0 = background.

    Example:
        >>> import numpy as np
        >>> probs = np.zeros((1, 32, 32), np.float32); probs[0, 2:10, 2:10] = probs[0, 20:30, 20:30] = 0.9
        >>> int(probs_to_instances(probs).max())
        2
    """
    for key in kwargs:
        if key not in _warned and key not in META_KEYS:
            _warned.add(key)
            log.warning("postprocess.%s is not a setting of probs_to_instances; ignored", key)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[0] < 1:
        raise ValueError(f"probs_to_instances: expected probabilities of shape (K, H, W), got {probs.shape}")
    method = PostprocessMethod.parse(method, "postprocess.method")
    if method == "auto":
        method = "watershed" if probs.shape[0] >= 2 else "cc"
    if method == "watershed":
        if probs.shape[0] < 2:
            raise ValueError(
                "postprocess.method=watershed needs contour channels (a model trained with data.targets=instance "
                f"and model.classes=3), but the probabilities have {probs.shape[0]} channel; use method=cc or auto"
            )
        labels = _seeded_watershed(probs, threshold, contour_threshold, seed_min_size, distance_threshold)
    else:
        labels, _ = ndi.label(probs[0] > threshold)
    labels = labels.astype(np.int32, copy=False)
    if fill_holes:
        labels = fill_object_holes(labels, in_place=True)
    keep = np.bincount(labels.ravel(), minlength=1) >= max(int(min_size), 1)
    keep[0] = False
    labels = _relabel_sequential(labels, keep, in_place=True)  # labels are this function's own array
    if grow and labels.any():
        labels = watershed(1.0 - probs[0], labels).astype(np.int32, copy=False)
    return labels
