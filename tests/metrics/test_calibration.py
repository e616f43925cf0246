"""Pixel calibration: ECE and reliability bins against hand-computed cases and torchmetrics."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error

from nucseg.metrics.calibration import CalibrationError, expected_calibration_error, reliability_bins
from nucseg.viz.plots import reliability_diagram


def test_ece_hand_built_case():
    # 10 bins: {0.15, 0.15} -> bin 1, mean 0.15, 1 of 2 positive: |0.15 - 0.5| * 2/5 = 0.14
    #          {0.85, 0.85} -> bin 8, both positive:            |0.85 - 1.0| * 2/5 = 0.06
    #          {0.65}       -> bin 6, negative:                 |0.65 - 0.0| * 1/5 = 0.13
    probs = torch.tensor([0.15, 0.15, 0.85, 0.85, 0.65])
    target = torch.tensor([0, 1, 1, 1, 0])
    assert expected_calibration_error(probs, target, n_bins=10).item() == pytest.approx(0.33, abs=1e-6)
    bins = reliability_bins(probs, target, n_bins=10)
    assert bins["count"].tolist() == [0, 2, 0, 0, 0, 0, 1, 0, 2, 0]
    assert bins["confidence"][1].item() == pytest.approx(0.15)
    assert bins["frequency"][1].item() == pytest.approx(0.5)
    assert bins["frequency"][8].item() == pytest.approx(1.0)
    assert math.isnan(bins["confidence"][0].item())  # empty bin


def test_calibrated_predictions_have_zero_ece_and_shapes_may_be_images():
    probs = torch.full((2, 4, 4), 0.25)
    target = torch.zeros(2, 4, 4)
    target[:, 0] = 1  # a quarter of the pixels are foreground
    assert expected_calibration_error(probs, target).item() == pytest.approx(0.0, abs=1e-7)


def test_probability_one_falls_in_the_last_bin():
    bins = reliability_bins(torch.tensor([1.0, 0.0]), torch.tensor([1, 0]), n_bins=4)
    assert bins["count"].tolist() == [1, 0, 0, 1]
    assert expected_calibration_error(torch.tensor([1.0, 0.0]), torch.tensor([1, 0]), 4).item() == 0.0


def test_accumulates_over_images_and_matches_torchmetrics():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 32, 32, generator=g) * 0.999
    target = (torch.rand(3, 32, 32, generator=g) < probs**2).long()
    metric = CalibrationError(n_bins=15)
    for p, t in zip(probs, target, strict=True):
        metric.update(p, t)
    expected = binary_calibration_error(probs.flatten(), target.flatten(), n_bins=15, norm="l1")
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-5)
    assert metric.compute().item() > 0.05  # miscalibrated by construction (frequency = p^2)
    assert metric.count.sum().item() == probs.numel()


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="differ"):
        expected_calibration_error(torch.rand(4), torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(torch.tensor([1.5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="ece_bins"):
        CalibrationError(n_bins=0)
    assert math.isnan(CalibrationError().compute().item())  # nothing seen yet


def test_reliability_diagram_renders_png():
    from nucseg.viz.plots import figure_png

    probs = torch.tensor([0.15, 0.15, 0.85, 0.85, 0.65])
    target = torch.tensor([0, 1, 1, 1, 0])
    png = figure_png(reliability_diagram(reliability_bins(probs, target, 10), 0.33))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


# --------------------------------------------------------------------------- temperature scaling
def test_fit_temperature_recovers_the_temperature_that_made_the_labels():
    from nucseg.metrics.calibration import apply_temperature, expected_calibration_error, fit_temperature

    gen = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(200_000, generator=gen)
    probs = torch.sigmoid(logits)  # over-confident: the labels follow logits / 2.5
    target = (torch.rand(logits.shape, generator=gen) < torch.sigmoid(logits / 2.5)).float()
    t = fit_temperature(probs, target)
    assert t == pytest.approx(2.5, rel=0.05)
    before = float(expected_calibration_error(probs, target))
    after = float(expected_calibration_error(apply_temperature(probs, t), target))
    assert after < before / 4
    # already calibrated: T stays near 1
    calibrated = torch.sigmoid(logits / 2.5)
    assert fit_temperature(calibrated, target) == pytest.approx(1.0, abs=0.05)


def test_apply_temperature_keeps_one_half_and_the_order():
    from nucseg.metrics.calibration import apply_temperature, fit_temperature

    p = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99])
    soft = apply_temperature(p, 3.0)
    assert soft[2] == pytest.approx(0.5) and torch.all(soft[1:] > soft[:-1])
    assert soft[0] > p[0] and soft[-1] < p[-1]
    assert apply_temperature(p, 1.0) is p
    with pytest.raises(ValueError, match="differ"):
        fit_temperature(p, p[:2])


def test_image_temperature_picks_the_unlike_training_temperature_only_for_such_images():
    from nucseg.metrics.calibration import image_temperature

    cal = {"temperature": 1.2, "temperature_unlike": 2.5}
    assert image_temperature(cal, False) == 1.2 and image_temperature(cal, None) == 1.2
    assert image_temperature(cal, True) == 2.5
    assert image_temperature({"temperature": 1.4}, True) == 1.4  # an older checkpoint: one temperature
    assert image_temperature(None, True) == 1.0 and image_temperature({}, False) == 1.0
