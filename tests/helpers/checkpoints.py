"""Checkpoints for tests: crafted ones (a 1x1 convolution, a fraction of a second to write) for everything
around the model, and one from a short real run, shared by the modules that need trained weights."""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from omegaconf import open_dict

from tests.helpers.config import FAST_OVERRIDES, compose_cfg

# a complete nucseg network in one 1x1 convolution: checkpoints for tests of everything around the model
CONV_NET = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 1, "kernel_size": 1}


def save_checkpoint(path: Path, net: object = CONV_NET, state_dict: dict | None = None, **hparams) -> Path:
    """Write a checkpoint as nucseg does (hyper_parameters with `net`, plus a state_dict; by default the
    weights of a fresh CONV_NET). Takes a fraction of a second, unlike training one."""
    if state_dict is None:
        state_dict = {f"net.{k}": v for k, v in torch.nn.Conv2d(3, 1, 1).state_dict().items()}
    torch.save({"state_dict": state_dict, "hyper_parameters": {"net": net, **hparams}}, path)
    return path


# a light network: in tests/e2e/test_predict.py the > 2000x2000 image is the slow part
TINY = ["experiment=unet_instance", "logger=none", "test=false", "model.decoder_channels=[32,16,8]",
        "trainer.limit_val_batches=1"]


@functools.cache
def train_tiny_checkpoint(out: Path, data_dir: Path, cache_dir: Path) -> Path:
    """A checkpoint from a short real run; cached, so the modules that need one share it in a session."""
    from nucseg.train import train  # imported here: importing the helpers stays light

    cfg = compose_cfg(FAST_OVERRIDES + TINY, out, data_dir=data_dir, cache_dir=cache_dir)
    with open_dict(cfg):  # only the checkpoint callback: nothing else is needed to get a checkpoint
        cfg.callbacks = {"model_checkpoint": cfg.callbacks.model_checkpoint}
    train(cfg)
    ckpt = out / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    return ckpt
