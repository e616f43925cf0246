"""The run writes its own figures: training curves, best/worst grid, ranked per-image CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from nucseg.train import train


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
