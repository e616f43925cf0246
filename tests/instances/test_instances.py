"""Instance targets, watershed splitting and per-nucleus measurements, on hand-built and real DSB2018 labels."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from omegaconf import OmegaConf
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.segmentation import watershed

from nucseg.instances import instance_targets, measure_instances, probs_to_instances
from nucseg.instances.watershed import fill_object_holes, watershed_in_bands
from nucseg.metrics.dsb_score import instance_scores
from tests.helpers.paths import CONF_DIR

TOUCHING_ID = "4d14a3629b6af6de86d850be236b833a7bfcbf6d8665fd73c6dc339e06c14607"  # 98 nuclei, many touch


def reference_targets(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Per-pixel definition: look at the (2w+1)^2 window and count the distinct labels in it."""
    padded = np.pad(labels, width, mode="edge")
    win = sliding_window_view(padded, (2 * width + 1,) * 2).reshape(*labels.shape, -1)
    win = np.sort(win, axis=-1)
    distinct = 1 + (np.diff(win, axis=-1) != 0).sum(-1)
    distinct_nuclei = distinct - (win[..., 0] == 0)
    fg = labels > 0
    return np.stack([fg, fg & (distinct > 1), distinct_nuclei >= 2]).astype(np.float32)


def two_touching_discs() -> np.ndarray:
    labels = np.zeros((60, 80), np.int32)
    labels[disk((30, 28), 12)] = 1
    rr, cc = disk((30, 50), 12)
    free = labels[rr, cc] == 0
    labels[rr[free], cc[free]] = 2
    return labels


# ----------------------------------------------------------------------------------------------- targets
def test_targets_of_two_touching_squares():
    labels = np.zeros((12, 14), np.int32)
    labels[2:8, 2:7] = 1  # columns 2..6
    labels[2:8, 7:12] = 2  # columns 7..11: the squares touch between columns 6 and 7
    t = instance_targets(labels)
    assert t.shape == (3, 12, 14) and t.dtype == np.float32
    np.testing.assert_array_equal(t[0], labels > 0)
    contour = np.zeros((12, 14), bool)
    contour[2:4, 2:12] = contour[6:8, 2:12] = True  # 2 px from the background above / below
    contour[2:8, 2:4] = contour[2:8, 10:12] = True  # 2 px from the background left / right
    contour[2:8, 5:9] = True  # 2 px on each side of the shared edge
    np.testing.assert_array_equal(t[1], contour)
    touching = np.zeros((12, 14), bool)
    touching[0:10, 5:9] = True  # both squares within 2 px: columns 5..8, rows 2-2..7+2
    np.testing.assert_array_equal(t[2], touching)


@pytest.mark.parametrize(("gap", "marked_columns"), [(1, [8]), (2, [8, 9]), (3, [9]), (4, [])])
def test_touching_channel_marks_gaps_within_two_pixels_of_both_nuclei(gap, marked_columns):
    labels = np.zeros((10, 20), np.int32)
    labels[2:8, 2:8] = 1  # columns 2..7
    labels[2:8, 8 + gap:14 + gap] = 2
    t = instance_targets(labels)
    gap_columns = [c for c in range(8, 8 + gap) if t[2][:, c].any()]
    assert gap_columns == marked_columns
    assert bool(t[2].any()) is bool(marked_columns)


def test_targets_match_the_per_pixel_definition_on_random_labels():
    rng = np.random.default_rng(0)
    labels = ndi.zoom(rng.integers(0, 6, (12, 12)), 4, order=0).astype(np.int32)
    np.testing.assert_array_equal(instance_targets(labels), reference_targets(labels))


def test_targets_reject_bad_labels():
    with pytest.raises(ValueError, match="2-D"):
        instance_targets(np.zeros((2, 4, 4), np.int32))
    with pytest.raises(ValueError, match="integer"):
        instance_targets(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=">= 0"):
        instance_targets(-np.ones((4, 4), np.int32))


def test_targets_of_real_touching_nuclei(dsb_root):
    from nucseg.data.dsb2018 import DSB2018Source

    _, labels = DSB2018Source(dsb_root).load(TOUCHING_ID)
    t = instance_targets(labels)
    np.testing.assert_array_equal(t, reference_targets(labels))
    inside = t[2].astype(bool) & (labels > 0)
    assert inside.sum() > 1000  # this image has many touching nuclei
    assert not (inside & ~t[1].astype(bool)).any()  # touching borders inside nuclei lie on their contours
    # perfect targets: the watershed recovers the nuclei, connected components merge half of them
    ws, cc = probs_to_instances(t), probs_to_instances(t[:1])
    s_ws, s_cc = instance_scores(labels, ws), instance_scores(labels, cc)
    assert s_ws["n_true"] == 98 and abs(s_ws["n_pred"] - 98) <= 2
    assert s_ws["dsb_score"] > 0.9 and s_ws["ap50"] > 0.95
    assert s_cc["n_pred"] < 60 and s_cc["dsb_score"] < 0.4


# ----------------------------------------------------------------------------------------------- watershed
def test_watershed_splits_touching_discs_that_components_merge():
    labels = two_touching_discs()
    probs = instance_targets(labels)
    cc = probs_to_instances(probs, method="cc")
    ws = probs_to_instances(probs, method="watershed")
    assert cc.dtype == np.int32 and ws.dtype == np.int32
    assert sorted(np.unique(cc)) == [0, 1]
    assert sorted(np.unique(ws)) == [0, 1, 2]
    assert instance_scores(labels, ws)["ap50"] == 1.0
    assert instance_scores(labels, ws)["dsb_score"] >= 0.9
    # blurred, soft probabilities (as a network gives) split the same way
    soft = ndi.gaussian_filter(probs, (0, 1.5, 1.5))
    assert probs_to_instances(soft).max() == 2
    assert probs_to_instances(soft[:1]).max() == 1  # auto: one channel -> connected components


def test_watershed_keeps_nuclei_thinner_than_the_contour_band():
    labels = two_touching_discs()
    labels[5:9, 5:9] = 3  # 4 x 4: all contour, no seed
    ws = probs_to_instances(instance_targets(labels), min_size=10)
    assert ws.max() == 3 and (ws[5:9, 5:9] > 0).all()


def test_min_size_fill_holes_and_sequential_labels():
    labels = np.zeros((40, 40), np.int32)
    labels[2:12, 2:12] = 5
    labels[6:8, 6:8] = 0  # a hole inside one object
    labels[20:23, 20:23] = 9  # 9 px: below min_size=10
    labels[30:38, 30:38] = 7
    probs = (labels > 0)[None].astype(np.float32)
    out = probs_to_instances(probs, method="cc", min_size=10)
    assert sorted(np.unique(out)) == [0, 1, 2]
    assert (out[2:12, 2:12] == out[2, 2]).all()  # hole filled
    assert (out[20:23, 20:23] == 0).all()
    kept = probs_to_instances(probs, method="cc", min_size=10, fill_holes=False)
    assert (kept[6:8, 6:8] == 0).all()


def test_fill_holes_leaves_background_enclosed_by_several_nuclei():
    ring = np.zeros((20, 20), np.int32)
    ring[2:6, 2:18], ring[14:18, 2:18] = 1, 2
    ring[6:14, 2:6], ring[6:14, 14:18] = 3, 4
    np.testing.assert_array_equal(fill_object_holes(ring), ring)
    single = (ring > 0).astype(np.int32)
    assert (fill_object_holes(single)[6:14, 6:14] == 1).all()


def random_fields(seed: int, n: int = 60) -> list[np.ndarray]:
    """Smooth random (3, h, w) "probabilities": many touching blobs of every shape, with plateaus and ties."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = (int(v) for v in rng.integers(6, 70, 2))
        f = ndi.gaussian_filter(rng.random((3, h, w)), (0, 1.5, 1.5))
        f = (f - f.min()) / (f.max() - f.min() + 1e-9)
        out.append(np.round(f, int(rng.choice([2, 6]))).astype(np.float32))  # rounding makes exact ties
    return out


def test_fill_holes_equals_filling_the_union_then_giving_each_hole_its_single_owner():
    """The labelling shortcut fills exactly what ndi.binary_fill_holes would, holes with one owner only."""
    for f in random_fields(1):
        labels = ndi.label(f[0] > 0.5)[0].astype(np.int32)
        labels[f[1] > 0.7] = 0  # cut holes and gaps into the objects
        filled = fill_object_holes(labels)
        holes = ndi.binary_fill_holes(labels > 0) & (labels == 0)
        assert np.array_equal(filled[~holes], labels[~holes])  # only holes change
        for hole in range(1, ndi.label(holes)[1] + 1):
            region = ndi.label(holes)[0] == hole
            owners = set(np.unique(labels[ndi.binary_dilation(region, iterations=1) & (labels > 0)]))
            assert set(np.unique(filled[region])) == (owners if len(owners) == 1 else {0})


def test_watershed_in_bands_equals_one_watershed_of_the_whole_image():
    for f in random_fields(2):
        mask, border = f[0] > 0.4, f[1:].max(0)
        markers = ndi.label(mask & (border < 0.5))[0]
        expected = watershed(border, markers, mask=mask)
        for rows in (1, 5, 17, 1024):
            np.testing.assert_array_equal(watershed_in_bands(border, markers, mask, band_rows=rows), expected)
    assert watershed_in_bands(border, markers, np.zeros_like(mask)).max() == 0


def test_accepts_the_postprocess_config(caplog):
    cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "postprocess" / "default.yaml"))
    labels = two_touching_discs()
    with caplog.at_level(logging.WARNING):
        out = probs_to_instances(instance_targets(labels), **cfg)
    assert out.max() == 2 and not caplog.records
    with caplog.at_level(logging.WARNING):
        probs_to_instances(instance_targets(labels), **cfg, not_a_setting=1)
    assert "not_a_setting" in caplog.text


def test_empty_and_saturated_probabilities():
    empty = np.zeros((3, 16, 16), np.float32)
    assert probs_to_instances(empty).max() == 0 and probs_to_instances(empty, method="cc").max() == 0
    full = np.ones((3, 16, 16), np.float32)  # all border, no seed: one nucleus, not none
    assert sorted(np.unique(probs_to_instances(full))) == [1]


def test_bad_postprocess_settings_are_named():
    probs = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="postprocess.method=watershed needs contour channels"):
        probs_to_instances(probs, method="watershed")
    with pytest.raises(ValueError, match="postprocess.method"):
        probs_to_instances(probs, method="stardist")
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        probs_to_instances(np.zeros((1, 1, 8, 8)))


# ----------------------------------------------------------------------------------------------- measure
def test_measure_disc_and_rectangle():
    labels = np.zeros((50, 60), np.int32)
    labels[disk((20, 15), 8)] = 1
    labels[30:34, 40:46] = 2  # 4 x 6 rectangle
    gray = np.zeros((50, 60), np.float32)
    gray[labels == 1], gray[labels == 2] = 100.0, 40.0
    rows = measure_instances(labels, gray)
    assert [r["nucleus_id"] for r in rows] == [1, 2]
    disc, rect = rows
    assert disc["area"] == int((labels == 1).sum())
    assert abs(disc["area"] - math.pi * 64) < 0.05 * math.pi * 64
    assert (disc["centroid_y"], disc["centroid_x"]) == pytest.approx((20.0, 15.0))
    assert disc["equivalent_diameter"] == pytest.approx(math.sqrt(4 * disc["area"] / math.pi))
    assert disc["eccentricity"] < 0.1 and disc["mean_intensity"] == pytest.approx(100.0)
    assert rect["area"] == 24 and (rect["centroid_y"], rect["centroid_x"]) == pytest.approx((31.5, 42.5))
    assert rect["eccentricity"] > 0.5 and rect["mean_intensity"] == pytest.approx(40.0)
    json.dumps(rows)  # plain Python values, ready for a CSV / JSON table

    rgb = np.stack([gray, gray + 30, gray - 30], -1)  # mean over channels = gray
    assert [r["mean_intensity"] for r in measure_instances(labels, rgb)] == pytest.approx([100.0, 40.0])
    assert all(math.isnan(r["mean_intensity"]) for r in measure_instances(labels))
    assert measure_instances(np.zeros((5, 5), np.int32)) == []
    with pytest.raises(ValueError, match="does not match"):
        measure_instances(labels, gray[:10])


def test_measure_equals_skimage_regionprops():
    """The band-summed moments give regionprops' numbers (label gaps, single pixels, lines, big images)."""
    from skimage.measure import regionprops_table

    for f in random_fields(3, n=20):
        labels = ndi.label(f[0] > 0.5)[0].astype(np.int32)
        labels[labels == 2] = 0  # a gap in the label values
        labels[0, :3] = labels.max() + 1  # a line; a single pixel below
        labels[-1, -1] = labels.max() + 1
        gray = f[2] * 1000
        rows = measure_instances(labels, gray)
        ref = regionprops_table(labels, intensity_image=gray.astype(np.float64),
                                properties=["label", "area", "centroid", "equivalent_diameter_area", "eccentricity",
                                            "intensity_mean"])
        assert [r["nucleus_id"] for r in rows] == list(ref["label"])
        for key, col in (("area", "area"), ("centroid_y", "centroid-0"), ("centroid_x", "centroid-1"),
                         ("equivalent_diameter", "equivalent_diameter_area"), ("eccentricity", "eccentricity"),
                         ("mean_intensity", "intensity_mean")):
            np.testing.assert_allclose([r[key] for r in rows], ref[col], rtol=1e-9, atol=1e-9, err_msg=key)
