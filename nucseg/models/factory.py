"""Build segmentation networks from segmentation-models-pytorch by name, with optional Monte-Carlo dropout.

`encoder_weights` defaults to None (random init). `imagenet` loads ImageNet weights: offline from an installed
package for the encoders in `nucseg.models.pretrained.OFFLINE_WEIGHTS` (the `pretrained` extra), from smp's /
timm's hub for any other encoder (needs internet).
"""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from nucseg.models.mc_dropout import add_mc_dropout
from nucseg.models.pretrained import has_offline_weights, load_offline_weights

ARCHS = {"unet": "Unet", "unetpp": "UnetPlusPlus", "unetplusplus": "UnetPlusPlus", "fpn": "FPN",
         "deeplabv3plus": "DeepLabV3Plus", "manet": "MAnet", "linknet": "Linknet"}


def build_model(
    arch: str = "unet",
    encoder_name: str = "resnet34",
    encoder_depth: int = 5,
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
    decoder_channels: list[int] | None = None,
    mc_dropout: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Return an smp model; `mc_dropout={'rate': 0.2, 'where': 'decoder'}` adds always-on spatial dropout."""
    key = arch.lower().replace("-", "").replace("_", "").replace("+", "p")
    cls = getattr(smp, ARCHS.get(key, arch), None)
    # a network class only: `arch` may come from a checkpoint file, and smp also exports functions
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model.arch: unknown architecture {arch!r}; expected one of {sorted(ARCHS)}")
    if decoder_channels is None:
        decoder_channels = [256, 128, 64, 32, 16][:encoder_depth]
    if len(decoder_channels) != encoder_depth:
        raise ValueError(f"model.decoder_channels: expected {encoder_depth} entries (model.encoder_depth), "
                         f"got {len(decoder_channels)}")
    extra = {"decoder_channels": list(decoder_channels)} if cls in (smp.Unet, smp.UnetPlusPlus, smp.MAnet) else {}
    offline = has_offline_weights(encoder_name, encoder_weights)
    try:
        net = cls(encoder_name=encoder_name, encoder_depth=encoder_depth,
                  encoder_weights=None if offline else encoder_weights,
                  in_channels=in_channels, classes=classes, **extra, **kwargs)
    except KeyError as exc:
        raise ValueError(f"model.encoder_name: unknown encoder {encoder_name!r} ({exc})") from exc
    if offline:
        encoder = net.encoder
        assert isinstance(encoder, nn.Module)  # every smp model has one
        load_offline_weights(encoder, encoder_name)
    if mc_dropout:
        add_mc_dropout(net, **mc_dropout)
    return net
