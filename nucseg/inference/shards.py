"""Split a prediction over jobs: `shard=i/n` predicts the i-th of n contiguous parts of the sorted input list
and writes its own tables (`summary.shard-i-of-n.csv`, ...); `merge=true` joins them into the tables of a
single run, byte for byte (the parts are contiguous, so the shards' rows in shard order are the run's rows).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nucseg.utils.atomic import atomic_write_bytes
from nucseg.utils.errors import DataNotFoundError

log = logging.getLogger(__name__)

__all__ = ["TABLES", "MergedTables", "merge_shards", "parse_shard", "select_shard", "shard_part", "shard_suffix"]

T = TypeVar("T")
TABLES = ("summary", "nuclei", "errors", "submission")  # submission.csv only with rle=true
_SHARD_TABLE = re.compile(r"^(summary|nuclei|errors|submission)\.shard-(\d+)-of-(\d+)\.csv$")
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(value: Any) -> tuple[int, int] | None:
    """'i/n' -> (i, n) for 0 <= i < n; None for anything else."""
    m = _SPEC.match(value) if isinstance(value, str) else None
    if m is None:
        return None
    index, count = int(m.group(1)), int(m.group(2))
    return (index, count) if 0 <= index < count else None


def shard_part(items: Sequence[T], index: int, count: int) -> list[T]:
    """The index-th of `count` contiguous, disjoint parts of `items` (sizes differ by at most one)."""
    n = len(items)
    return list(items[index * n // count:(index + 1) * n // count])


def shard_suffix(index: int, count: int) -> str:
    """The tables of shard `index` of `count`: summary<suffix>.csv, ..."""
    return f".shard-{index}-of-{count}"


def select_shard(files: Sequence[Path], stems: Sequence[str], spec: Any) -> tuple[list[Path], list[str], str]:
    """(files, output names, table suffix) of shard `spec` ('i/n'); everything and "" when `spec` is None.
    `stems` are those of the whole list, so a shard names its images as a single run does."""
    shard = parse_shard(spec)
    if shard is None:
        return list(files), list(stems), ""
    part = shard_part(range(len(files)), *shard)
    log.info("shard %d/%d: images %d-%d of %d", *shard, part[0] + 1 if part else 0, part[-1] + 1 if part else 0,
             len(files))
    return [files[i] for i in part], [stems[i] for i in part], shard_suffix(*shard)


@dataclass
class MergedTables:
    shards: int
    summary: list[dict[str, str]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def _found(out_dir: Path) -> dict[int, dict[str, dict[int, Path]]]:
    """count -> table -> index -> path of the shard tables in `out_dir`."""
    found: dict[int, dict[str, dict[int, Path]]] = {}
    for p in out_dir.iterdir() if out_dir.is_dir() else []:
        m = _SHARD_TABLE.match(p.name)
        if m and p.is_file():
            found.setdefault(int(m.group(3)), {}).setdefault(m.group(1), {})[int(m.group(2))] = p
    return found


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def merge_shards(out_dir: Path) -> MergedTables:
    """Write summary.csv, nuclei.csv, errors.csv (and submission.csv) of `out_dir` from its shard tables, then
    delete the shard tables. Missing shards, or tables of two different splits, raise DataNotFoundError
    before anything is written."""
    found = _found(out_dir)
    if not found:
        raise DataNotFoundError(f"merge: no shard tables (summary.shard-<i>-of-<n>.csv) in {out_dir}; run the "
                                f"shards first (shard=0/<n> ... shard=<n-1>/<n>, same output)")
    if len(found) > 1:
        raise DataNotFoundError(f"merge: shard tables of {len(found)} different splits in {out_dir} ("
                                + ", ".join(f"of-{n}" for n in sorted(found)) + "); delete the stale ones")
    count, tables = next(iter(found.items()))
    wanted = [t for t in TABLES if t != "submission" or t in tables]
    for table in wanted:
        missing = [i for i in range(count) if i not in tables.get(table, {})]
        if missing:
            raise DataNotFoundError(f"merge: shard(s) {', '.join(f'{i}/{count}' for i in missing)} not done: "
                                    f"no {table}{shard_suffix(missing[0], count)}.csv in {out_dir}; run them "
                                    "(again: finished images are skipped), then merge")
    merged: dict[str, bytes] = {}
    for table in wanted:
        parts = [tables[table][i].read_bytes() for i in range(count)]
        header = parts[0].split(b"\n", 1)[0] + b"\n"
        if any(not p.startswith(header) for p in parts):
            raise DataNotFoundError(f"merge: the {table} tables of the shards have different columns")
        merged[table] = header + b"".join(p[len(header):] for p in parts)
    result = MergedTables(count, _rows(merged["summary"]), _rows(merged["errors"]))
    images = [r["image"] for r in result.summary]
    if len(set(images)) < len(images):
        raise DataNotFoundError(f"merge: an image is in two shards in {out_dir}: the input folder changed "
                                "between the shards; rerun them")
    for table, data in merged.items():
        atomic_write_bytes(out_dir / f"{table}.csv", data)
    for paths in tables.values():
        for p in paths.values():
            p.unlink()
    return result
