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


def register_resolvers() -> None:
    for name, fn in {
        "nucseg.root": lambda: str(PROJECT_ROOT),
        "nucseg.wandb_offline": wandb_offline,
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
