"""Run `python -m nucseg.train` as a user would, in a subprocess, for the end-to-end scale tests
(DDP, multirun, Optuna, resume): these paths only exist when Hydra and Lightning own the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
