"""The optional parts of nucseg (pip extras) and the one-line error a command gives when it needs a missing one.

Hydra plugins are found at compose time, and nucseg's own sweeper (hydra_plugins.nucseg_optuna_sweeper, shipped
with nucseg) needs optuna when it runs: without the extra, `hparams_search=optuna` would end in a traceback. The
entry points check their overrides first instead.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["EXTRAS", "Extra", "check_overrides", "missing_extra"]


@dataclass(frozen=True)
class Extra:
    name: str  # `pip install "nucseg[<name>]"`
    module: str  # importable when the extra is installed
    triggers: tuple[str, ...]  # override prefixes that need it


EXTRAS = (
    Extra("sweep", "optuna", ("hparams_search=optuna", "hydra/sweeper=nucseg_optuna")),
    Extra("slurm", "hydra_plugins.hydra_submitit_launcher", ("hydra/launcher=slurm", "hydra/launcher=submitit")),
)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def missing_extra(overrides: Sequence[str]) -> str | None:
    """The message for the first override that needs an extra that is not installed, else None."""
    for arg in overrides:
        key = arg.lstrip("+~")
        for extra in EXTRAS:
            if key.startswith(extra.triggers) and not _installed(extra.module):
                return (f"{key} needs the `{extra.name}` extra ({extra.module} is not installed): "
                        f"pip install \"nucseg[{extra.name}]\"")
    return None


def check_overrides(overrides: Sequence[str]) -> None:
    """Exit with status 2 and one line on stderr when `overrides` need a missing extra."""
    message = missing_extra(overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
