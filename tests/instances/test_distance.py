"""The inner-distance representation: targets, the distance-seeded watershed and its tuning."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.draw import disk

from nucseg.data.dataset import resolve_targets
from nucseg.instances.targets import inner_distance, instance_distance_targets, instance_targets
from nucseg.instances.tuning import tune_postprocess
from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.dsb_score import dsb_score_image


def _two_touching_disks(size: int = 64) -> np.ndarray:
    lab = np.zeros((size, size), np.int32)
    lab[disk((32, 22), 12, shape=lab.shape)] = 1
    lab[disk((32, 44), 12, shape=lab.shape)] = 2  # overlaps disk 1: the two nuclei touch along a line
    return lab


def test_inner_distance_is_one_at_each_centre_and_matches_a_per_nucleus_transform() -> None:
    lab = _two_touching_disks()
    d = inner_distance(lab)
    assert d[lab == 0].max() == 0
    for i in (1, 2):
        ref = ndi.distance_transform_edt(lab == i)
        np.testing.assert_allclose(d[lab == i], (ref / ref.max())[lab == i], rtol=1e-6)
        assert d[lab == i].max() == pytest.approx(1.0)
    # the shared edge is low for both nuclei: a ridge for the watershed between them
    assert d[32, 33] < 0.2 and d[32, 22] == pytest.approx(1.0)


def test_inner_distance_does_not_treat_the_image_border_as_an_edge() -> None:
    lab = np.zeros((20, 20), np.int32)
    lab[:, :6] = 1  # a nucleus cut by the crop's left border
    d = inner_distance(lab)
    # column 0 is as deep as the nucleus gets: its only edge is column 6
    assert d[10, 0] == pytest.approx(1.0)
    assert d[10, 5] == pytest.approx(1 / 6)


def test_distance_targets_append_the_distance_to_the_instance_channels() -> None:
    lab = _two_touching_disks()
    t = instance_distance_targets(lab)
    assert t.shape == (4, 64, 64) and t.dtype == np.float32
    np.testing.assert_array_equal(t[:3], instance_targets(lab))
    np.testing.assert_array_equal(t[3], inner_distance(lab))
    assert resolve_targets("instance_distance") is instance_distance_targets
    with pytest.raises(ValueError, match="instance_distance"):
        resolve_targets("distance")


def test_distance_seeds_split_touching_nuclei_the_border_channels_miss() -> None:
    lab = _two_touching_disks()
    t = instance_distance_targets(lab)
    probs = t.copy()
    probs[1:3] = 0.0  # a model whose contour channels missed the touching border entirely
    # the contour-seeded watershed sees one blob, the distance-seeded one two nuclei
    assert probs_to_instances(probs[:3]).max() == 1
    split = probs_to_instances(probs, distance_threshold=0.5)
    assert split.max() == 2
    assert dsb_score_image(lab, split) > 0.8
    # threshold 0 keeps the contour-only seeds: one blob, flooded along 1 - distance
    assert probs_to_instances(probs, distance_threshold=0.0).max() == 1


def test_tuning_searches_the_distance_threshold_only_for_distance_models() -> None:
    lab = _two_touching_disks()
    probs = instance_distance_targets(lab)
    probs[1:3] = 0.0
    base = {"method": "auto", "threshold": 0.5, "contour_threshold": 0.5, "seed_min_size": 10, "min_size": 10,
            "distance_threshold": 0.0}
    result = tune_postprocess([probs], [lab], base)
    assert result.settings["distance_threshold"] > 0 and result.score > result.base_score
    three = tune_postprocess([probs[:3]], [lab], base)
    assert not any(t["distance_threshold"] for t in three.trials)
