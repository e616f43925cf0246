"""End-to-end: the README's main job, `experiment=cpu`, shrunk to a few steps and images: the pretrained encoder
is loaded offline, the instance head trains, post-processing is tuned, the review threshold and calibration are
fitted, and the test writes its instance metrics and the checkpoint to predict with."""

from __future__ import annotations

import json

import torch

from nucseg.models.module import load_module
from nucseg.models.pretrained import OFFLINE_WEIGHTS, weights_file
from nucseg.train import train

SHRUNK = [
    "experiment=cpu", "logger=csv", "budget.minutes=null", "trainer.max_epochs=1", "trainer.check_val_every_n_epoch=1",
    "data.samples_per_epoch=32", "data.batch_size=8", "data.memory_cache_mb=0", "module.train_precision=32",
    "trainer.limit_val_batches=3", "trainer.limit_test_batches=3", "callbacks.uncertainty.max_val_images=3",
    "callbacks.postprocess_tuning.max_val_images=3", "uncertainty.samples=2", "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]


def test_shrunk_cpu_preset_trains_from_the_packaged_weights_and_tests(make_cfg, tmp_path):
    cfg = make_cfg(SHRUNK, fast=False)
    assert cfg.model.encoder_name in OFFLINE_WEIGHTS and cfg.model.encoder_weights == "imagenet"
    metrics = train(cfg)
    for key in ("test/dice", "test/dsb_score", "test/ap50", "test/count_error", "tune/val_dsb_score"):
        assert key in metrics, key
    assert json.loads((tmp_path / "metrics.json").read_text())["test/dsb_score"] == metrics["test/dsb_score"]
    module = load_module(tmp_path / "checkpoints" / "model.ckpt")
    assert module.hparams["net"]["encoder_weights"] == "imagenet"
    assert module.hparams["postprocess"]["tuned"]
    # 4 steps at OneCycle's starting rate move the ImageNet weights by far less than a random init differs
    packaged = torch.load(weights_file(cfg.model.encoder_name), map_location="cpu", weights_only=True)
    first_dw = next(v for k, v in packaged.items() if k.endswith("_depthwise_conv.weight"))
    trained = module.net.encoder.state_dict()["model.blocks.0.0.conv_dw.weight"]
    assert (trained - first_dw).abs().max() < 0.02 < first_dw.abs().max()
