"""OmegaConf resolvers used by the configs, registered once on import of `nucseg.utils`."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def wandb_offline() -> bool:
    """True when W&B must run offline: WANDB_MODE=offline/disabled, or no API key configured anywhere."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online" or os.environ.get("WANDB_API_KEY"):
        return False
    try:
        rc = netrc.netrc(os.environ.get("NETRC") or None)
        return rc.authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return True


def rank_suffix() -> str:
    """"" in the first (or only) process, "_rank<k>" in DDP rank k, so each rank logs to its own file.

    Reads the variables Lightning's DDP launcher, torchrun and SLURM set, in Lightning's order.
    """
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(var)
        if value is not None:
            return "" if value == "0" else f"_rank{value}"
    return ""


def register_resolvers() -> None:
    for name, fn in {
        "nucseg.root": lambda: str(PROJECT_ROOT),
        "nucseg.wandb_offline": wandb_offline,
        "nucseg.rank_suffix": rank_suffix,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
