"""Segmentation losses as `forward(logits, target)` modules (smp / MONAI shape).

Targets are (B, K, H, W) floats in {0, 1}; every channel is an independent binary problem ("multilabel"), which
covers the foreground-only model (K=1) and the instance head (foreground + contour channels).
"""

from __future__ import annotations

from segmentation_models_pytorch.losses import DiceLoss as _SmpDice
from segmentation_models_pytorch.losses import FocalLoss as _SmpFocal
from segmentation_models_pytorch.losses import LovaszLoss as _SmpLovasz
from torch import Tensor, nn
from torch.nn import functional as F


class DiceLoss(nn.Module):
    """1 - soft Dice per channel over the whole batch, averaged over channels (smp's multilabel Dice)."""

    def __init__(self, smooth: float = 0.0, eps: float = 1e-7):
        super().__init__()
        self.dice = _SmpDice(mode="multilabel", from_logits=True, smooth=smooth, eps=eps)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.dice(logits, target)


class BCEDiceLoss(nn.Module):
    """bce_weight * BCE-with-logits + dice_weight * soft Dice: BCE gives stable per-pixel gradients, Dice
    counters the foreground/background imbalance. The default of the nucseg configs."""

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, pos_weight: float | None = None):
        super().__init__()
        self.bce_weight, self.dice_weight, self.pos_weight = bce_weight, dice_weight, pos_weight
        self.dice = DiceLoss()

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        pw = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pw)
        return self.bce_weight * bce + self.dice_weight * self.dice(logits, target)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), mean over pixels; down-weights easy background pixels."""

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0):
        super().__init__()
        self.focal = _SmpFocal(mode="multilabel", alpha=alpha, gamma=gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.focal(logits, target)


class LovaszLoss(nn.Module):
    """Lovasz hinge (Berman et al. 2018), a convex surrogate of the IoU, per image."""

    def __init__(self, per_image: bool = True):
        super().__init__()
        self.lovasz = _SmpLovasz(mode="multilabel", per_image=per_image)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.lovasz(logits, target)
