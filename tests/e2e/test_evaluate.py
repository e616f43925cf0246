"""Evaluation of a checkpoint on a Kaggle-layout folder of real DSB2018 images, and the error overlays."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from nucseg.data.dsb2018 import DSB2018Source
from nucseg.evaluate import evaluate, headline
from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.dsb_score import instance_scores
from nucseg.metrics.pixel import dice_score
from nucseg.models.module import load_module
from nucseg.utils.tables import merge_rows
from nucseg.viz.overlays import (
    FN_COLOR,
    FP_COLOR,
    TP_COLOR,
    match_objects,
    object_error_overlay,
    outline_overlay,
    pixel_error_overlay,
)
from tests.helpers.checkpoints import train_tiny_checkpoint
from tests.helpers.config import compose_cfg

KEYS = ("test/dice", "test/iou", "test/auroc", "test/dsb_score", "test/ap50", "test/count_error", "test/loss")


# ------------------------------------------------------------------ overlays on hand-made masks
def test_pixel_overlay_colours_tp_fp_fn():
    image = np.full((4, 4, 3), 100, np.uint8)
    pred = np.array([[1, 1, 0, 0]] * 4)
    true = np.array([[0, 1, 1, 0]] * 4)
    out = pixel_error_overlay(image, pred, true, alpha=1.0)
    assert tuple(out[0, 0]) == FP_COLOR and tuple(out[0, 1]) == TP_COLOR and tuple(out[0, 2]) == FN_COLOR
    assert tuple(out[0, 3]) == (100, 100, 100)
    half = pixel_error_overlay(image, pred, true, alpha=0.5)
    assert tuple(half[0, 1]) == (178, 178, 50)  # (100 + 255) / 2, (100 + 0) / 2, rounded
    assert (TP_COLOR, FP_COLOR, FN_COLOR) == ((255, 255, 0), (0, 255, 0), (255, 0, 0))


def test_object_overlay_matches_nuclei_at_iou_half():
    true = np.zeros((20, 30), np.int32)
    pred = np.zeros((20, 30), np.int32)
    true[2:8, 2:8] = 1  # matched: IoU 30/36 with prediction 5
    pred[2:8, 2:7] = 5
    true[12:18, 2:8] = 2  # missed: prediction 7 covers it with IoU 9/36 only
    pred[12:15, 2:5] = 7
    pred[2:8, 20:26] = 9  # nothing there: false positive
    assert match_objects(pred, true) == ({5}, {1})
    out = object_error_overlay(np.zeros((20, 30, 3), np.uint8), pred, true, alpha=1.0)
    assert tuple(out[4, 4]) == TP_COLOR and tuple(out[4, 22]) == FP_COLOR
    assert tuple(out[13, 3]) == FP_COLOR and tuple(out[16, 6]) == FN_COLOR
    assert tuple(out[10, 15]) == (0, 0, 0)
    with pytest.raises(ValueError, match="iou_threshold"):
        match_objects(pred, true, 0.3)


def test_outline_overlay_draws_each_nucleus_boundary():
    labels = np.zeros((10, 10), np.int32)
    labels[1:5, 1:9] = 1
    labels[5:9, 1:9] = 2  # touching nucleus: the shared edge is outlined on both sides
    out = outline_overlay(np.zeros((10, 10), np.uint8), labels, color=(1, 2, 3))
    assert tuple(out[1, 4]) == (1, 2, 3) and tuple(out[4, 4]) == (1, 2, 3) and tuple(out[5, 4]) == (1, 2, 3)
    assert tuple(out[2, 4]) == (0, 0, 0) and tuple(out[0, 0]) == (0, 0, 0)


def test_merge_rows_joins_on_id():
    rows = merge_rows([{"id": "a", "dice": 0.5}, {"id": "b", "dice": 0.7}],
                      [{"id": "b", "dsb_score": 0.2, "dice": 0.0}], [{"id": "a", "certainty": 0.9, "_maps": 1}])
    assert rows == [{"id": "a", "dice": 0.5, "certainty": 0.9}, {"id": "b", "dice": 0.7, "dsb_score": 0.2}]


# ------------------------------------------------------------------ end to end on real images
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir, cache_dir) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-checkpoint", data_dir, cache_dir)


@pytest.fixture(scope="module")
def kaggle_dir(tmp_path_factory, dsb_root) -> Path:
    """A stage1_test-like folder: three real images with their masks (linked, not copied)."""
    root = tmp_path_factory.mktemp("stage1_test")
    ids = sorted(p.name for p in dsb_root.iterdir() if p.is_dir())
    picked = [i for i in ids[:40] if len(list((dsb_root / i / "masks").iterdir())) < 40][:3]
    for i in picked:
        (root / i).mkdir()
        for sub in ("images", "masks"):
            (root / i / sub).symlink_to(dsb_root / i / sub, target_is_directory=True)
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_evaluate(ckpt: Path, kaggle_dir: Path, out: Path, data_dir: Path, cache_dir: Path) -> dict:
    cfg = compose_cfg([f"ckpt_path={ckpt}", "data=dsb2018_test", f"data.source.root={kaggle_dir}",
                       "data.num_workers=0", "trainer.accelerator=cpu", "trainer.enable_model_summary=false",
                       "trainer.enable_progress_bar=false", "callbacks.rich_progress_bar=null", "logger=csv"],
                      out, config_name="evaluate", data_dir=data_dir, cache_dir=cache_dir)
    return evaluate(cfg)


@pytest.fixture(scope="module")
def evaluated(ckpt, kaggle_dir, tmp_path_factory, data_dir, cache_dir):
    out = tmp_path_factory.mktemp("evaluate-out")
    return out, run_evaluate(ckpt, kaggle_dir, out, data_dir, cache_dir)


def test_metrics_json_has_the_headline_metrics(evaluated):
    out, metrics = evaluated
    data = json.loads((out / "metrics.json").read_text())
    for key in KEYS:
        assert key in data and data[key] == pytest.approx(metrics[key]), key
    assert data["n_images"] == 3
    assert 0 <= data["test/iou"] <= data["test/dice"] <= 1 and 0 <= data["test/dsb_score"] <= data["test/ap50"] <= 1
    line = headline(metrics)
    assert line.startswith("3 test images: dice ") and "dsb_score" in line and "count_error" in line


def test_per_image_csv_has_one_row_per_test_image_and_averages_to_the_metrics(evaluated, kaggle_dir):
    out, metrics = evaluated
    rows = read_csv(out / "per_image.csv")
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in kaggle_dir.iterdir())
    for col in ("dice", "iou", "dsb_score", "count_error"):
        mean = np.mean([float(r[col]) for r in rows])
        assert mean == pytest.approx(metrics[f"test/{col}"], abs=1e-5), col
    for r in rows:
        assert int(r["n_true"]) == len(list((kaggle_dir / r["id"] / "masks").iterdir()))


def test_per_image_scores_match_an_independent_recomputation(evaluated, ckpt, kaggle_dir):
    """Predict one image directly with the checkpoint and score it: the same numbers as the evaluation run."""
    out, _ = evaluated
    row = read_csv(out / "per_image.csv")[0]
    module = load_module(ckpt)
    image, labels = DSB2018Source(kaggle_dir).load(row["id"])
    x = torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div(255)[None]
    with torch.no_grad():
        probs = torch.sigmoid(module.predict_logits(x))[0]
    pred = probs[0] > module.threshold
    assert float(row["dice"]) == pytest.approx(float(dice_score(pred, torch.from_numpy(labels > 0))), abs=1e-5)
    scores = instance_scores(labels, probs_to_instances(probs.numpy(), **module.hparams.postprocess))
    assert float(row["dsb_score"]) == pytest.approx(scores["dsb_score"], abs=1e-6)
    assert int(row["n_pred"]) == scores["n_pred"]
    # and its overlay is the pixel-level TP/FP/FN picture of that prediction
    overlay = np.asarray(Image.open(out / "overlays" / f"{row['id']}.png"))
    assert np.array_equal(overlay, pixel_error_overlay(image, pred.numpy(), labels > 0, 0.5))


def test_overlays_written_for_each_image(evaluated, kaggle_dir):
    out, _ = evaluated
    for d in kaggle_dir.iterdir():
        png = np.asarray(Image.open(out / "overlays" / f"{d.name}.png"))
        h, w = np.asarray(Image.open(d / "images" / f"{d.name}.png")).shape[:2]
        assert png.shape == (h, w, 3)


def test_uncertainty_rows_join_the_per_image_csv(ckpt, kaggle_dir, tmp_path, data_dir, cache_dir):
    """A checkpoint whose model has an uncertainty method (TTA here): the uncertainty callback's certainty per
    image lands in per_image.csv, joined on the image id."""
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    c["hyper_parameters"]["uncertainty"] = {"method": "tta", "tta_ops": "flips", "review_threshold": 0.5}
    torch.save(c, tmp_path / "tta.ckpt")
    metrics = run_evaluate(tmp_path / "tta.ckpt", kaggle_dir, tmp_path / "out", data_dir, cache_dir)
    rows = read_csv(tmp_path / "out" / "per_image.csv")
    assert sorted(r["id"] for r in rows) == sorted(p.name for p in kaggle_dir.iterdir())
    assert all(0.0 <= float(r["certainty"]) <= 1.0 and r["dice_mc"] != "" for r in rows)
    assert "test/certainty_spearman" in metrics
    # a folder without validation images: nothing to fit a temperature or an OOD density on, and no failure
    trust = json.loads((tmp_path / "out" / "uncertainty" / "trust.json").read_text())
    assert trust["calibration"] == {} and trust["ood_threshold"] is None


def test_split_val_scores_the_validation_images_and_a_bad_split_is_named(ckpt, kaggle_dir, tmp_path, data_dir,
                                                                          cache_dir):
    """`split=val` (failure analysis reads validation, never test): per_image.csv holds exactly the validation
    images of the same split, and metrics.json says which split it scored."""
    from nucseg.utils.errors import ConfigError

    common = [f"ckpt_path={ckpt}", "data=dsb2018_test", f"data.source.root={kaggle_dir}", "data.num_workers=0",
              "data.val_fraction=0.34", "data.test_fraction=0.33", "data.split_by=image",
              "trainer.accelerator=cpu", "trainer.enable_model_summary=false", "trainer.enable_progress_bar=false",
              "callbacks.rich_progress_bar=null", "logger=csv"]
    cfg = compose_cfg(common + ["split=val"], tmp_path / "val", config_name="evaluate", data_dir=data_dir,
                      cache_dir=cache_dir)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("test")
    val_ids = sorted(dm.splits["val"])
    assert val_ids and not set(val_ids) & set(dm.splits["test"])
    evaluate(cfg)
    assert sorted(r["id"] for r in read_csv(tmp_path / "val" / "per_image.csv")) == val_ids
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["split"] == "val"
    bad = compose_cfg(common + ["split=tain"], tmp_path / "bad", config_name="evaluate", data_dir=data_dir,
                      cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="split=tain"):
        evaluate(bad)


def test_uncertainty_overrides_change_the_checkpoints_settings_for_one_evaluation(tmp_path):
    """`uncertainty.samples=5` (fewer MC passes) and `uncertainty.score=...` go over the checkpoint's settings,
    checked like a user's: a bad value or an unknown key is one ConfigError naming it; null keys keep the
    stored value."""
    from omegaconf import OmegaConf

    from nucseg.evaluate import _override_uncertainty
    from nucseg.models.module import load_module
    from nucseg.utils.errors import ConfigError
    from tests.helpers.checkpoints import save_checkpoint

    stored = {"method": "tta", "tta_ops": "flips", "review_threshold": 0.5, "score": "entropy"}
    module = load_module(save_checkpoint(tmp_path / "m.ckpt", uncertainty=stored))
    _override_uncertainty(module, OmegaConf.create({"samples": 5, "score": None}))
    assert module.hparams["uncertainty"] == {**stored, "samples": 5}
    _override_uncertainty(module, OmegaConf.create({"score": "fg_mutual_info"}))
    assert module.hparams["uncertainty"]["score"] == "fg_mutual_info"
    with pytest.raises(ConfigError, match=r"uncertainty.samples=0: expected an integer >= 1"):
        _override_uncertainty(module, OmegaConf.create({"samples": 0}))
    with pytest.raises(ConfigError, match=r"uncertainty.sampels: unknown setting"):
        _override_uncertainty(module, OmegaConf.create({"sampels": 3}))
    assert module.hparams["uncertainty"]["score"] == "fg_mutual_info"  # a refused override changes nothing
