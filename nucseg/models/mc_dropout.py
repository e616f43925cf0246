"""Monte-Carlo dropout for any smp model: spatial dropout applied by forward hooks on the decoder blocks
(and optionally the encoder stages), active whether the model is in train or eval mode, so that repeated
stochastic passes at inference sample from an approximate posterior (Gal & Ghahramani 2016).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F


class MCDropout2d(nn.Module):
    """Channel dropout that ignores `eval()`; switch it off with `enabled = False` for a deterministic pass."""

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"model.mc_dropout.rate: expected 0 <= rate < 1, got {rate}")
        self.rate = rate
        self.enabled = True

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled or self.rate == 0.0:
            return x
        return F.dropout2d(x, self.rate, training=True)


def _decoder_blocks(net: nn.Module) -> list[nn.Module]:
    dec: Any = net.decoder
    if hasattr(dec, "blocks"):
        blocks = dec.blocks
        return list(blocks.values()) if isinstance(blocks, nn.ModuleDict) else list(blocks)
    return [dec]


def _encoder_stages(net: nn.Module) -> list[nn.Module]:
    enc: Any = net.encoder
    names = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(enc, n)]
    if names:
        return [getattr(enc, n) for n in names]
    return [enc]


def add_mc_dropout(net: nn.Module, rate: float = 0.2, where: str = "decoder") -> nn.Module:
    """Attach MCDropout2d after each decoder block ('decoder'), encoder stage ('encoder') or both ('both')."""
    if where not in ("decoder", "encoder", "both"):
        raise ValueError(f"model.mc_dropout.where: expected decoder, encoder or both, got {where!r}")
    targets = []
    if where in ("decoder", "both"):
        targets += [("decoder", m) for m in _decoder_blocks(net)]
    if where in ("encoder", "both"):
        targets += [("encoder", m) for m in _encoder_stages(net)]
    drops = nn.ModuleList()
    for i, (_, module) in enumerate(targets):
        drop = MCDropout2d(rate)
        drops.append(drop)
        module.register_forward_hook(lambda _m, _inp, out, d=drop: d(out))
        setattr(module, "_mc_dropout_index", i)  # noqa: B010 (read back by position)
    net.mc_dropouts = drops  # registered as a submodule: state_dict-free (no parameters)
    net.mc_dropout_where = where  # type: ignore[assignment]
    return net


def set_mc_dropout(net: nn.Module, enabled: bool) -> None:
    """Turn all MC dropout layers of `net` on or off (e.g. off for the deterministic pass)."""
    for m in net.modules():
        if isinstance(m, MCDropout2d):
            m.enabled = enabled


def has_mc_dropout(net: nn.Module) -> bool:
    return any(isinstance(m, MCDropout2d) for m in net.modules())


@contextlib.contextmanager
def mc_dropout_enabled(net: nn.Module, enabled: bool) -> Iterator[nn.Module]:
    """Run the block with every MC dropout layer of `net` on or off, restoring each layer's state after."""
    states = {m: m.enabled for m in net.modules() if isinstance(m, MCDropout2d)}
    set_mc_dropout(net, enabled)
    try:
        yield net
    finally:
        for m, state in states.items():
            m.enabled = state
