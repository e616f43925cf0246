"""Resuming killed runs: find the checkpoint to continue from, write checkpoints so a kill never leaves half a
file, and keep one W&B run id per output directory so a resumed run continues the same W&B run.
"""

from __future__ import annotations

import logging
import secrets
import string
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, open_dict

from nucseg.utils.atomic import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
WANDB_ID_FILE = "wandb_id.txt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """`torch.save` through `nucseg.utils.atomic.atomic_write`: a temporary file beside the target, fsync, rename.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp
    directory; when that is another file system than the run directory (node-local /tmp, network output
    dirs on clusters), the final move is a copy, and a kill during it leaves a truncated `last.ckpt`.
    Non-local paths (s3://, gs://, ...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)
        atomic_write(str(path).removeprefix("file://"), lambda f: torch.save(checkpoint, f))


def remove_stale_temporaries(ckpt_dir: Path) -> None:
    """Delete half-written `.<name>.ckpt.*.tmp` files a killed run left behind (they can be large)."""
    for tmp in ckpt_dir.glob(".*.ckpt.*.tmp"):
        tmp.unlink(missing_ok=True)
        log.info("removed stale temporary checkpoint %s", tmp)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """Turn the `ckpt_path` setting into a file, or None to start from scratch.

    - None: start from scratch.
    - "last": `<output_dir>/checkpoints/last.ckpt` if it exists, else start from scratch (so the same
      command can be used for the first launch and for every re-launch after a kill or pre-emption).
    - a run directory: its `checkpoints/last.ckpt` (must exist).
    - a checkpoint file (must exist); remote URLs are passed on unchecked.
    """
    if ckpt_path is None or str(ckpt_path).strip() == "":
        return None
    value = str(ckpt_path)
    if value == "last":
        ckpt_dir = Path(output_dir) / CHECKPOINT_DIR
        remove_stale_temporaries(ckpt_dir)
        last = ckpt_dir / LAST
        if last.is_file():
            log.info("resuming from %s", last)
            return str(last)
        log.info("ckpt_path=last: no %s yet; starting from scratch", last)
        return None
    if "://" in value and not value.startswith("file://"):
        return value
    path = Path(value.removeprefix("file://")).expanduser()
    if path.is_dir():
        last = path / CHECKPOINT_DIR / LAST if (path / CHECKPOINT_DIR).is_dir() else path / LAST
        if not last.is_file():
            raise FileNotFoundError(f"ckpt_path: {path} is a directory without {CHECKPOINT_DIR}/{LAST} "
                                    "(expected a run directory or a .ckpt file)")
        remove_stale_temporaries(last.parent)
        return str(last)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {path} (expected a .ckpt file, a run "
                                "directory, or 'last')")
    return str(path)


def checkpoint_progress(path: str | Path) -> dict[str, int]:
    """Where a Lightning checkpoint stands: `epochs_done` (finished training epochs), `batches_done` (in the
    current epoch) and `global_step` (optimizer steps). The checkpoint's own `epoch` field is ambiguous: it is
    the running epoch, saved before or after the increment depending on which hook saved it."""
    fs = get_filesystem(str(path))
    with fs.open(str(path), "rb") as f:
        ckpt = torch.load(f, map_location="cpu", weights_only=False)
    fit = ckpt["loops"]["fit_loop"]
    return {"epochs_done": int(fit["epoch_progress"]["current"]["completed"]),
            "batches_done": int(fit["epoch_loop.batch_progress"]["current"]["completed"]),
            "global_step": int(ckpt["global_step"])}


def wandb_run_id(output_dir: str | Path) -> str | None:
    """The W&B run id of this output directory: read from `wandb_id.txt`, or made and stored by rank 0.

    Ranks > 0 never start a W&B run (Lightning's WandbLogger is rank-zero only), so they return what is
    there, possibly None.
    """
    path = Path(output_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    if getattr(rank_zero_only, "rank", 0) != 0:
        return None
    alphabet = string.ascii_lowercase + string.digits  # the form of W&B's own run ids
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    atomic_write_text(path, run_id + "\n")
    return run_id


def pin_wandb_run(cfg: DictConfig, output_dir: str | Path) -> None:
    """Give every WandbLogger without an explicit `id` this output directory's run id and `resume="allow"`:
    a re-launched run (same output directory) continues the same W&B run; a new directory gets a new run."""
    loggers = cfg.get("logger") or {}
    for name, conf in loggers.items():
        if not isinstance(conf, DictConfig) or not str(conf.get("_target_", "")).endswith("WandbLogger"):
            continue
        with open_dict(conf):
            if not conf.get("id"):
                conf.id = wandb_run_id(output_dir)
            if conf.get("resume") is None:
                conf.resume = "allow"
        log.info("logger.%s: W&B run id %s", name, conf.id)


def keep_csv_history(cfg: DictConfig) -> None:
    """On resume, point each CSVLogger at a fresh `resume_<k>` version folder: Lightning's CSVLogger deletes
    an existing metrics.csv in its folder, which would throw away the killed run's history."""
    loggers = cfg.get("logger") or {}
    for name, conf in loggers.items():
        if not isinstance(conf, DictConfig) or not str(conf.get("_target_", "")).endswith("CSVLogger"):
            continue
        base = Path(str(conf.save_dir)) / str(conf.get("name") or "lightning_logs")
        version = conf.get("version")
        if version is None or not (base / str(version) / "metrics.csv").is_file():
            continue  # None: Lightning picks a new version_<n> folder itself
        k = 1
        while (base / f"resume_{k}").exists():
            k += 1
        with open_dict(conf):
            conf.version = f"resume_{k}"
        log.info("logger.%s: resumed run logs to %s", name, base / conf.version)
