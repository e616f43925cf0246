"""Pixel error and the ISBI 2012 region scores (Rand, information) against hand-computed values, brute-force pair
counts and scikit-image."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error, variation_of_information

from nucseg.metrics.regions import entropy, pixel_error, rand_f, region_scores


def brute_force_rand(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(split, merge) by counting unordered pairs of distinct true-cell pixels (true > 0)."""
    idx = np.flatnonzero(true.ravel() > 0)
    t, p = true.ravel()[idx], pred.ravel()[idx]
    both = same_t = same_p = 0
    for a, b in itertools.combinations(range(idx.size), 2):
        st, sp = t[a] == t[b], p[a] == p[b]
        both += st and sp
        same_t += st
        same_p += sp
    return both / same_t, both / same_p


def test_pixel_error_hand_computed():
    pred = np.array([[1, 1, 0], [0, 0, 0]])
    true = np.array([[1, 0, 0], [0, 0, 1]])
    assert pixel_error(pred, true) == pytest.approx(2 / 6)
    assert pixel_error(true, true) == 0.0
    with pytest.raises(ValueError, match="pixel_error"):
        pixel_error(pred, true[:1])


def test_a_merge_of_two_cells_hand_computed():
    true = np.array([[1, 1], [2, 2]])
    merged = np.ones((2, 2), int)
    s = region_scores(true, merged)
    # pairs: same in both 2 (one per cell), same true 2, same pred 6 -> split 1, merge 1/3, F 2*2/(2+6)
    assert s["rand_split"] == pytest.approx(1.0) and s["rand_merge"] == pytest.approx(1 / 3)
    assert s["rand_f"] == pytest.approx(0.5)
    # H(true) = 1 bit, H(pred) = 0, I = 0: the merge loses one bit, info F 0
    assert s["vi_merge"] == pytest.approx(1.0) and s["vi_split"] == pytest.approx(0.0)
    assert s["info_f"] == pytest.approx(0.0)
    # the same pair the other way round is a split
    s2 = region_scores(merged, true)
    assert s2["rand_split"] == pytest.approx(1 / 3) and s2["rand_merge"] == pytest.approx(1.0)
    assert s2["vi_split"] == pytest.approx(1.0) and s2["vi_merge"] == pytest.approx(0.0)


def test_membrane_pixels_of_the_truth_are_not_scored():
    true = np.array([[1, 1, 0, 2, 2]])
    pred = np.array([[1, 1, 1, 2, 2]])  # the predicted cell covers the membrane pixel: no penalty
    assert region_scores(true, pred) == pytest.approx(
        {"rand_f": 1.0, "rand_split": 1.0, "rand_merge": 1.0, "info_f": 1.0, "vi_split": 0.0, "vi_merge": 0.0})
    # predicted background inside a true cell is one more region: a split of cell 1
    pred_bg = np.array([[1, 0, 0, 2, 2]])
    s = region_scores(true, pred_bg)
    assert s["rand_split"] == pytest.approx(0.5) and s["rand_merge"] == pytest.approx(1.0)


def test_three_by_four_example_against_pair_counts_and_entropies():
    true = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [3, 3, 0, 2]])
    pred = np.array([[1, 1, 1, 2], [1, 1, 2, 2], [1, 1, 2, 4]])
    s = region_scores(true, pred)
    split, merge = brute_force_rand(true, pred)
    assert s["rand_split"] == pytest.approx(split) and s["rand_merge"] == pytest.approx(merge)
    assert s["rand_f"] == pytest.approx(2 * split * merge / (split + merge))
    # by hand on the 9 cell pixels: true sizes 4, 3, 2; pred sizes 6 (label 1), 2 (label 2), 1 (label 4);
    # joint counts (1,1)=4, (3,1)=2, (2,2)=2, (2,4)=1
    h = lambda *c: -sum(x / 9 * math.log2(x / 9) for x in c)  # noqa: E731
    h_true, h_pred, h_joint = h(4, 3, 2), h(6, 2, 1), h(4, 2, 2, 1)
    assert s["vi_split"] == pytest.approx(h_joint - h_true)
    assert s["vi_merge"] == pytest.approx(h_joint - h_pred)
    assert s["info_f"] == pytest.approx(2 * (h_true + h_pred - h_joint) / (h_true + h_pred))
    assert entropy(true[true > 0]) == pytest.approx(h_true)


def test_agrees_with_scikit_image_on_random_labels():
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 6, (40, 30)), rng.integers(0, 5, (40, 30))
    s = region_scores(true, pred)
    assert s["rand_f"] == pytest.approx(1 - adapted_rand_error(true, pred, ignore_labels=(0,))[0])
    assert [s["vi_split"], s["vi_merge"]] == pytest.approx(
        list(variation_of_information(true, pred, ignore_labels=(0,))))
    assert rand_f(true, pred) == pytest.approx(s["rand_f"])


def test_identical_relabelled_segmentations_are_perfect_and_no_cells_score_one():
    true = np.array([[1, 1, 0, 2], [3, 3, 0, 2]])
    s = region_scores(true, np.where(true > 0, 10 - true, 7))  # same regions, other numbers
    assert s["rand_f"] == pytest.approx(1.0) and s["info_f"] == pytest.approx(1.0)
    assert s["vi_split"] == pytest.approx(0.0, abs=1e-12) and s["vi_merge"] == pytest.approx(0.0, abs=1e-12)
    assert region_scores(np.zeros((3, 3), int), np.ones((3, 3), int))["rand_f"] == 1.0
    with pytest.raises(ValueError, match="integer label map"):
        region_scores(np.zeros((3, 3)), np.zeros((3, 3), int))
