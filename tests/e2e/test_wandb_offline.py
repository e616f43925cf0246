"""U-Net++ with the W&B logger and no network: the offline run directory holds what `wandb sync` would upload:
the metrics, the overlays, the tested model.ckpt as a model artifact with its settings in the metadata, the
per-image table and the report figures."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import nucseg
from nucseg.train import train
from nucseg.utils.run_lifecycle import finish_wandb
from tests.helpers.marks import LONG_RUN
from tests.helpers.wandb_offline import artifact_records, run_dir


@LONG_RUN
def test_unetpp_wandb_offline_run_has_metrics_images_model_table_and_figures(make_cfg, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, name in (("WANDB_DATA_DIR", "wandb-data"), ("WANDB_CACHE_DIR", "wandb-cache"),
                      ("WANDB_CONFIG_DIR", "wandb-config")):  # artifact staging and caches: not in $HOME
        monkeypatch.setenv(var, str(tmp_path / name))
    # a review threshold, temperature and OOD threshold in model.ckpt from the cheapest uncertainty (TTA, 2 passes),
    # and tuned post-processing
    cfg = make_cfg(["model=unetpp", "logger=wandb", "trainer.limit_val_batches=2", "uncertainty=tta",
                    "uncertainty.tta_ops=[identity,hflip]", "postprocess=auto",
                    "callbacks.uncertainty.shift_calibration=false", "callbacks.uncertainty.ood.max_train_images=4",
                    "callbacks.wandb_uncertainty=null"])
    assert cfg.logger.wandb.offline is True
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()
    run = run_dir(tmp_path / "wandb")
    files = run / "files"
    # wandb>=0.19 keeps offline history/summary/config in the run's protobuf log (synced later by `wandb sync`)
    log_bytes = next(run.glob("run-*.wandb")).read_bytes()
    for key in ("test/dice", "test/iou", "test/auroc", "val/dice"):
        assert key.encode() in log_bytes, key
        assert repr(metrics[key]).encode() in log_bytes, (key, metrics[key])  # the same value as metrics.json
    assert b"unetpp" in log_bytes  # the resolved config went to W&B
    overlays = list((files / "media" / "images" / "val").glob("overlays_*.png"))
    masks = list((files / "media" / "images" / "mask" / "val").glob("overlays_*.mask.png"))
    assert len(overlays) == 2 and len(masks) == 4  # 2 val images, each with prediction + ground-truth masks
    assert (tmp_path / "metrics.json").is_file()

    # the tested model.ckpt, byte for byte, as the model artifact; its metadata = what the file stores
    model = tmp_path / "checkpoints" / "model.ckpt"
    hp = torch.load(model, map_location="cpu", weights_only=True)["hyper_parameters"]
    (art,) = artifact_records(run, "model")
    assert art["name"] == f"model-{run.name.rsplit('-', 1)[1]}"
    assert sorted(art["aliases"]) == ["latest", "tested"]
    assert list(art["files"]) == ["model.ckpt"]
    staged = art["files"]["model.ckpt"]
    assert staged.startswith(str(tmp_path / "wandb-data")) and Path(staged).read_bytes() == model.read_bytes()
    meta = art["metadata"]
    review = json.loads((tmp_path / "uncertainty" / "review_threshold.json").read_text())
    assert isinstance(hp["uncertainty"]["review_threshold"], float)
    assert meta["review_threshold"] == hp["uncertainty"]["review_threshold"] == review["review_threshold"]
    assert meta["review_rule"] == review["rule"] and meta["uncertainty_method"] == "tta"
    assert "tuned" in hp["postprocess"]
    assert meta["postprocess"] == json.loads(json.dumps(hp["postprocess"], default=str))  # tuned settings
    assert meta["calibration"]["temperature"] == hp["calibration"]["temperature"]
    assert meta["ood_threshold"] == hp["ood"]["threshold"]
    assert meta["metrics"]["test/dice"] == metrics["test/dice"]
    assert meta["metrics"]["test/dsb_score"] == metrics["test/dsb_score"]
    assert meta["nucseg_version"] == nucseg.__version__ and meta["machine"]["cpu_count"] == os.cpu_count()
    assert meta["net"]["arch"] == hp["net"]["arch"]
    assert meta["tested_checkpoint"] == Path(metrics["best_model_path"]).name

    # per_image.csv as the table test/per_image: the same columns, images and Dice
    with (tmp_path / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    (table_file,) = (files / "media" / "table" / "test").glob("per_image_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(rows[0])
    ids, dice = table["columns"].index("id"), table["columns"].index("dice")
    assert [r[ids] for r in table["data"]] == [r["id"] for r in rows]
    assert [r[dice] for r in table["data"]] == pytest.approx([float(r["dice"]) for r in rows])

    # every report figure as an image figures/<name>, once, as drawn
    pngs = {p.stem: p for p in (tmp_path / "figures").glob("*.png")}
    assert {"training_curves", "best_worst", "certainty_vs_dice"} <= set(pngs)
    logged = {p.name.rsplit("_", 2)[0]: p for p in (files / "media" / "images" / "figures").glob("*.png")}
    assert set(logged) == set(pngs)
    for name, path in logged.items():
        with Image.open(path) as im, Image.open(pngs[name]) as drawn:
            assert im.size == drawn.size, name
