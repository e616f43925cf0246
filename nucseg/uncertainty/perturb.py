"""Generic image perturbations, for a calibration that survives a shift.

A temperature fitted on validation images alone learns how confident the model should be on images like its
training data; on images from a new experiment it is over-confident again (Ovadia et al., NeurIPS 2019). Fitting
the temperature on the validation images and on copies of them perturbed at random strengths (Tomani et al.,
CVPR 2021, "Post-hoc uncertainty calibration for domain drift scenarios") makes it fit predictions about
unfamiliar images too. The families are generic corruptions chosen without looking at any test shift: noise,
blur, lower contrast, gamma, a colour tint and inversion (light-on-dark vs dark-on-light). The operations are
torchvision's.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

__all__ = ["PERTURBATIONS", "perturb", "perturbed_copy"]

PERTURBATIONS = ("noise", "blur", "contrast", "gamma", "tint", "invert")
STRENGTHS = (0.25, 1.0)  # uniform range of a copy's strength


def _uniform(generator: torch.Generator | None, low: float = 0.0, high: float = 1.0, n: int = 1) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def perturb(image: Tensor, kind: str, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """(B, 3, H, W) float in [0, 1] -> the same shape, perturbed by `kind` at `strength` in [0, 1] (0 leaves
    the image as it is, except for `invert`, which has no strength), clipped to [0, 1]."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"perturb: kind {kind!r} is not one of {', '.join(PERTURBATIONS)}")
    s = float(strength)
    if kind == "noise":
        out = image + 0.15 * s * torch.randn(image.shape, generator=generator).to(image)
    elif kind == "blur":
        sigma = 0.1 + 2.9 * s
        out = TF.gaussian_blur(image, kernel_size=2 * math.ceil(3 * sigma) + 1, sigma=sigma)
    elif kind == "contrast":
        out = TF.adjust_contrast(image, 1.0 - 0.7 * s)
    elif kind == "gamma":
        sign = 1.0 if float(_uniform(generator)) < 0.5 else -1.0
        out = TF.adjust_gamma(image, math.exp(sign * s))  # gamma e^-1 .. e^1
    elif kind == "tint":
        gains = 1.0 + 0.6 * s * (2 * _uniform(generator, n=3) - 1)
        out = image * gains.view(1, 3, 1, 1).to(image)
    else:
        out = TF.invert(image)
    return out.clamp(0.0, 1.0)


def perturbed_copy(image: Tensor, index: int, generator: torch.Generator) -> tuple[Tensor, str, float]:
    """The `index`-th validation image's perturbed copy: the families in turn, a random strength in
    `STRENGTHS`; returns (image, kind, strength)."""
    kind = PERTURBATIONS[index % len(PERTURBATIONS)]
    strength = float(_uniform(generator, *STRENGTHS))
    return perturb(image, kind, strength, generator), kind, strength
