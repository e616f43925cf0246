"""The DSB2018 test sets released as images plus a run-length-encoded solution CSV (stage1_solution.csv,
stage2_solution_final.csv): `ImageId,EncodedPixels[,Height,Width,Usage]`, one row per nucleus, rows with
Usage=Ignored not counted (`nucseg.data.rle` decodes the masks)."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np

from nucseg.data.io import probe_image, read_raw, to_rgb
from nucseg.data.normalize import normalize
from nucseg.data.rle import rle_decode
from nucseg.data.source import Record, Source
from nucseg.utils.errors import DataNotFoundError, ImageReadError

__all__ = ["DSB2018SolutionSource", "read_solution_csv"]

log = logging.getLogger(__name__)


def read_solution_csv(csv_path: str | os.PathLike, usage: list[str] | None = None
                      ) -> dict[str, dict]:
    """Parse a solution/submission CSV into {ImageId: {"rles": [...], "shape": (H, W) or None, "line": n}}.

    `usage`: keep only rows whose Usage is listed; None keeps every row except Usage=Ignored. Rows are kept in
    file order, so nucleus k of an image is its k-th row.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataNotFoundError(f"solution CSV not found: {csv_path} (expected the Kaggle "
                                "ImageId,EncodedPixels,Height,Width,Usage file, e.g. stage1_solution.csv)")
    out: dict[str, dict] = {}
    dropped: dict[str, int] = defaultdict(int)
    with csv_path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if not {"ImageId", "EncodedPixels"} <= fields:
            raise ValueError(f"{csv_path}: expected a header with ImageId,EncodedPixels[,Height,Width,Usage]; "
                             f"got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            row_usage = (row.get("Usage") or "").strip()
            keep = row_usage in usage if usage is not None else row_usage != "Ignored"
            if not keep:
                dropped[row_usage or "<empty>"] += 1
                continue
            image_id = (row["ImageId"] or "").strip()
            if not image_id:
                raise ValueError(f"{csv_path}, line {line}: empty ImageId")
            entry = out.setdefault(image_id, {"rles": [], "shape": None, "line": line})
            if row.get("Height") and row.get("Width"):
                try:
                    shape = (int(row["Height"]), int(row["Width"]))
                except ValueError as exc:
                    raise ValueError(f"{csv_path}, line {line}: Height/Width must be integers, got "
                                     f"{row['Height']!r}/{row['Width']!r}") from exc
                if entry["shape"] not in (None, shape):
                    raise ValueError(f"{csv_path}, line {line}: ImageId {image_id} has size {shape} here but "
                                     f"{entry['shape']} on an earlier row")
                entry["shape"] = shape
            rle = (row["EncodedPixels"] or "").strip()
            if rle:
                entry["rles"].append((line, rle))
    if dropped:
        log.info("%s: skipped rows by Usage: %s", csv_path, dict(dropped))
    if not out:
        raise DataNotFoundError(f"{csv_path}: no rows left (usage filter {usage!r}; rows dropped: {dict(dropped)})")
    return out


class DSB2018SolutionSource(Source):
    """Images (Kaggle layout `<root>/<ImageId>/images/<ImageId>.png`, or flat `<root>/<ImageId>.png`) with
    instance labels decoded from a run-length-encoded solution CSV: row k of an image is nucleus k.

    Evaluates on the released stage-1/stage-2 solutions without converting them to per-nucleus PNGs; gives
    exactly the labels `DSB2018Source` reads from the equivalent Kaggle-layout directory.
    """

    name = "dsb2018-solution"

    def __init__(self, images_root: str | os.PathLike, csv_path: str | os.PathLike,
                 usage: list[str] | None = None):
        self.images_root, self.csv_path = Path(images_root), Path(csv_path)
        if not self.images_root.is_dir():
            raise DataNotFoundError(f"DSB2018 test images not found: {self.images_root} is not a directory "
                                    "(expected <ImageId>/images/<ImageId>.png or <ImageId>.png inside; "
                                    "`python -m nucseg.data.download dsb2018` fetches stage1_test)")
        self.rows = read_solution_csv(self.csv_path, list(usage) if usage is not None else None)
        missing = [i for i in self.rows if self._find_image(i) is None]
        if missing:
            raise DataNotFoundError(
                f"{len(missing)} ImageId(s) of {self.csv_path} have no image under {self.images_root} (looked for "
                f"<ImageId>/images/<ImageId>.png and <ImageId>.png): {missing[:5]}"
            )
        listed = set(self.rows)
        extra = [d.name for d in self.images_root.iterdir() if d.name not in listed and d.stem not in listed
                 and not d.name.startswith(".")]
        if extra:
            log.warning("%s: %d entr%s not in %s are not evaluated: %s", self.images_root, len(extra),
                        "y is" if len(extra) == 1 else "ies are", self.csv_path.name, sorted(extra)[:5])
        key = f"{self.images_root.resolve()}|{self.csv_path.resolve()}|{usage}"
        self.name = f"dsb2018sol-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    def _find_image(self, image_id: str) -> Path | None:
        for p in (self.images_root / image_id / "images" / f"{image_id}.png", self.images_root / f"{image_id}.png"):
            if p.is_file():
                return p
        return None

    def image_path(self, record_id: str) -> Path:
        p = self._find_image(record_id)
        if p is None:
            raise ImageReadError(f"{self.images_root / record_id}: image of ImageId {record_id} is gone")
        return p

    def location(self, record_id: str) -> str:
        return f"{self.csv_path} (ImageId {record_id})"

    def records(self) -> list[Record]:
        return [Record(i) for i in sorted(self.rows)]

    def fingerprint(self, record_id: str) -> str:
        st, img = self.csv_path.stat(), self.image_path(record_id).stat()
        return f"{st.st_size}:{st.st_mtime_ns}:{img.st_mtime_ns}"

    def check(self, record_id: str) -> tuple[int, int]:
        size = probe_image(self.image_path(record_id))
        expected = self.rows[record_id]["shape"]
        if expected is not None and tuple(expected) != size:
            raise ImageReadError(f"{self.csv_path}, line {self.rows[record_id]['line']}: ImageId {record_id} has "
                                 f"Height,Width {expected} but its image {self.image_path(record_id)} is {size}")
        return size

    def load(self, record_id: str) -> tuple[np.ndarray, np.ndarray]:
        path = self.image_path(record_id)
        raw = to_rgb(read_raw(path))
        shape = raw.shape[:2]
        entry = self.rows[record_id]
        if entry["shape"] is not None and tuple(entry["shape"]) != shape:
            raise ImageReadError(f"{self.csv_path}, line {entry['line']}: ImageId {record_id} has Height,Width "
                                 f"{entry['shape']} but its image {path} is {shape}")
        labels = np.zeros(shape, np.int32)
        overlap = 0
        for k, (line, rle) in enumerate(entry["rles"], start=1):
            try:
                m = rle_decode(rle, shape)
            except ValueError as exc:
                raise ImageReadError(f"{self.csv_path}, line {line} (ImageId {record_id}): {exc}") from exc
            overlap += int(np.count_nonzero(m & (labels > 0)))
            labels[m] = k
        if overlap:
            log.warning("%s, ImageId %s: %d pixels belong to more than one nucleus; kept the later row",
                        self.csv_path, record_id, overlap)
        return normalize(raw, name=path), labels
