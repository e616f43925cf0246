"""Run `python -m nucseg.train` as a user would, in a subprocess, for the end-to-end scale tests
(DDP, multirun, Optuna, resume): these paths only exist when Hydra and Lightning own the process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.config import FAST_OVERRIDES
from tests.helpers.paths import DATA_DIR, PROJECT_ROOT

# What these tests check needs checkpoints, not the evaluation/figure callbacks (tested elsewhere); no
# sanity-check validation. Keeps each real run to a few seconds of compute.
LEAN = ["trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1",
        "callbacks=[model_checkpoint,last_checkpoint,rich_progress_bar]"]


def train_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(NUCSEG_DATA_DIR=str(DATA_DIR), WANDB_MODE="offline", WANDB_SILENT="true",
               HYDRA_FULL_ERROR="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def train_cmd(*overrides: str, cache_dir: Path, multirun: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "nucseg.train"]
    if multirun:
        cmd.append("-m")
    return cmd + [*FAST_OVERRIDES, f"paths.cache_dir={cache_dir}", *overrides]


def run_train(*overrides: str, cache_dir: Path, multirun: bool = False, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run to completion; fail with the end of the log if the command fails."""
    proc = subprocess.run(train_cmd(*overrides, cache_dir=cache_dir, multirun=multirun), cwd=PROJECT_ROOT,
                          env=env or train_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"nucseg.train exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}")
    return proc


def resumable(epochs: int, batches: int) -> list[str]:
    """Overrides of a short run with a resume point (last.ckpt) after every optimizer step (the default is every
    10 minutes of training) and no test: for the tests that interrupt a run and resume it."""
    return [f"trainer.max_epochs={epochs}", f"trainer.limit_train_batches={batches}",
            "callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.last_checkpoint.train_time_interval=null",
            "test=false"]


def wait_for_mid_epoch_checkpoint(last: Path, proc: subprocess.Popen, max_step: int, timeout: float = 240) -> None:
    """Return once `last` (a run's last.ckpt) holds a step between 1 and `max_step` of the first epoch, i.e. the
    run started by `proc` is in the middle of it; fail with `proc`'s output if it ends first."""
    from nucseg.training.resume import checkpoint_progress  # torch: only for the tests that wait on a run

    seen = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be interrupted:\n{out[-4000:]}")
        if last.is_file() and last.stat().st_mtime_ns != seen:
            seen = last.stat().st_mtime_ns
            progress = checkpoint_progress(last)
            if progress["epochs_done"] == 0 and 1 <= progress["global_step"] <= max_step:
                return
        time.sleep(0.05)
    pytest.fail(f"no mid-epoch {last} within {timeout} s")
