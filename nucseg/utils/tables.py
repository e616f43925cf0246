"""Tables written by the entry points (predict's summary / nuclei / errors, evaluate's per-image rows)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nucseg.data.io import atomic_write_text

__all__ = ["write_csv"]


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
