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

__all__ = ["EXTRAS", "Extra", "check_overrides", "missing_extra", "register_own_plugins"]


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
    """Exit with status 2 and one line on stderr when `overrides` need a missing extra; else make nucseg's own
    Hydra plugin known to Hydra (`register_own_plugins`)."""
    message = missing_extra(overrides)
    if message:
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    register_own_plugins()


def register_own_plugins() -> None:
    """Register nucseg's sweeper (hydra_plugins.nucseg_optuna_sweeper) with Hydra when optuna is installed.

    Hydra finds plugins by listing the `hydra_plugins` namespace package. A wheel install and a source checkout
    run from its root are listed; an editable install (`pip install -e .`) is not: setuptools' import hook
    imports the plugin but hides it from the listing, and `hparams_search=optuna` would fail with "Could not find
    'hydra/sweeper/nucseg_optuna'". Importing the config (its ConfigStore entry) and `Plugins.register` cover it.
    """
    if not _installed("optuna"):
        return
    try:
        from hydra.core.plugins import Plugins

        import hydra_plugins.nucseg_optuna_sweeper.config  # noqa: F401  (registers hydra/sweeper=nucseg_optuna)
        from hydra_plugins.nucseg_optuna_sweeper.sweeper import NucsegOptunaSweeper
    except ImportError:  # a partial install: Hydra reports the missing sweeper itself
        return
    Plugins.instance().register(NucsegOptunaSweeper)
