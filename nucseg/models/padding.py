"""Padding whole images to a size the network accepts (its encoder's stride); outputs are cropped back."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

__all__ = ["pad_to", "pad_to_multiple"]


def pad_to(x: Tensor, height: int, width: int) -> Tensor:
    """Pad (B,C,H,W) on the bottom/right to (height, width): reflect where possible, replicate otherwise."""
    ph, pw = height - x.shape[-2], width - x.shape[-1]
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def pad_to_multiple(x: Tensor, multiple: int = 32) -> tuple[Tensor, tuple[int, int]]:
    """Pad (B,C,H,W) on the bottom/right to a multiple of `multiple` (see `pad_to`); return the original (H, W)."""
    h, w = x.shape[-2:]
    return pad_to(x, h + (-h) % multiple, w + (-w) % multiple), (h, w)
