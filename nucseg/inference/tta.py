"""Test-time augmentation with exact inverses (flips and 90-degree rotations of the dihedral group D4).

Used for prediction-time averaging and, by `nucseg.uncertainty`, as a sampling method whose spread is an
uncertainty estimate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# (name, forward, inverse) on (..., H, W) tensors
TTA_OPS: list[tuple[str, Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = [
    ("identity", lambda x: x, lambda y: y),
    ("hflip", lambda x: x.flip(-1), lambda y: y.flip(-1)),
    ("vflip", lambda x: x.flip(-2), lambda y: y.flip(-2)),
    ("rot90", lambda x: x.rot90(1, (-2, -1)), lambda y: y.rot90(-1, (-2, -1))),
    ("rot180", lambda x: x.rot90(2, (-2, -1)), lambda y: y.rot90(-2, (-2, -1))),
    ("rot270", lambda x: x.rot90(3, (-2, -1)), lambda y: y.rot90(-3, (-2, -1))),
    ("transpose", lambda x: x.transpose(-2, -1), lambda y: y.transpose(-2, -1)),
    ("antitranspose", lambda x: x.rot90(1, (-2, -1)).flip(-1), lambda y: y.flip(-1).rot90(-1, (-2, -1))),
]


def get_ops(names: list[str] | str | None = "all") -> list:
    """`'all'` (8 ops), `'flips'` (identity + h/v flips), or a list of op names."""
    if names in (None, "all"):
        return list(TTA_OPS)
    if names == "flips":
        names = ["identity", "hflip", "vflip"]
    known = {n: (n, f, i) for n, f, i in TTA_OPS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"tta ops: unknown {unknown}; expected some of {list(known)}")
    return [known[n] for n in names]


@torch.no_grad()
def tta_samples(fn: Callable[[Tensor], Tensor], x: Tensor, ops: list | str | None = "all") -> Tensor:
    """Apply `fn` to each augmented copy of `x` (B,C,H,W) and undo the augmentation: (N_ops, B, K, H, W)."""
    return torch.stack([inv(fn(fwd(x))) for _, fwd, inv in get_ops(ops)])


@torch.no_grad()
def tta_mean(fn: Callable[[Tensor], Tensor], x: Tensor, ops: list | str | None = "all") -> Tensor:
    """Mean of `fn` over the augmented copies (e.g. `fn` = sigmoid of the model's logits)."""
    return tta_samples(fn, x, ops).mean(0)
