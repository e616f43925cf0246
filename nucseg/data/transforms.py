"""Albumentations pipelines. The `augment` config group lists the augmentations (as `_target_` entries);
this module adds what every pipeline needs: the random crop for training, padding for whole-image evaluation,
and optional CLAHE preprocessing applied to every split.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2

CLAHE_CLIP_LIMIT = 2.0


def preprocessing(clahe: bool = False) -> list[A.BasicTransform]:
    """Transforms applied to every split (and at prediction time), so train and test see the same input.

    The clip limit is a fixed (low, high) pair: albumentations reads a single number as the range (1, number)
    and samples from it, which would make evaluation random.
    """
    if not clahe:
        return []
    return [A.CLAHE(clip_limit=(CLAHE_CLIP_LIMIT, CLAHE_CLIP_LIMIT), tile_grid_size=(8, 8), p=1.0)]


def train_transform(crop_size: int, augment: Sequence[A.BasicTransform] = (), clahe: bool = False) -> A.Compose:
    """Pad images smaller than the crop (reflect), take a random crop, then augment."""
    return A.Compose(
        [
            *preprocessing(clahe),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(height=crop_size, width=crop_size),
            *augment,
        ]
    )


def eval_transform(clahe: bool = False) -> A.Compose:
    """Whole images; padding to a multiple of 32 happens on the tensor so it can be cropped off again."""
    return A.Compose(preprocessing(clahe))
