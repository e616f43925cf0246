"""Hydra composition of a root config as an entry point sees it, and the overrides of a small, fast run."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from nucseg.utils.entry_config import compose_config
from tests.helpers.paths import DATA_DIR

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
    return compose_config(config_name, overrides, output_dir,
                          paths={"data_dir": data_dir, "cache_dir": cache_dir or output_dir / ".cache"})
