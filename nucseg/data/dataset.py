"""Samples as tensors: the Dataset over a cached source (image, target channels, instance labels, id), its
collate function, and the training targets (`binary`, or `instance` with contour channels)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from nucseg.data.source import CachedSource
from nucseg.instances.targets import instance_distance_targets, instance_targets
from nucseg.utils.errors import ImageReadError

if TYPE_CHECKING:
    import albumentations as A

__all__ = ["SegmentationDataset", "binary_targets", "collate", "resolve_targets"]


def binary_targets(labels: np.ndarray) -> np.ndarray:
    """Foreground target (1, H, W) from an instance label map."""
    return (labels > 0)[None].astype(np.float32)


class SegmentationDataset(Dataset):
    """Samples as dicts: image (3,H,W) float in [0,1], target (K,H,W), labels (H,W) int32, id."""

    def __init__(self, source: CachedSource, ids: Sequence[str], transform: A.Compose, target_fn: Callable,
                 length: int | None = None):
        self.source, self.ids, self.transform, self.target_fn = source, list(ids), transform, target_fn
        self.length = length or len(self.ids)
        self._seed: int | None = None

    def __len__(self) -> int:
        return self.length

    def _seed_transform(self) -> None:
        """Albumentations draws from its own RNG, which `seed_everything` does not touch and which DataLoader
        workers would each inherit as the same copy: seed it from torch's per-process seed (set by
        `seed_everything`, different in each worker), so runs repeat and workers differ."""
        seed = torch.initial_seed() % 2**32
        if seed != self._seed and hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)
            self._seed = seed

    def __getitem__(self, index: int) -> dict:
        self._seed_transform()
        rid = self.ids[index % len(self.ids)]
        try:
            image, labels = self.source.load(rid)
            labelled = labels is not None
            if labels is None:
                labels = np.zeros(image.shape[:2], np.int32)
            if labels.shape != image.shape[:2]:
                raise ImageReadError(f"labels of shape {labels.shape} differ from the image's {image.shape[:2]}")
            out = self.transform(image=image, mask=labels.astype(np.int32))
        except Exception as exc:  # name the sample even when the error comes from inside a worker
            inner: Any = getattr(self.source, "source", self.source)  # CachedSource -> the Source it wraps
            where = inner.location(rid)
            if isinstance(exc, ImageReadError) and where in str(exc):
                raise
            raise ImageReadError(f"{where} (record {rid!r} of {inner.name}): "
                                 f"{type(exc).__name__}: {exc}") from exc
        image, labels = out["image"], out["mask"].astype(np.int32)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0),
            "target": torch.from_numpy(self.target_fn(labels)),
            "labels": torch.from_numpy(labels),
            "labelled": labelled,
            "id": rid,
        }


def collate(samples: list[dict]) -> dict:
    out: dict = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def resolve_targets(targets: str | Callable) -> Callable:
    """'binary' -> foreground only; 'instance' -> foreground + contour channels; 'instance_distance' -> those and
    the inner distance (nucseg.instances.targets)."""
    if callable(targets):
        return targets
    if targets == "binary":
        return binary_targets
    if targets == "instance":
        return instance_targets
    if targets == "instance_distance":
        return instance_distance_targets
    raise ValueError(f"data.targets: expected 'binary', 'instance' or 'instance_distance', got {targets!r}")
