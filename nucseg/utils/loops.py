"""Loops that callbacks run outside Lightning's own (e.g. over the validation split at test start)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nucseg.utils.progress import logged_progress, progress_interval

__all__ = ["has_validation", "validation_batches"]


def has_validation(trainer: Any) -> bool:
    """Whether the run has validation images to loop over (not, e.g., `nucseg.evaluate` on a folder)."""
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "val_dataloader"):
        return False
    splits = getattr(dm, "splits", None)
    return bool(splits.get("val")) if isinstance(splits, dict) else True


def validation_batches(trainer: Any, max_images: int | None = None, purpose: str = "this setting",
                       label: str = "validation pass") -> Iterator[dict]:
    """The validation split's batches, honouring `trainer.limit_val_batches` and `max_images`. While the run's
    progress callback writes plain lines (a log file, nucseg.callbacks.progress_log), the loop logs its own,
    `<label> 12/40 images ...`: such a pass at the start of the test can take minutes.

    Raises ValueError naming `purpose` when the run has no validation split (e.g. `nucseg.evaluate` on a folder).
    """
    dm = getattr(trainer, "datamodule", None)
    if dm is None or not hasattr(dm, "val_dataloader"):
        raise ValueError(f"{purpose} needs the validation split (a datamodule with val_dataloader)")
    loader = dm.val_dataloader()
    n = len(loader)
    lim = trainer.limit_val_batches
    if isinstance(lim, int):
        n = min(n, lim)
    elif lim is not None and lim < 1.0:
        n = max(1, int(n * lim)) if lim > 0 else 0
    if max_images is not None:
        n = min(n, int(max_images))
    yield from logged_progress(_first(loader, n), n, label, "image", progress_interval(trainer))


def _first(loader: Any, n: int) -> Iterator[dict]:
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch
