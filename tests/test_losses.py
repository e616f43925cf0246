"""Losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from nucseg.losses import BCEDiceLoss, DiceLoss, FocalLoss, LovaszLoss

# logits chosen so sigmoid gives exact-ish probabilities: sigmoid(0)=0.5, sigmoid(ln 3)=0.75, sigmoid(-ln 3)=0.25
L3 = math.log(3.0)


def _case():
    logits = torch.tensor([[[[0.0, L3], [-L3, L3]]]])  # p = [[.5, .75], [.25, .75]]
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    return logits, target


def test_dice_loss_hand_computed():
    logits, target = _case()
    # intersection = .5 + .75 = 1.25; sum p = 2.25; sum t = 2 -> dice = 2.5 / 4.25
    expected = 1 - 2.5 / 4.25
    assert DiceLoss()(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_bce_dice_loss_hand_computed():
    logits, target = _case()
    bce = -(math.log(0.5) + math.log(0.75) + math.log(0.75) + math.log(0.25)) / 4
    dice = 1 - 2.5 / 4.25
    assert BCEDiceLoss()(logits, target).item() == pytest.approx(bce + dice, abs=1e-6)
    assert BCEDiceLoss(bce_weight=2.0, dice_weight=0.0)(logits, target).item() == pytest.approx(2 * bce, abs=1e-6)


def test_focal_loss_hand_computed():
    logits, target = _case()
    alpha, gamma = 0.25, 2.0
    terms = []
    for p, t in [(0.5, 1), (0.75, 1), (0.25, 0), (0.75, 0)]:
        pt = p if t else 1 - p
        a = alpha if t else 1 - alpha
        terms.append(-a * (1 - pt) ** gamma * math.log(pt))
    assert FocalLoss(alpha, gamma)(logits, target).item() == pytest.approx(sum(terms) / 4, abs=1e-5)


def test_lovasz_is_zero_for_perfect_margin_and_positive_otherwise():
    target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    perfect = (target * 2 - 1) * 5  # every pixel on the right side with margin > 1
    assert LovaszLoss()(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert LovaszLoss()(wrong, target).item() > 1.0


def test_losses_decrease_towards_the_target():
    _, target = _case()
    for loss in (DiceLoss(), BCEDiceLoss(), FocalLoss(), LovaszLoss()):
        good = loss((target * 2 - 1) * 4, target).item()
        bad = loss(-(target * 2 - 1) * 4, target).item()
        assert good < bad, type(loss).__name__
