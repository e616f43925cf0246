"""End-to-end: a short real training run on DSB2018 writes metrics.json and checkpoints."""

from __future__ import annotations

import json

from nucseg.train import train


def test_short_training_run_writes_metrics_and_checkpoints(make_cfg, tmp_path):
    cfg = make_cfg(["logger=csv"])
    metrics = train(cfg)
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/dice", "test/iou", "test/auroc", "test/loss", "val/dice", "train/loss"):
        assert key in data, key
        assert data[key] == metrics[key]
    assert 0.0 <= data["test/dice"] <= 1.0 and 0.0 <= data["test/iou"] <= data["test/dice"] + 1e-6
    assert 0.0 <= data["test/auroc"] <= 1.0
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("epoch_") for n in ckpts)
    assert (tmp_path / "csv" / "metrics.csv").is_file()
