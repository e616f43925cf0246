"""RegionScores on hand-made outputs: the confusion matrix of a known pair, pixel error and region scores, and the
membrane error overlay's colours."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nucseg.callbacks.region_scores import RegionScores
from nucseg.metrics.regions import region_scores
from nucseg.viz.overlays import FN_COLOR, FP_COLOR, TP_COLOR, membrane_error_overlay


class FakeModule:
    """What the callback reads of a LightningModule: device, threshold, post-processing, log."""

    def __init__(self, postprocess: dict):
        self.device, self.threshold = torch.device("cpu"), 0.5
        self.hparams = {"postprocess": postprocess}
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **kwargs) -> None:
        self.logged[name] = float(value)


def _batch_and_outputs():
    """Two 4x4 images. Image a: truth cells left half (two cells, rows 0-1 and 2-3), prediction one cell over
    the left half plus one false pixel; image b: all membrane, predicted all membrane."""
    true_a = np.zeros((4, 4), np.int64)
    true_a[:2, :2], true_a[2:, :2] = 1, 2
    prob_a = np.zeros((4, 4), np.float32)
    prob_a[:, :2] = 0.9
    prob_a[0, 3] = 0.8
    true_b = np.zeros((4, 4), np.int64)
    prob_b = np.full((4, 4), 0.1, np.float32)
    labels = torch.from_numpy(np.stack([true_a, true_b]))
    batch = {"id": ["a", "b"], "labelled": [True, True], "labels": labels,
             "target": (labels > 0).float()[:, None]}
    outputs = {"probs": torch.from_numpy(np.stack([prob_a, prob_b]))[:, None]}
    return batch, outputs, true_a, prob_a


def test_confusion_matrix_pixel_error_and_region_scores_of_a_known_pair(tmp_path):
    batch, outputs, true_a, prob_a = _batch_and_outputs()
    module = FakeModule({"method": "cc", "threshold": 0.5, "min_size": 0, "objective": "rand_f"})
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path),
                              loggers=[], global_step=0)
    cb = RegionScores(class_names=["membrane", "cell"])
    cb.on_test_epoch_start(trainer, module)
    cb.on_test_batch_end(trainer, module, outputs, batch, 0)
    cb.on_test_epoch_end(trainer, module)
    # 32 pixels: true cell 8 (all predicted cell: tp 8, fn 0); true membrane 24, of which 1 predicted cell (fp)
    logged = module.logged
    assert logged["test/confusion/tp"] == pytest.approx(1.0) and logged["test/confusion/fn"] == pytest.approx(0.0)
    assert logged["test/confusion/fp"] == pytest.approx(1 / 24)
    assert logged["test/confusion/tn"] == pytest.approx(23 / 24)
    # pixel error per image (1/16 and 0), averaged over the two images
    assert logged["test/pixel_error"] == pytest.approx((1 / 16 + 0) / 2)
    # regions of image a: one predicted cell over both true cells (a merge); image b has no true cell (scores 1)
    pred_a = np.zeros((4, 4), np.int64)
    pred_a[:, :2], pred_a[0, 3] = 1, 2
    expected = region_scores(true_a, pred_a)
    assert expected["rand_merge"] < 1.0 and expected["rand_split"] == pytest.approx(1.0)
    assert logged["test/rand_f"] == pytest.approx((expected["rand_f"] + 1.0) / 2)
    assert logged["test/vi_merge"] == pytest.approx(expected["vi_merge"] / 2)
    assert [r["id"] for r in cb.rows] == ["a", "b"] and cb.rows[0]["rand_f"] == pytest.approx(expected["rand_f"])
    assert (tmp_path / "figures" / "confusion_matrix.png").stat().st_size > 1000


def test_regions_auto_follows_the_models_objective_and_validation_skips_sanity_checks(tmp_path):
    batch, outputs, _, _ = _batch_and_outputs()
    module = FakeModule({"method": "cc", "threshold": 0.5, "objective": "dsb_score"})
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, default_root_dir=str(tmp_path),
                              loggers=[], global_step=0)
    cb = RegionScores()
    cb.on_validation_epoch_start(trainer, module)
    cb.on_validation_batch_end(trainer, module, outputs, batch, 0)
    cb.on_validation_epoch_end(trainer, module)
    assert "val/pixel_error" in module.logged and "val/rand_f" not in module.logged  # nuclei: no region scores
    checking = SimpleNamespace(**{**vars(trainer), "sanity_checking": True})
    module.logged.clear()
    cb.on_validation_epoch_start(checking, module)
    cb.on_validation_batch_end(checking, module, outputs, batch, 0)
    cb.on_validation_epoch_end(checking, module)
    assert module.logged == {}
    with pytest.raises(ValueError, match="regions"):
        RegionScores(regions="sometimes")


def test_membrane_error_overlay_colours_membranes_not_cells():
    image = np.zeros((1, 4), np.uint8)
    pred_cell = np.array([[1, 0, 0, 1]])
    true_cell = np.array([[1, 0, 1, 0]])
    out = membrane_error_overlay(image, pred_cell, true_cell, alpha=1.0)
    # cell in both: untouched; membrane in both: found; predicted membrane in a true cell: false; missed membrane
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == list(TP_COLOR)
    assert out[0, 2].tolist() == list(FP_COLOR)
    assert out[0, 3].tolist() == list(FN_COLOR)
