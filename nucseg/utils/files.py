"""Names of the files a run writes."""

from __future__ import annotations

import re

__all__ = ["safe_filename"]


def safe_filename(name: str, max_len: int = 120) -> str:
    """A file name (without suffix) from an image id: every run of characters other than ASCII letters, digits,
    '.', '_' and '-' becomes one '_', cut to `max_len` characters; "image" when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name))[:max_len] or "image"
