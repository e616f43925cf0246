"""Loops run outside Lightning's own, over the validation split (e.g. the calibrate stage before the test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from nucseg.utils.progress import logged_progress

__all__ = ["has_validation", "validation_batches"]


def has_validation(datamodule: Any) -> bool:
    """Whether `datamodule` has validation images to loop over (not, e.g., `nucseg.evaluate` on a folder)."""
    if datamodule is None or not hasattr(datamodule, "val_dataloader"):
        return False
    splits = getattr(datamodule, "splits", None)
    return bool(splits.get("val")) if isinstance(splits, dict) else True


def validation_batches(datamodule: Any, limit: Any = None, max_images: float | None = None,
                       label: str = "validation pass", interval_s: float | None = None) -> Iterator[dict]:
    """The validation split's batches (whole images, one a batch), honouring `trainer.limit_val_batches`
    (`limit`: a count or a fraction) and `max_images`; with `interval_s`, a plain progress line
    (`<label> 12/40 images ...`) at most that often: such a pass can take minutes."""
    loader = datamodule.val_dataloader()
    n = len(loader)
    if isinstance(limit, int):
        n = min(n, limit)
    elif limit is not None and limit < 1.0:
        n = max(1, int(n * limit)) if limit > 0 else 0
    if max_images is not None:
        n = int(min(n, max_images))
    yield from logged_progress(_first(loader, n), n, label, "image", interval_s)


def _first(loader: Any, n: int) -> Iterator[dict]:
    for i, batch in enumerate(loader):
        if i >= n:
            break
        yield batch
