"""Arrays for pictures: any image (a (C,H,W) float tensor in [0, 1], an HxW or HxWxC array, uint8 or float) to
HxWx3 uint8, and small crops of batches for previews."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["as_uint8_rgb", "center_crop", "to_uint8"]


def to_uint8(values: Any) -> np.ndarray:
    """Floats in [0, 1] (clipped) -> uint8, rounded to the nearest level; uint8 passes through unchanged."""
    a = np.asarray(values)
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    return (np.clip(a, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def as_uint8_rgb(image: Any) -> np.ndarray:
    """HxWx3 uint8 from a (C,H,W) torch tensor in [0, 1] (a batch's image) or an HxW / HxWxC array (uint8, or
    float in [0, 1]): gray is repeated to three channels, an alpha channel dropped."""
    if hasattr(image, "detach"):  # torch tensor, channels first
        image = image.detach().float().cpu().numpy()
        image = image.transpose(1, 2, 0) if image.ndim == 3 else image
    img = to_uint8(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def center_crop(batch: dict, max_side: int) -> dict:
    """Crop image / target of a batch to at most `max_side` pixels a side, around the centre (keeps scale)."""
    h, w = batch["image"].shape[-2:]
    ch, cw = min(h, max_side), min(w, max_side)
    y, x = (h - ch) // 2, (w - cw) // 2
    return {**batch, "image": batch["image"][..., y:y + ch, x:x + cw],
            "target": batch["target"][..., y:y + ch, x:x + cw]}
