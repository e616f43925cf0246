"""Write settings chosen after training (tuned post-processing, review threshold) into a checkpoint file, so
that evaluation and prediction from that file use them; publish a run's model file (`checkpoints/model.ckpt`)."""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nucseg.utils.atomic import atomic_write_bytes

__all__ = ["MODEL_FILE", "publish_model", "update_checkpoint_hparams"]

# the file of a run to predict, evaluate and export with: the tested weights with the settings chosen for them
MODEL_FILE = "model.ckpt"

log = logging.getLogger(__name__)


def update_checkpoint_hparams(ckpt_path: str | Path | None, updates: Mapping[str, Mapping[str, Any]]) -> bool:
    """Merge `updates` ({hparam group: {key: value}}) into the checkpoint's hyper_parameters, atomically.

    Returns False (and logs why) when there is no file or it cannot be rewritten: the caller keeps its own
    record of the values, so a read-only checkpoint does not fail a finished run.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        return False
    try:
        data = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        hp = data.get("hyper_parameters") or {}
        for group, values in updates.items():
            hp[group] = {**dict(hp.get(group) or {}), **dict(values)}
        data["hyper_parameters"] = hp
        buf = io.BytesIO()
        torch.save(data, buf)
        atomic_write_bytes(ckpt_path, buf.getvalue())
    except Exception as exc:
        log.warning("could not store %s in %s: %s", sorted(updates), ckpt_path, exc)
        return False
    log.info("stored %s in %s", ", ".join(f"{g}.{k}" for g, v in updates.items() for k in v), ckpt_path)
    return True


def publish_model(ckpt_path: str | Path, out_path: str | Path) -> Path:
    """Write the weights and hyper-parameters of `ckpt_path` (the tested checkpoint, into which the tuned
    post-processing and the review threshold were stored) to `out_path`, atomically, without the optimizer
    state: a third of the size, and the one file a user needs. `last.ckpt` is for resuming: it holds neither."""
    data = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    keep = ("state_dict", "hyper_parameters", "epoch", "global_step", "pytorch-lightning_version")
    buf = io.BytesIO()
    torch.save({k: data[k] for k in keep if k in data}, buf)
    atomic_write_bytes(out_path, buf.getvalue())
    log.info("model for predict / evaluate / export: %s", out_path)
    return Path(out_path)

