"""The run writes its own figures: training curves, best/worst grid, ranked per-image CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from nucseg.train import train
from nucseg.viz.report import histories_from_csv
from tests.helpers.marks import LONG_RUN


@LONG_RUN
def test_run_writes_figures_and_ranked_csv(make_cfg, tmp_path):
    cfg = make_cfg(["trainer.max_epochs=2", "trainer.limit_test_batches=3"])
    metrics = train(cfg)
    fig = tmp_path / "figures"
    for name in ("training_curves.png", "best_worst.png"):
        with Image.open(fig / name) as im:
            assert im.width > 300 and im.height > 200
    rows = list(csv.DictReader((fig / "per_image.csv").open()))
    assert len(rows) == 3
    dice = [float(r["dice"]) for r in rows]
    assert dice == sorted(dice)  # worst first
    assert np.mean(dice) == pytest.approx(metrics["test/dice"], abs=1e-5)


def test_training_curves_take_every_epochs_train_loss_from_the_csv_log(tmp_path):
    """Lightning's CSV log has step rows, train-epoch rows and validation rows; validation ran at epochs 1 and 3."""
    rows = [
        "epoch,step,train/loss_step,train/loss_epoch,val/loss,val/dice,val/iou",
        "0,9,1.5,,,,",
        "0,9,,1.25,,,",
        "1,19,,,0.9,0.6,0.45",
        "1,19,,0.8,,,",
        "2,29,,0.7,,,",
        "3,39,,,0.5,0.8,0.7",
        "3,39,,0.6,,,",
    ]
    path = tmp_path / "metrics.csv"
    path.write_text("\n".join(rows) + "\n")
    train_h, val_h = histories_from_csv(path)
    assert train_h == [{"epoch": 0.0, "train/loss": 1.25}, {"epoch": 1.0, "train/loss": 0.8},
                       {"epoch": 2.0, "train/loss": 0.7}, {"epoch": 3.0, "train/loss": 0.6}]
    assert val_h == [{"epoch": 1.0, "val/loss": 0.9, "val/dice": 0.6, "val/iou": 0.45},
                     {"epoch": 3.0, "val/loss": 0.5, "val/dice": 0.8, "val/iou": 0.7}]


def test_progress_panel_takes_images_from_every_imaging_type_in_turn():
    from nucseg.callbacks.progress_snapshots import spread_over_groups

    groups = ["fluo", "fluo", "stained", "fluo", "bright", "stained", "fluo"]
    assert spread_over_groups(groups, 4) == [0, 2, 4, 1]  # fluo (4), stained (2), bright (1), then fluo again
    assert spread_over_groups(groups, 7) == [0, 2, 4, 1, 5, 3, 6]
    assert spread_over_groups(groups, 10) == [0, 2, 4, 1, 5, 3, 6]  # no more than there are
    assert spread_over_groups(["all"] * 3, 2) == [0, 1]
