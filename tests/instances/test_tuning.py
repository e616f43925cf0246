"""Post-processing tuned on validation: the search finds known-better settings, the checkpoint keeps them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from nucseg.instances.tuning import score_settings, tune_postprocess
from nucseg.instances.watershed import probs_to_instances
from nucseg.models.module import load_module
from nucseg.train import train


def _two_touching_nuclei() -> tuple[np.ndarray, np.ndarray]:
    """Labels of two touching discs, and probabilities of a model that is under-confident (0.45 inside the
    nuclei, so the default 0.5 threshold finds nothing) with a clear contour channel between them."""
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 32) ** 2 + (xx - 20) ** 2 < 100] = 1
    labels[((yy - 32) ** 2 + (xx - 39) ** 2 < 100) & (labels == 0)] = 2
    probs = np.zeros((3, 64, 64), np.float32)
    probs[0][labels > 0] = 0.45
    border = (np.abs(xx - 29.5) < 1.5) & (labels > 0)
    probs[1][border] = 0.9
    return probs, labels


def test_tuning_finds_the_threshold_the_model_needs():
    probs, labels = _two_touching_nuclei()
    base = {"method": "watershed", "threshold": 0.5, "contour_threshold": 0.5, "min_size": 10,
            "seed_min_size": 10, "fill_holes": True}
    assert score_settings([probs], [labels], base) == 0.0
    result = tune_postprocess([probs], [labels], base)
    assert result.base_score == 0.0
    assert result.settings["threshold"] < 0.45
    assert result.score > 0.8  # both nuclei found and split by the contour
    assert result.score == score_settings([probs], [labels], result.settings)
    assert result.summary()["base"]["threshold"] == 0.5
    assert len(result.trials) >= 30


def test_tuning_logs_progress_lines_only_when_asked(caplog):
    probs, labels = _two_touching_nuclei()
    base = {"method": "watershed", "threshold": 0.5, "contour_threshold": 0.5, "min_size": 10,
            "seed_min_size": 10, "fill_holes": True}
    with caplog.at_level("INFO", logger="nucseg.utils.progress"):
        quiet = tune_postprocess([probs], [labels], base)
    assert "post-processing search" not in caplog.text
    with caplog.at_level("INFO", logger="nucseg.utils.progress"):
        logged = tune_postprocess([probs], [labels], base, progress_interval=0.0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("post-processing search")]
    # interval 0: a line after every candidate (38 in the default grid: 9 joint thresholds + 5 + 5 + 2 + ...,
    # 36 distinct trials with the base), then the closing line; the search itself is unchanged
    n = len(lines) - 1
    assert lines[0].startswith(f"post-processing search 1/{n} candidates ") and " ETA " in lines[0]
    assert lines[-1].startswith(f"post-processing search done: {n} candidates in ")
    assert n >= len(logged.trials) - 1
    assert logged.settings == quiet.settings and logged.trials == quiet.trials


def test_postprocess_auto_tunes_at_test_and_nucseg_tune_rewrites_the_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(["logger=csv", "model=unet", "model.classes=3", "data.targets=instance", "postprocess=auto"])
    metrics = train(cfg)
    assert "tune/val_dsb_score" in metrics and "test/dsb_score_untuned" in metrics
    # the chosen score is the best trial's, the base score the first trial's (the settings as configured), and
    # the stored threshold that of the best trial (the earliest among equals)
    trials = json.loads((tmp_path / "postprocess_tuning.json").read_text())["trials"]
    scores = [t["score"] for t in trials]
    assert metrics["tune/val_dsb_score"] == pytest.approx(max(scores), rel=1e-6)
    assert metrics["tune/val_dsb_score_base"] == pytest.approx(scores[0], rel=1e-6)
    assert metrics["tune/threshold"] == pytest.approx(trials[scores.index(max(scores))]["threshold"], rel=1e-6)
    best = metrics["best_model_path"]
    hp = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["postprocess"]
    # logged metrics pass through float32
    assert hp["tuned"]["val_dsb_score"] == pytest.approx(metrics["tune/val_dsb_score"], rel=1e-6)
    assert hp["threshold"] == pytest.approx(metrics["tune/threshold"], rel=1e-6)
    assert load_module(best).hparams["postprocess"]["tuned"]["n_val_images"] == metrics["tune/n_val_images"]
    # the run's model file carries the tuned settings; last.ckpt (for resuming) does not
    model = torch.load(tmp_path / "checkpoints" / "model.ckpt", map_location="cpu", weights_only=True)
    assert model["hyper_parameters"]["postprocess"] == hp and "optimizer_states" not in model
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert "tuned" not in last["hyper_parameters"]["postprocess"]

    grid = "{threshold:[0.2,0.9],contour_threshold:[0.5],seed_min_size:[10],min_size:[10]}"
    proc = subprocess.run(
        [sys.executable, "-m", "nucseg.tune", f"ckpt_path={best}", f"paths.data_dir={cfg.paths.data_dir}",
         f"paths.cache_dir={cfg.paths.cache_dir}", f"hydra.run.dir={tmp_path / 'tune'}", "max_val_images=2",
         f"+grid={grid}"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation DSB score" in proc.stdout
    hp2 = torch.load(best, map_location="cpu", weights_only=True)["hyper_parameters"]["postprocess"]
    assert hp2["threshold"] in (0.2, 0.5, 0.9) and hp2["tuned"]["n_val_images"] == 2
    assert (tmp_path / "tune" / "tune.json").is_file()


def _three_cells_with_a_weak_membrane() -> tuple[np.ndarray, np.ndarray]:
    """EM-like labels: three cells tiling a 40x60 image between 2-px membranes (label 0), and an interior
    probability of 0.8 in the cells, 0.1 on the membranes except a gap of 0.55 in the membrane between cells 1
    and 2 (a threshold of 0.5 merges them)."""
    labels = np.zeros((40, 60), np.int32)
    labels[:, :19], labels[:, 21:39], labels[:, 41:] = 1, 2, 3
    probs = np.where(labels > 0, 0.8, 0.1).astype(np.float32)[None]
    probs[0, 18:22, 19:21] = 0.55
    return probs, labels


def test_rand_objective_tunes_threshold_and_growth_of_cells_over_membranes():
    probs, labels = _three_cells_with_a_weak_membrane()
    base = {"method": "cc", "threshold": 0.5, "min_size": 10, "fill_holes": True, "grow": False,
            "objective": "rand_f"}
    merged = probs_to_instances(probs, **base)
    assert merged.max() == 2  # cells 1 and 2 joined through the gap
    result = tune_postprocess([probs], [labels], base)
    assert result.objective == "rand_f" and result.base_score < 0.8
    # above the gap's 0.55 the cells separate; growing them over the membranes costs nothing here (the truth's
    # membranes are not scored), and the gap pixels of the truth's cells are no longer predicted background
    assert result.settings["threshold"] > 0.55 and result.score == pytest.approx(1.0)
    assert result.settings["grow"] in (False, True) and isinstance(result.settings["grow"], bool)
    summary = result.summary()
    assert summary["val_rand_f"] == pytest.approx(1.0) and summary["val_rand_f_base"] == result.base_score
    grown = probs_to_instances(probs, **{**result.settings, "grow": True})
    assert (grown > 0).all() and grown.max() == 3  # every pixel belongs to one of the three cells
    with pytest.raises(ValueError, match="postprocess.objective"):
        tune_postprocess([probs], [labels], {**base, "objective": "dice"})
