"""Runs started by a cluster rather than by nucseg: DDP ranks started by `torchrun` or `srun`, and Slurm jobs
that Slurm itself re-queues (`scontrol requeue`, pre-emption, a node failure).

- `launch_time`: the `${nucseg.launch_time:...}` resolver of the run directory. Each externally started rank
  composes its own Hydra config; `${now:...}` could fall in different seconds and give each rank its own run
  directory. Here every rank of one launch reads the same time: the start of the process that started them
  (the torchrun agent, or the node's slurmstepd for `srun`).
- `rank_overrides`: ranks > 0 started externally write no `.hydra/` (rank 0 does), as Lightning's own
  re-launch does.
- `requeued_ckpt_path`: a re-queued Slurm job runs its command again from the start; with `ckpt_path` unset
  it continues from the run directory's `last.ckpt` (`SLURM_RESTART_COUNT` > 0), so it never trains twice.
- `rank_zero_decides`: one choice (e.g. `module.train_precision=auto`) for all ranks, rank 0's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from torch import distributed as dist

__all__ = ["external_rank", "launch_time", "rank_overrides", "rank_zero_decides", "requeued_ckpt_path"]

log = logging.getLogger(__name__)

# the launch time can be given explicitly (e.g. the same value exported on every node of a multi-node torchrun)
LAUNCH_TIME_ENV = "NUCSEG_LAUNCH_TIME"


def external_rank(env: Mapping[str, str] | None = None) -> int | None:
    """This process's global rank when a cluster tool started it as one of several DDP ranks (torchrun:
    `RANK` with `TORCHELASTIC_RUN_ID`; srun: `SLURM_PROCID` in a step of more than one task); else None.
    Lightning's own re-launch (`LOCAL_RANK` without either) is not external."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        return int(env.get("RANK", "0"))
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
        return int(env.get("SLURM_PROCID", "0"))
    return None


def _process_start(pid: int) -> float | None:
    """Epoch seconds at which process `pid` started (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


_LAUNCH: dict[str, float] = {}


def launch_seconds() -> float:
    """The time this launch started, in epoch seconds: `$NUCSEG_LAUNCH_TIME` if set; in externally started
    ranks, when their parent (the torchrun agent or slurmstepd) started; else now. Fixed per process."""
    if "t" not in _LAUNCH:
        given = os.environ.get(LAUNCH_TIME_ENV)
        start = float(given) if given else None
        if start is None and external_rank() is not None:
            start = _process_start(os.getppid())
        _LAUNCH["t"] = time.time() if start is None else start
    return _LAUNCH["t"]


def launch_time(fmt: str) -> str:
    """`launch_seconds()` formatted like Hydra's `${now:fmt}`."""
    return datetime.fromtimestamp(int(launch_seconds())).strftime(fmt)


def rank_overrides(argv: list[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Overrides to add to `argv` in an externally started rank > 0: `hydra.output_subdir=null` (rank 0
    alone writes `.hydra/`), unless the command sets it."""
    rank = external_rank(env)
    if not rank or "-m" in argv or "--multirun" in argv:
        return []
    return [] if any(a.startswith("hydra.output_subdir=") for a in argv) else ["hydra.output_subdir=null"]


def requeued_ckpt_path(ckpt_path: Any, env: Mapping[str, str] | None = None) -> Any:
    """`ckpt_path`, or "last" where it is unset and this is a Slurm job Slurm has re-queued and restarted
    (`SLURM_RESTART_COUNT` > 0): the restarted job runs the same command in the same run directory."""
    env = os.environ if env is None else env
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    if ckpt_path is None and restarts > 0:
        log.info("Slurm job %s restarted (%d) after a re-queue: ckpt_path=last", env.get("SLURM_JOB_ID"), restarts)
        return "last"
    return ckpt_path


def rank_zero_decides(value: Any) -> Any:
    """Rank 0's `value` in every rank (a broadcast; every rank must call it); `value` outside DDP."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
