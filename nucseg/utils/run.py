"""What happens around a run: seeding, writing metrics.json, closing W&B."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from nucseg.data.io import atomic_write_text

log = logging.getLogger(__name__)


def to_float_dict(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            if v.numel() != 1:
                continue
            v = v.item()
        if isinstance(v, int | float):
            out[str(k)] = float(v)
    return out


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write metrics as JSON atomically; NaN becomes null so the file stays valid JSON."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
    path = Path(path)
    atomic_write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
    log.info("wrote %s", path)
    return path


def finish_wandb() -> None:
    """Close the W&B run of this job, so each Hydra multirun job gets its own run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is not None:
        wandb.finish()
