"""Turn the `callbacks` and `logger` config dicts into objects (lightning-hydra-template style)."""

from __future__ import annotations

import logging

import hydra
from lightning import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def _entries(cfg: DictConfig | None, key: str) -> list[tuple[str, DictConfig]]:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{key}: expected a dict of `_target_` entries, got {type(cfg).__name__}")
    out = []
    for name, conf in cfg.items():
        if conf is None:
            continue
        if not isinstance(conf, DictConfig) or "_target_" not in conf:
            raise ValueError(f"{key}.{name!s}: expected a config with a `_target_` entry")
        out.append((str(name), conf))
    return out


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    loggers = []
    for name, conf in _entries(cfg, "logger"):
        log.info("logger %s <%s>", name, conf._target_)
        loggers.append(hydra.utils.instantiate(conf))
    return loggers


def instantiate_callbacks(cfg: DictConfig | None, has_logger: bool) -> list[Callback]:
    callbacks = []
    for name, conf in _entries(cfg, "callbacks"):
        if not has_logger and conf._target_.endswith("LearningRateMonitor"):
            log.info("callbacks.%s skipped: LearningRateMonitor needs a logger (logger=none)", name)
            continue
        callbacks.append(hydra.utils.instantiate(conf))
    return callbacks
