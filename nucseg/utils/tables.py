"""Tables written by the entry points (predict's summary / nuclei / errors, evaluate's per-image rows)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nucseg.utils.atomic import atomic_write_text

__all__ = ["PER_IMAGE_FIRST", "merge_rows", "write_csv", "write_per_image"]


def write_csv(path: str | Path, columns: Sequence[str], rows: Iterable[dict[str, Any]],
              digits: int | None = None) -> None:
    """Write `rows` under the header `columns` atomically; keys outside `columns` are ignored.

    None and NaN become empty cells (a spreadsheet reads them as missing); with `digits`, floats are rounded.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v, digits) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _cell(v: Any, digits: int | None) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and digits is not None:
        return round(v, digits)
    return v


PER_IMAGE_FIRST = ("id", "height", "width", "dice", "iou", "dsb_score", "ap50", "count_error", "n_true", "n_pred",
                   "certainty", "ood_score", "needs_review", "review_reason")


def merge_rows(base: list[dict], *others: list[dict]) -> list[dict]:
    """Join per-image rows from several callbacks on `id` (order of `base`)."""
    by_id = {r["id"]: dict(r) for r in base}
    for rows in others:
        for r in rows:
            if r.get("id") in by_id:
                for k, v in r.items():
                    if not k.startswith("_"):
                        by_id[r["id"]].setdefault(k, v)
    return list(by_id.values())


def write_per_image(path: Path, rows: list[dict]) -> None:
    """per_image.csv: the known columns first (those present), then any others in name order."""
    extra = sorted({k for r in rows for k in r} - set(PER_IMAGE_FIRST))
    write_csv(path, [c for c in PER_IMAGE_FIRST if any(c in r for r in rows)] + extra, rows)
