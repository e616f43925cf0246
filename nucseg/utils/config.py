"""OmegaConf resolvers used by the configs, registered once on import of `nucseg.utils`."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
# the configs: inside the package in an installed wheel (pyproject maps the checkout's top-level conf/ to
# nucseg/conf), at the root of a source checkout otherwise
CONF_DIR = _PACKAGE_DIR / "conf" if (_PACKAGE_DIR / "conf").is_dir() else _PACKAGE_DIR.parent / "conf"
SOURCE_CHECKOUT = CONF_DIR.parent != _PACKAGE_DIR


def root_dir() -> Path:
    """Where `outputs/`, `.cache/` and (by default) `data/` live: `$NUCSEG_ROOT`; else the root of a source
    checkout; else, for an installed wheel, the working directory (never site-packages)."""
    if os.environ.get("NUCSEG_ROOT"):
        return Path(os.environ["NUCSEG_ROOT"]).expanduser().resolve()
    return CONF_DIR.parent if SOURCE_CHECKOUT else Path.cwd()


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


def align_data_with_checkpoint(cfg: DictConfig, hparams: Mapping[str, Any]) -> None:
    """Prepare the data the way the checkpoint's model was trained: data.targets and data.clahe from it."""
    with open_dict(cfg):
        for key in ("targets", "clahe"):
            if key in cfg.data and hparams.get(key) is not None and cfg.data[key] != hparams[key]:
                logging.getLogger(__name__).info("data.%s=%s set from the checkpoint (was %s)", key,
                                                 hparams[key], cfg.data[key])
                cfg.data[key] = hparams[key]


def _launch_time(fmt: str) -> str:
    """`${nucseg.launch_time:fmt}`: `${now:fmt}` that all externally started DDP ranks agree on."""
    from nucseg.utils.cluster import launch_time

    return launch_time(fmt)


def register_resolvers() -> None:
    resolvers: dict[str, Callable[..., Any]] = {
        "nucseg.root": lambda: str(root_dir()),
        "nucseg.wandb_offline": wandb_offline,
        "nucseg.rank_suffix": rank_suffix,
        "nucseg.launch_time": _launch_time,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
