"""The installed nucseg's version (what `nucseg --version`, checkpoints' metadata and W&B artifacts report)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_version"]


def package_version() -> str:
    """The version of the installed distribution; "0+unknown" for a source tree on sys.path without an install."""
    try:
        return version("nucseg")
    except PackageNotFoundError:
        return "0+unknown"
