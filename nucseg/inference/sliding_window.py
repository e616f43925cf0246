"""Sliding-window inference: run a model on overlapping tiles of an image of any size and blend the results.

Whole-slide and stitched microscopy images are far larger than the crops a model trains on, and a single pass
over them would not fit in GPU memory. Tiles overlap and are blended with weights that fall off towards the
tile borders (a Gaussian, as in nnU-Net and MONAI), so tile seams and the poorer context at tile edges do not
show in the output. The last tile of a row/column is shifted to end at the image border, so the image is covered
without gaps and without padding; an image that fits in one tile is padded to `pad_multiple` and run once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from nucseg.models.padding import pad_to
from nucseg.settings import WindowSettings

__all__ = ["blend_weights", "sliding_window_inference", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size): stride tile*(1-overlap), last tile flush
    with the end. Requires size >= tile."""
    if size <= tile:
        return [0]
    stride = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def blend_weights(h: int, w: int, blend: str = "gaussian", sigma_scale: float = 0.125,
                  min_weight: float = 1e-3, device: torch.device | str | None = None) -> Tensor:
    """(h, w) blending weights with maximum 1: a separable Gaussian (sigma = sigma_scale * side) centred on the
    tile, or ones. Each 1-D factor is floored at `min_weight`, so pixels seen only by tile edges (near the image
    border) still get a defined value, and along the other axis the tiles keep their relative weights."""
    if blend == "constant":
        return torch.ones(h, w, device=device)
    if blend != "gaussian":
        raise ValueError(f"blend: expected 'gaussian' or 'constant', got {blend!r}")

    def gauss(n: int) -> Tensor:
        x = torch.arange(n, dtype=torch.float64, device=device) - (n - 1) / 2.0
        g = torch.exp(-0.5 * (x / (sigma_scale * n)) ** 2)
        return (g / g.max()).clamp_min(min_weight)

    return torch.outer(gauss(h), gauss(w)).float()


@torch.no_grad()
def sliding_window_inference(
    fn: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: int = WindowSettings.tile,
    overlap: float = WindowSettings.overlap,
    blend: str = WindowSettings.blend,
    pad_multiple: int = 32,
    tile_batch_size: int = WindowSettings.tile_batch_size,
    sigma_scale: float = 0.125,
    output_device: torch.device | str | None = None,
) -> Tensor:
    """Apply `fn` tile by tile to an image of any size and blend the tiles' outputs.

    A side shorter than `tile` is reflect-padded to the next multiple of `pad_multiple` and covered by one tile.

    Args:
        fn: the model, (N, C, h, w) -> (N, K, h, w) for any K.
        image: (B, C, H, W) input.
        tile: tile side in pixels, a multiple of `pad_multiple` (`WindowSettings.tile`).
        overlap: fraction of a tile that neighbouring tiles share, 0 <= overlap < 1.
        blend: "gaussian" (tile borders weigh less) or "constant" (plain average).
        pad_multiple: the network's input stride.
        tile_batch_size: tiles per call of `fn`.
        sigma_scale: Gaussian sigma as a fraction of the tile side.
        output_device: where the blended output is held (e.g. "cpu" for very large images or many stacked
            samples while the model runs on a GPU); by default the image's device.

    Returns:
        (B, K, H, W) float32 blended output, cropped back to the image's size.

    Example:
        >>> import torch
        >>> out = sliding_window_inference(lambda t: t[:, :1] * 2, torch.ones(1, 3, 100, 700), tile=256)
        >>> tuple(out.shape), float(out.max())
        ((1, 1, 100, 700), 2.0)
    """
    if image.ndim != 4:
        raise ValueError(f"image: expected a (B,C,H,W) tensor, got shape {tuple(image.shape)}")
    if tile <= 0 or tile % pad_multiple:
        raise ValueError(f"tile: expected a positive multiple of pad_multiple={pad_multiple}, got {tile}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap: expected 0 <= overlap < 1, got {overlap}")
    b, _, h, w = image.shape
    # sides that fit in a tile are padded to the network's stride; longer sides are tiled without padding
    hp = h if h > tile else -(-h // pad_multiple) * pad_multiple
    wp = w if w > tile else -(-w // pad_multiple) * pad_multiple
    padded = pad_to(image, hp, wp)
    th, tw = min(tile, hp), min(tile, wp)
    ys, xs = tile_starts(hp, th, overlap), tile_starts(wp, tw, overlap)

    dev = torch.device(output_device) if output_device is not None else image.device
    if len(ys) == 1 and len(xs) == 1:  # one pass, no blending
        return _check(fn(padded), b, th, tw).float()[..., :h, :w].to(dev)

    weight = blend_weights(th, tw, blend, sigma_scale, device=dev)
    out: Tensor | None = None
    norm = torch.zeros(hp, wp, device=dev)
    positions = [(y, x) for y in ys for x in xs]
    for i in range(0, len(positions), max(1, tile_batch_size)):
        chunk = positions[i:i + max(1, tile_batch_size)]
        tiles = torch.cat([padded[..., y:y + th, x:x + tw] for y, x in chunk])
        preds = _check(fn(tiles), b * len(chunk), th, tw).float().to(dev)
        if out is None:
            out = torch.zeros(b, preds.shape[1], hp, wp, device=dev)
        for j, (y, x) in enumerate(chunk):
            out[..., y:y + th, x:x + tw] += preds[j * b:(j + 1) * b] * weight
            norm[y:y + th, x:x + tw] += weight
    assert out is not None
    return out.div_(norm)[..., :h, :w]  # in place: the output can be gigabytes


def _check(pred: Tensor, n: int, h: int, w: int) -> Tensor:
    if pred.ndim != 4 or pred.shape[0] != n or tuple(pred.shape[-2:]) != (h, w):
        raise ValueError(f"sliding_window_inference: fn must map ({n},C,{h},{w}) to ({n},K,{h},{w}), "
                         f"got {tuple(pred.shape)}")
    return pred
