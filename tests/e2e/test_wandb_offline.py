"""U-Net++ with the W&B logger and no network: an offline run directory holds the metrics and the overlays."""

from __future__ import annotations

from nucseg.train import train
from nucseg.utils.run_lifecycle import finish_wandb
from tests.helpers.marks import LONG_RUN


@LONG_RUN
def test_unetpp_wandb_offline_run_has_metrics_and_images(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = make_cfg(["model=unetpp", "logger=wandb", "trainer.limit_val_batches=2"])
    assert cfg.logger.wandb.offline is True
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = runs[0] / "files"
    # wandb>=0.19 keeps offline history/summary/config in the run's protobuf log (synced later by `wandb sync`)
    log_bytes = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in ("test/dice", "test/iou", "test/auroc", "val/dice"):
        assert key.encode() in log_bytes, key
        assert repr(metrics[key]).encode() in log_bytes, (key, metrics[key])  # the same value as metrics.json
    assert b"unetpp" in log_bytes  # the resolved config went to W&B
    overlays = list((files / "media" / "images" / "val").glob("overlays_*.png"))
    masks = list((files / "media" / "images" / "mask" / "val").glob("overlays_*.mask.png"))
    assert len(overlays) == 2 and len(masks) == 4  # 2 val images, each with prediction + ground-truth masks
    assert (tmp_path / "metrics.json").is_file()
