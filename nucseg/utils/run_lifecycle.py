"""What happens around a run: writing metrics.json, closing W&B, keeping DDP ranks inside the Hydra job."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from nucseg.utils.atomic import atomic_write_text

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


def wandb_experiments(trainer: Any) -> list:
    """The `wandb.Run` objects of the trainer's WandbLoggers (empty when W&B is not used)."""
    from lightning.pytorch.loggers import WandbLogger

    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


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


# what Lightning's DDP launcher sets in the launching process (rank 0) and must not leak into the next job
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def hydra_job_for_ddp() -> Iterator[None]:
    """Let Lightning's `ddp` strategy start ranks > 0 for one job of a Hydra multirun (`-m`, Optuna).

    Lightning re-launches `sys.argv` with `hydra.run.dir=<hydra.run.dir>`. In a multirun that would start
    the whole sweep again in every rank, in a run directory that is not the job's. Inside this scope the
    command is this job's overrides in RUN mode and `hydra.run.dir` is the job's output directory; on exit
    the process group and the environment variables the launcher set are removed, so the next job of the
    sweep launches its own ranks. Outside a multirun, and in ranks > 0, it does nothing; where the cluster
    starts the ranks (SLURM tasks via the submitit launcher, torchrun) Lightning re-launches nothing and the
    rewritten command is never used.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import open_dict, read_write

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or "LOCAL_RANK" in os.environ:
        yield
        return
    hc: Any = HydraConfig.get()  # a DictConfig at run time (typed as the HydraConf dataclass)
    saved_argv, saved_dir = list(sys.argv), hc.run.dir
    saved_env = {k: os.environ.get(k) for k in _DIST_ENV}
    sys.argv = [sys.argv[0], *hc.overrides.task, "hydra.mode=RUN"]
    with read_write(hc), open_dict(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.argv = saved_argv
        with read_write(hc), open_dict(hc):
            hc.run.dir = saved_dir
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
