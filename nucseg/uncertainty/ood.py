"""Is an image unlike the training data? A per-image out-of-distribution (OOD) score that does not depend on
dropout: the distance of the image's encoder features to those of the training images.

Features: the spatial mean of every encoder stage's channels (the input stage included: mean colour and
brightness), log1p-compressed, (B, D) with D = sum of the stage widths (515 for resnet18 at depth 4). MC
dropout cannot see an imaging type the model never met (it segments it confidently and wrongly); the
encoder's features can, since they summarise what the image looks like, not how sure the decoder is.

Density (`FeatureDensity`): the features are standardised, projected on their first `components` principal
axes, and an image's score is the root of (mean squared distance to its `neighbours` nearest training
images in that subspace + squared distance from the subspace), divided by the median of the same quantity
over the training images themselves (each left out of its own neighbours). So a score near 1 is typical of
training, and an image of a type absent from training scores far above. k nearest neighbours rather than one
Gaussian: the training data are several imaging types, i.e. several clusters. Stored in the checkpoint as
plain lists (tens of kB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nucseg.models.mc_dropout import mc_dropout_enabled
from nucseg.models.padding import pad_to_multiple

__all__ = ["OOD_DEFAULTS", "FeatureDensity", "FeatureTap", "check_ood_settings", "encoder_features", "pooled_features"]

OOD_DEFAULTS = {"components": 8, "neighbours": 5, "max_train_images": 128, "quantile": 0.95}


def check_ood_settings(ood: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """`callbacks.uncertainty.ood` over its defaults, checked (ValueError naming the key); None: no OOD score."""
    if not ood:
        return None
    cfg = {**OOD_DEFAULTS, **dict(ood)}
    unknown = set(cfg) - set(OOD_DEFAULTS)
    if unknown:
        raise ValueError(f"callbacks.uncertainty.ood: unknown key(s) {sorted(unknown)}; expected "
                         f"{', '.join(OOD_DEFAULTS)}")
    for key, low in (("components", 1), ("neighbours", 1), ("max_train_images", 3)):
        if key == "max_train_images" and cfg[key] is None:  # every training image
            continue
        if not isinstance(cfg[key], int) or cfg[key] < low:
            raise ValueError(f"callbacks.uncertainty.ood.{key}: expected an integer >= {low}, got {cfg[key]!r}")
    if not 0.0 < float(cfg["quantile"]) <= 1.0:
        raise ValueError(f"callbacks.uncertainty.ood.quantile: expected a fraction in (0, 1], got {cfg['quantile']!r}")
    return cfg



def pooled_features(stages: Sequence[Tensor]) -> Tensor:
    """Encoder stage outputs [(B, C_s, H_s, W_s), ...] -> (B, sum C_s) spatial channel means, float32."""
    return torch.cat([s.float().mean((-2, -1)) for s in stages], dim=1)


def _encoder(net: nn.Module) -> nn.Module:
    enc = getattr(net, "encoder", None)
    if not isinstance(enc, nn.Module):
        raise ValueError("ood: the model has no `encoder` (an smp model is needed for encoder features)")
    return enc


@torch.no_grad()
def encoder_features(net: nn.Module, x: Tensor, pad_multiple: int = 32) -> Tensor:
    """(B, 3, H, W) images in [0, 1] -> (B, D) pooled encoder features, deterministic (eval mode, MC dropout
    off), the image reflect-padded to the encoder's stride as in prediction."""
    padded, _ = pad_to_multiple(x, pad_multiple)
    enc = _encoder(net)
    was_training = net.training
    net.eval()
    try:
        with mc_dropout_enabled(net, False):
            return pooled_features(enc(padded)).cpu()
    finally:
        net.train(was_training)


class FeatureTap:
    """Collects the pooled encoder features of whatever passes run inside `with tap:` (a forward hook on the
    encoder): the features come with the prediction's own passes, at no extra network cost. Tiles of a
    sliding window are weighted by their pixel counts, so `features()` is the image's mean over its tiles."""

    def __init__(self, net: nn.Module):
        self.encoder = _encoder(net)
        self._sums: list[Tensor] | None = None
        self._counts: list[float] = []
        self._handle: Any = None

    def _hook(self, _module: nn.Module, _inputs: Any, outputs: Any) -> None:
        stages = list(outputs)
        sums = [s.detach().float().sum((0, -2, -1)).cpu() for s in stages]
        counts = [float(s.shape[0] * s.shape[-2] * s.shape[-1]) for s in stages]
        if self._sums is None:
            self._sums, self._counts = sums, counts
        else:
            self._sums = [a + b for a, b in zip(self._sums, sums, strict=True)]
            self._counts = [a + b for a, b in zip(self._counts, counts, strict=True)]

    def __enter__(self) -> FeatureTap:
        self._sums, self._counts = None, []
        self._handle = self.encoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def features(self) -> Tensor | None:
        """(1, D) mean features of the passes seen; None when the encoder did not run."""
        if self._sums is None:
            return None
        return torch.cat([s / c for s, c in zip(self._sums, self._counts, strict=True)])[None]


def _transform(features: Tensor | np.ndarray) -> np.ndarray:
    a = features.detach().cpu().double().numpy() if isinstance(features, Tensor) else np.asarray(features, float)
    if a.ndim != 2:
        raise ValueError(f"ood: expected (N, D) features, got shape {a.shape}")
    return np.log1p(np.clip(a, 0.0, None))


@dataclass
class FeatureDensity:
    """k-nearest-neighbour density of training features in a principal subspace (see the module doc).

    mean, scale: (D,) standardisation; components: (k, D) principal axes; train: (N, k) projected training
    features; reference: the training median of the raw distance (scores are divided by it)."""

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray
    train: np.ndarray
    neighbours: int
    reference: float

    @classmethod
    def fit(cls, features: Tensor | np.ndarray, components: int = 8, neighbours: int = 5) -> FeatureDensity:
        """Fit on (N, D) training features (N >= 3)."""
        x = _transform(features)
        if x.shape[0] < 3:
            raise ValueError(f"ood: at least 3 training images are needed to fit the density, got {x.shape[0]}")
        mean = x.mean(0)
        scale = np.maximum(x.std(0), 1e-3 * max(float(x.std(0).max()), 1e-12))  # constant features: no blow-up
        z = (x - mean) / scale
        k = int(max(1, min(components, z.shape[0] - 1, z.shape[1])))
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        density = cls(mean=mean, scale=scale, components=vt[:k], train=z @ vt[:k].T,
                      neighbours=int(max(1, min(neighbours, z.shape[0] - 1))), reference=1.0)
        raw = density._raw(z, leave_one_out=True)
        density.reference = float(max(np.median(raw), 1e-12))
        return density

    def _raw(self, z: np.ndarray, leave_one_out: bool = False) -> np.ndarray:
        proj = z @ self.components.T  # (M, k)
        residual = np.sum(z * z, 1) - np.sum(proj * proj, 1)
        d2 = ((proj[:, None, :] - self.train[None, :, :]) ** 2).sum(-1)  # (M, N)
        if leave_one_out:
            np.fill_diagonal(d2, np.inf)
        k = min(self.neighbours, d2.shape[1] - (1 if leave_one_out else 0))
        near = np.sort(d2, axis=1)[:, :k].mean(1)
        return np.sqrt(near + np.clip(residual, 0.0, None))

    def score(self, features: Tensor | np.ndarray) -> np.ndarray:
        """(M, D) features -> (M,) OOD scores (about 1 for images like the training ones, higher = less alike)."""
        x = _transform(features)
        if x.shape[1] != self.mean.size:
            raise ValueError(f"ood: features have {x.shape[1]} dimensions, the density was fitted on {self.mean.size}")
        return self._raw((x - self.mean) / self.scale) / self.reference

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (float32 precision): checkpoint- and JSON-safe."""
        def f32(a: np.ndarray) -> list:
            return a.astype(np.float32).tolist()

        return {"mean": f32(self.mean), "scale": f32(self.scale), "components": f32(self.components),
                "train": f32(self.train), "neighbours": self.neighbours, "reference": self.reference}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureDensity:
        try:
            density = cls(mean=np.asarray(d["mean"], float), scale=np.asarray(d["scale"], float),
                          components=np.atleast_2d(np.asarray(d["components"], float)),
                          train=np.atleast_2d(np.asarray(d["train"], float)), neighbours=int(d["neighbours"]),
                          reference=float(d["reference"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"ood.density: expected mean, scale, components, train, neighbours and reference "
                             f"({exc})") from exc
        dim, k = density.mean.size, density.components.shape[0]
        if density.scale.size != dim or density.components.shape[1] != dim or density.train.shape[1] != k:
            raise ValueError(f"ood.density: inconsistent shapes (mean {dim}, scale {density.scale.size}, components "
                             f"{density.components.shape}, train {density.train.shape})")
        return density
