"""Hydra composition of a root config as an entry point sees it, and the overrides of a small, fast run."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import nucseg.utils  # noqa: F401  (registers resolvers)
from tests.helpers.paths import CONF_DIR, DATA_DIR

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
