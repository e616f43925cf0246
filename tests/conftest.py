"""Shared fixtures: the real data root, one decode cache per session, and Hydra composition of the train config.
Importable helpers (paths, FAST_OVERRIDES, compose_cfg, crafted checkpoints, the train CLI) are in tests.helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from tests.helpers.config import FAST_OVERRIDES, compose_cfg
from tests.helpers.paths import DATA_DIR, DSB_ROOT

# Tests run on 2 cores; one intra-op thread per process keeps parallel work predictable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
    """One decode cache for the whole test session (the cache itself is tested in tests/data/test_dsb2018.py)."""
    return tmp_path_factory.mktemp("nucseg-cache")


@pytest.fixture
def make_cfg(tmp_path: Path, data_dir: Path, cache_dir: Path):
    """make_cfg(overrides, fast=True) -> composed train config writing into tmp_path."""

    def _make(overrides: list[str] | None = None, fast: bool = True, config_name: str = "train") -> DictConfig:
        ov = (FAST_OVERRIDES if fast else []) + list(overrides or [])
        return compose_cfg(ov, tmp_path, config_name=config_name, data_dir=data_dir, cache_dir=cache_dir)

    return _make


@pytest.fixture(autouse=True, scope="session")
def wandb_files_in_tmp(tmp_path_factory):
    """The offline W&B runs of the tests stage their artifacts' files (model.ckpt, tables) and caches in a
    temporary folder, not under $HOME (subprocesses inherit it through the environment)."""
    root = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for var, name in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
            mp.setenv(var, str(root / name))
        yield root


@pytest.fixture(scope="session")
def slurm() -> None:
    """A running one-node Slurm (`.ci/slurm.sh` installs and starts it when it is missing and we are root);
    the test is skipped, with the reason, where that cannot be done."""
    from tests.helpers.slurm import start_slurm

    reason = start_slurm()
    if reason:
        print(f"skipping: {reason}")
        pytest.skip(reason)
