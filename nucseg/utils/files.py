"""Names of the files a run writes."""

from __future__ import annotations

import re

__all__ = ["natural_key", "safe_filename"]


def safe_filename(name: str, max_len: int = 120) -> str:
    """A file name (without suffix) from an image id: every run of characters other than ASCII letters, digits,
    '.', '_' and '-' becomes one '_', cut to `max_len` characters; "image" when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:max_len] or "image"


def natural_key(name: str) -> tuple:
    """Sort key that orders the digit runs of names as numbers: slice 2 before slice 10."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name))
