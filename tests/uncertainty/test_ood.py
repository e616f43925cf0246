"""The out-of-distribution score (nucseg.uncertainty.ood): the k-NN density of encoder features, its storage,
the feature tap that reads the features off the prediction's own passes, and the review reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch

from nucseg.uncertainty.ood import FeatureDensity, FeatureTap, encoder_features, pooled_features
from nucseg.uncertainty.review import needs_review, ood_threshold, review_reason


def clusters(rng: np.random.Generator, n: int, centres: list[float], dims: int = 40) -> np.ndarray:
    """Non-negative features (like pooled ReLU outputs) in clusters around the given levels."""
    out = [np.abs(c + 0.05 * rng.standard_normal((n, dims))) for c in centres]
    return np.concatenate(out)


def test_images_like_training_score_near_one_and_a_new_cluster_far_above():
    rng = np.random.default_rng(0)
    train = clusters(rng, 40, [0.2, 1.0])  # two imaging types
    density = FeatureDensity.fit(train, components=4, neighbours=5)
    seen = density.score(clusters(rng, 20, [0.2, 1.0]))
    between = density.score(clusters(rng, 20, [0.6]))  # a type between the two: far from both clusters
    assert 0.6 < np.median(seen) < 1.6
    assert between.min() > 3 * np.median(seen)
    # k-NN, not one Gaussian: the mean of the two clusters is where a Gaussian is densest
    assert between.min() > seen.max()


def test_the_training_median_is_one_when_each_image_is_left_out():
    rng = np.random.default_rng(1)
    train = clusters(rng, 30, [0.5])
    density = FeatureDensity.fit(train, components=3, neighbours=3)
    z = (np.log1p(train) - density.mean) / density.scale
    assert np.median(density._raw(z, leave_one_out=True) / density.reference) == pytest.approx(1.0)
    # without leaving itself out every training image would have a distance of zero to itself
    assert np.median(density.score(train)) < 1.0


def test_stored_density_scores_as_the_fitted_one_and_bad_input_is_named():
    rng = np.random.default_rng(2)
    density = FeatureDensity.fit(clusters(rng, 25, [0.3, 0.9], dims=12), components=5, neighbours=4)
    probe = clusters(rng, 6, [0.3, 2.0], dims=12)
    back = FeatureDensity.from_dict(density.to_dict())
    assert np.allclose(back.score(probe), density.score(probe), rtol=1e-4)
    assert all(isinstance(v, list | int | float) for v in density.to_dict().values())  # JSON / checkpoint-safe
    with pytest.raises(ValueError, match="12"):
        density.score(probe[:, :5])
    with pytest.raises(ValueError, match="at least 3"):
        FeatureDensity.fit(probe[:2])
    with pytest.raises(ValueError, match="ood.density"):
        FeatureDensity.from_dict({"mean": [0.0]})
    cut = {**density.to_dict(), "components": [row[:11] for row in density.to_dict()["components"]]}
    with pytest.raises(ValueError, match="inconsistent shapes"):  # a hand-edited / truncated checkpoint
        FeatureDensity.from_dict(cut)


def test_the_tap_reads_the_features_of_the_passes_it_sees():
    torch.manual_seed(0)
    net = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=[32, 16, 8]).eval()
    x = torch.rand(1, 3, 64, 96)
    with FeatureTap(net) as tap:
        assert tap.features() is None
        with torch.no_grad():
            net(x)
    direct = encoder_features(net, x)
    assert direct.shape == (1, 3 + 64 + 64 + 128)
    assert torch.allclose(tap.features(), direct, atol=1e-6)
    # two tiles of different size: the pixel-weighted mean of their channel means, as one image would give
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 128)
    with FeatureTap(net) as tap, torch.no_grad():
        net(a)
        net(b)
    stages_a, stages_b = net.encoder(a), net.encoder(b)
    expected = torch.cat([(sa.sum((0, 2, 3)) + sb.sum((0, 2, 3))) / (sa[0, 0].numel() + sb[0, 0].numel())
                          for sa, sb in zip(stages_a, stages_b, strict=True)])[None]
    assert torch.allclose(tap.features(), expected, atol=1e-5)
    assert not net.encoder._forward_hooks  # removed on exit
    assert pooled_features([torch.ones(2, 3, 4, 4)]).tolist() == [[1.0] * 3] * 2


def test_the_review_rule_flags_low_certainty_unlike_images_and_warnings():
    assert needs_review(0.79, 0.8, False) == (True, "low certainty")
    assert needs_review(0.8, 0.8, False) == (False, "")  # at the threshold is not below it
    assert needs_review(0.9, 0.8, True) == (True, "unlike the training data")
    assert needs_review(0.1, 0.8, True) == (True, "low certainty; unlike the training data")
    assert needs_review(0.99, 0.8, False, "constant image") == (True, "constant image")
    # nothing to compare the certainty with: only the other two reasons flag
    assert needs_review(0.1, None, False) == (False, "") == needs_review(None, 0.8, False)
    assert needs_review(0.1, float("nan"), False) == (False, "")


def test_threshold_is_the_validation_quantile_and_reasons_are_words():
    assert ood_threshold([1.0, 2.0, 3.0, 4.0, 5.0], 0.5) == 3.0
    assert ood_threshold([1.0, 2.0], 1.0) == 2.0
    with pytest.raises(ValueError, match="quantile"):
        ood_threshold([1.0], 0.0)
    assert review_reason(False, False) == ""
    assert review_reason(True, False) == "low certainty"
    assert review_reason(True, True) == "low certainty; unlike the training data"
    assert review_reason(False, False, "constant image") == "constant image"
    assert not math.isnan(ood_threshold(np.array([0.5, 0.7]), 0.95))
