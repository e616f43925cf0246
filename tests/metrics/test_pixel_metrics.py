"""Dice / IoU functions and their torchmetrics classes against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from nucseg.metrics.pixel import MeanDice, MeanIoU, dice_score, iou_score


def test_dice_and_iou_hand_computed():
    pred = torch.tensor([[1, 1, 0], [0, 1, 0]])
    true = torch.tensor([[1, 0, 0], [0, 1, 1]])
    # |P|=3, |T|=3, |P∩T|=2, |P∪T|=4
    assert dice_score(pred, true).item() == pytest.approx(4 / 6)
    assert iou_score(pred, true).item() == pytest.approx(2 / 4)


def test_empty_masks_score_one_and_disjoint_zero():
    z = torch.zeros(4, 4)
    assert dice_score(z, z).item() == 1.0 and iou_score(z, z).item() == 1.0
    a = torch.zeros(4, 4)
    a[0, 0] = 1
    b = torch.zeros(4, 4)
    b[3, 3] = 1
    assert dice_score(a, b).item() == 0.0 and iou_score(a, z).item() == 0.0


def test_metric_classes_average_per_image_with_threshold():
    probs = torch.tensor([[[0.9, 0.6], [0.2, 0.4]], [[0.1, 0.1], [0.1, 0.1]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    dice, iou = MeanDice(threshold=0.5), MeanIoU(threshold=0.5)
    dice.update(probs, target)
    iou.update(probs, target)
    # image 1: pred {(0,0),(0,1)}, true {(0,0),(1,1)} -> dice 2/4, iou 1/3; image 2: both empty -> 1
    assert dice.compute().item() == pytest.approx((0.5 + 1.0) / 2)
    assert iou.compute().item() == pytest.approx((1 / 3 + 1.0) / 2)
    high = MeanDice(threshold=0.7)
    high.update(probs[:1], target[:1])
    assert high.compute().item() == pytest.approx(2 * 1 / (1 + 2))


def test_binned_auroc_hand_computed():
    from nucseg.metrics.pixel import BinnedAUROC

    m = BinnedAUROC(bins=200)
    # positive/negative pairs: 0.35>0.1 yes, 0.35>0.4 no, 0.8>0.1 yes, 0.8>0.4 yes -> 3/4
    m.update(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert m.compute().item() == pytest.approx(0.75)
    tie = BinnedAUROC(bins=200)
    tie.update(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]))  # a tie counts one half
    assert tie.compute().item() == pytest.approx(0.5)
    split = BinnedAUROC(bins=10)  # accumulates over updates like one big update
    split.update(torch.tensor([0.1, 0.4]), torch.tensor([0.0, 0.0]))
    split.update(torch.tensor([0.35, 0.8]), torch.tensor([1.0, 1.0]))
    assert split.compute().item() == pytest.approx(0.75)
    assert torch.isnan(BinnedAUROC().compute())  # undefined without both classes
