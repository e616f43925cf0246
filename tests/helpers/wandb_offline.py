"""Read an offline W&B run as `wandb sync` would send it: the records of its `run-<id>.wandb` file.

The file is W&B's variant of the LevelDB log format: a 7-byte header (`:W&B`, magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each `crc32c (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle,
4: last) | data`; a block's tail shorter than a chunk header is zero padding. The joined chunks of one record
are a serialised `wandb_internal_pb2.Record`. (wandb >= 0.19 no longer ships a Python reader of this file.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

__all__ = ["artifact_records", "read_records", "run_dir"]

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_dir(wandb_dir: Path) -> Path:
    """The one offline run under `wandb_dir` (`<save_dir>/wandb`)."""
    runs = sorted(Path(wandb_dir).glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def read_records(run: Path) -> list[Any]:
    """Every record of the run's `.wandb` file, in order (`Record.WhichOneof("record_type")` names its kind)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(Path(run).glob("run-*.wandb")).read_bytes()
    assert data.startswith(HEADER), data[:8]
    records, parts, pos = [], [], len(HEADER)
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # padding at the end of a block
            pos += left
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if kind == 0 and length == 0:  # zero padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        assert kind in (FULL, FIRST, MIDDLE, LAST), (kind, pos)
        parts = [chunk] if kind in (FULL, FIRST) else [*parts, chunk]
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def artifact_records(run: Path, type_: str | None = None) -> list[dict[str, Any]]:
    """The run's logged artifacts as dicts: name, type, aliases, metadata (parsed) and files (path: local
    staging copy) of the manifest."""
    out = []
    for record in read_records(run):
        if record.WhichOneof("record_type") != "artifact":
            continue
        art = record.artifact
        if type_ is not None and art.type != type_:
            continue
        out.append({"name": art.name, "type": art.type, "aliases": list(art.aliases),
                    "metadata": json.loads(art.metadata or "{}"),
                    "files": {e.path: e.local_path for e in art.manifest.contents},
                    "manifest_file_path": art.manifest.manifest_file_path})
    return out
