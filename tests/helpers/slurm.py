"""A real Slurm for the tests: `.ci/slurm.sh` installs and starts a one-node cluster where it can (root, apt),
and the overrides that fit Hydra's `slurm` launcher to that node (no GPUs, one CPU and little memory per job)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

from tests.helpers.paths import PROJECT_ROOT

SETUP_SCRIPT = PROJECT_ROOT / ".ci" / "slurm.sh"
CANNOT_INSTALL = 3  # the script's exit status where Slurm is missing and cannot be installed

# `hydra/launcher=slurm` on the one-node test cluster (conf/hydra/launcher/slurm.yaml asks for a GPU node)
SLURM_LAUNCHER = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
                  "hydra.launcher.mem_gb=2", "hydra.launcher.timeout_min=30"]


def start_slurm() -> str | None:
    """Make sure Slurm runs here; None when it does, else why it cannot (the tests skip with that reason)."""
    if shutil.which("sinfo") is None and os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root (.ci/slurm.sh)"
    proc = subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=900)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode == CANNOT_INSTALL:
        return f"Slurm cannot be installed here: {out.splitlines()[-1] if out else ''}"
    if proc.returncode != 0:
        raise RuntimeError(f".ci/slurm.sh failed ({proc.returncode}):\n{out[-4000:]}")
    return None


def job_state(job_id: str) -> str:
    """The job's state as squeue shows it (PENDING, RUNNING, ...); "" once Slurm no longer lists it."""
    proc = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def wait_for_state(job_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    state = job_state(job_id)
    while state not in states and time.monotonic() < deadline:
        time.sleep(0.2)
        state = job_state(job_id)
    return state
