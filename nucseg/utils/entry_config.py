"""The config an entry point would run, composed outside the command line (notebooks, tests, benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.utils.config import CONF_DIR

__all__ = ["CONF_DIR", "compose_config"]


def compose_config(config_name: str, overrides: Sequence[str], output_dir: str | Path,
                   paths: Mapping[str, str | Path] | None = None) -> DictConfig:
    """The root config `python -m nucseg.<config_name> <overrides>` would run, writing into `output_dir`.

    As under `@hydra.main`, Hydra's own node is registered globally (HydraConfig.get() works: the run
    directory, the job number) and is not part of the returned config. `paths`: further `paths.*` values
    (e.g. data_dir, cache_dir).
    """
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        for key, value in (paths or {}).items():
            cfg.paths[key] = str(value)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
