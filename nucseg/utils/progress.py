"""The one rich progress bar of the command-line tools (prediction over files, downloads)."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(enabled: bool = True, label: str = "", transfer: bool = False) -> Any:
    """A `rich.progress.Progress` (use it as a context manager): `label` before each task's description, the
    bar, then done / total items and elapsed time, or with `transfer` bytes and speed; the time remaining.
    Disabled (draws nothing) when `enabled` is false."""
    from rich import progress as rp

    counts = ([rp.DownloadColumn(), rp.TransferSpeedColumn()] if transfer
              else [rp.MofNCompleteColumn(), rp.TimeElapsedColumn()])
    return rp.Progress(rp.TextColumn(f"{label}{{task.description}}"), rp.BarColumn(), *counts,
                       rp.TimeRemainingColumn(), disable=not enabled, transient=False)
