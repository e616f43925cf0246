"""End-to-end: `experiment=isbi_cpu` shrunk to a few steps: the EM cells' post-processing is tuned for the Rand
F-score on the validation slices and stored, the test logs pixel error, the confusion matrix and the region
scores, and the report draws the confusion matrix and membrane error overlays."""

from __future__ import annotations

import csv
import json

import pytest

from nucseg.models.module import load_module
from nucseg.train import train

SHRUNK = [
    "experiment=isbi_cpu", "logger=csv", "budget.minutes=null", "trainer.max_epochs=1",
    "trainer.check_val_every_n_epoch=1", "data.samples_per_epoch=8", "data.batch_size=4", "data.crop_size=128",
    "module.train_precision=32", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
    "callbacks.postprocess_tuning.max_val_images=2", "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


def test_shrunk_isbi_preset_tunes_for_rand_and_reports_region_scores(make_cfg, tmp_path):
    cfg = make_cfg(SHRUNK, fast=False)
    assert cfg.data.source._target_.endswith("ISBI2012Source") and cfg.model.classes == 1
    metrics = train(cfg)
    for key in ("test/dice", "test/pixel_error", "test/rand_f", "test/rand_split", "test/rand_merge",
                "test/info_f", "test/vi_split", "test/vi_merge", "val/rand_f", "tune/val_rand_f"):
        assert key in metrics, key
    # rows of the confusion matrix are rates over the true class
    assert metrics["test/confusion/tn"] + metrics["test/confusion/fp"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["test/confusion/fn"] + metrics["test/confusion/tp"] == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= metrics["test/pixel_error"] <= 1.0 and 0.0 <= metrics["test/rand_f"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["test/rand_f"] == metrics["test/rand_f"]
    post = load_module(tmp_path / "checkpoints" / "model.ckpt").hparams["postprocess"]
    assert post["objective"] == "rand_f" and isinstance(post["grow"], bool)
    assert post["tuned"]["val_rand_f"] == pytest.approx(metrics["tune/val_rand_f"], rel=1e-6)
    with (tmp_path / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(r["rand_f"] and r["pixel_error"] and r["info_f"] for r in rows)
    # the test rows average to the logged test scores
    mean = sum(float(r["pixel_error"]) for r in rows) / len(rows)
    assert mean == pytest.approx(metrics["test/pixel_error"], abs=1e-6)
    for name in ("confusion_matrix.png", "best_worst.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
