"""Shared fixtures: the real data root, Hydra composition of the train config, and small-run overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import nucseg.utils  # noqa: F401  (registers resolvers)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
DATA_DIR = Path(os.environ.get("NUCSEG_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data")).resolve()
DSB_ROOT = DATA_DIR / "dsb2018" / "stage1_train"
ISBI_ROOT = DATA_DIR / "isbi2012"

# Tests run on 2 cores; one intra-op thread per process keeps parallel work predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# A small, fast run: resnet18 encoder, 64-px crops, a couple of batches.
FAST_OVERRIDES = [
    "debug=limit",
    "model.encoder_name=resnet18",
    "model.encoder_depth=3",
    "data.crop_size=64",
    "data.batch_size=2",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.rich_progress_bar=null",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


# a complete nucseg network in one 1x1 convolution: checkpoints for tests of everything around the model
CONV_NET = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 1, "kernel_size": 1}


def save_checkpoint(path: Path, net: object = CONV_NET, state_dict: dict | None = None, **hparams) -> Path:
    """Write a checkpoint as nucseg does (hyper_parameters with `net`, plus a state_dict; by default the
    weights of a fresh CONV_NET). Takes a fraction of a second, unlike training one."""
    if state_dict is None:
        state_dict = {f"net.{k}": v for k, v in torch.nn.Conv2d(3, 1, 1).state_dict().items()}
    torch.save({"state_dict": state_dict, "hyper_parameters": {"net": net, **hparams}}, path)
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DSB_ROOT.is_dir():
        pytest.fail(f"test data missing: expected {DSB_ROOT} (set NUCSEG_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def dsb_root(data_dir: Path) -> Path:
    return DSB_ROOT


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One decode cache for the whole test session (the cache itself is tested in test_dsb2018)."""
    return tmp_path_factory.mktemp("nucseg-cache")


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train",
                data_dir: Path = DATA_DIR, cache_dir: Path | None = None) -> DictConfig:
    """Compose a root config as `python -m nucseg.<entry>` would, with paths pointed at the test dirs."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.cache_dir = str(cache_dir or output_dir / ".cache")
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    # as under @hydra.main: the hydra node is registered globally, not part of the job's config
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path, cache_dir: Path):
    """make_cfg(overrides, fast=True) -> composed train config writing into tmp_path."""

    def _make(overrides: list[str] | None = None, fast: bool = True, config_name: str = "train") -> DictConfig:
        ov = (FAST_OVERRIDES if fast else []) + list(overrides or [])
        return compose_cfg(ov, tmp_path, config_name=config_name, data_dir=data_dir, cache_dir=cache_dir)

    return _make
