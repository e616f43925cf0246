"""The 2018 Data Science Bowl nuclei in the Kaggle layout: `<root>/<ImageId>/images/<ImageId>.png` and
`<root>/<ImageId>/masks/*.png` (one binary PNG per nucleus).

Per-nucleus masks are merged into one instance label map (nucleus k has value k), which gives both the binary
training target and the instances needed for counting and the official score. Images are grouped by imaging
type (fluorescence, brightfield, stained tissue) so that splits keep the mix of the whole set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from nucseg.data.acquisitions import (
    ACQUISITION_THRESHOLD,
    acquisition_features,
    cluster_acquisitions,
    imaging_type,
)
from nucseg.data.io import is_image_file, normalize, probe_image, read_raw, to_rgb
from nucseg.data.source import Record, Source, load_json
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.errors import DataNotFoundError, ImageReadError

log = logging.getLogger(__name__)

DSB2018_HELP = (
    "Get the data from the Kaggle competition 'data-science-bowl-2018' (stage1_train.zip; "
    "`kaggle competitions download -c data-science-bowl-2018`) or from the Broad Bioimage Benchmark "
    "Collection (BBBC038, https://bbbc.broadinstitute.org/BBBC038), or run `python -m nucseg.data.download dsb2018`. "
    "Unpack it so that <data_dir>/dsb2018/stage1_train/<ImageId>/images/<ImageId>.png exists, then set "
    "NUCSEG_DATA_DIR=<data_dir> or pass paths.data_dir=<data_dir> (or data.source.root=<dir> directly)."
)


INDEX_VERSION = 2  # 2: per-image acquisition statistics


def merge_masks(mask_paths: list[Path], shape: tuple[int, int] | None = None) -> np.ndarray:
    """Merge one-object-per-file binary masks into an int32 label map (object i -> label i+1).

    Pixels claimed by two masks go to the later one and are reported: the community fixes remove overlaps,
    but a user's copy of the original release may still have a few.
    """
    labels: np.ndarray | None = None
    overlap = 0
    for k, p in enumerate(sorted(mask_paths), start=1):
        m = read_raw(p)
        if m.ndim == 3:
            m = m[..., 0]
        if labels is None:
            labels = np.zeros(shape or m.shape, np.int32)
        if m.shape != labels.shape:
            raise ImageReadError(f"{p}: mask size {m.shape} differs from its image size {labels.shape}")
        fg = m > 0
        overlap += int(np.count_nonzero(fg & (labels > 0)))
        labels[fg] = k
    if labels is None:
        raise ImageReadError("no mask files given")
    if overlap:
        log.warning("%s: %d pixels belong to more than one nucleus mask; kept the later mask",
                    mask_paths[0].parent, overlap)
    return labels


class DSB2018Source(Source):
    """Kaggle-layout directory (stage1_train, or a stage1_test with masks)."""

    name = "dsb2018"

    def __init__(self, root: str | os.PathLike, index_dir: str | os.PathLike | None = None,
                 require_masks: bool = True, acquisition_threshold: float = ACQUISITION_THRESHOLD):
        self.root = Path(root)
        self.acquisition_threshold = float(acquisition_threshold)
        self.require_masks = require_masks
        self.index_dir = Path(index_dir) if index_dir else None
        self._warned: set[Path] = set()
        if not self.root.is_dir():
            raise DataNotFoundError(f"DSB2018 data not found: looked for the directory {self.root}. {DSB2018_HELP}")
        entries = sorted(self.root.iterdir())
        self._ids = [d.name for d in entries if d.is_dir() and (d / "images" / f"{d.name}.png").is_file()]
        skipped = [d.name for d in entries if d.name not in self._ids and not d.name.startswith(".")]
        if skipped and self._ids:
            log.warning("%s: ignored %d entr%s that are not <ImageId>/images/<ImageId>.png samples: %s",
                        self.root, len(skipped), "y" if len(skipped) == 1 else "ies", skipped[:5])
        if not self._ids:
            raise DataNotFoundError(
                f"DSB2018 data root {self.root} exists but holds no <ImageId>/images/<ImageId>.png samples. "
                f"{DSB2018_HELP}"
            )
        self.name = f"dsb2018-{hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]}"

    def image_path(self, record_id: str) -> Path:
        return self.root / record_id / "images" / f"{record_id}.png"

    def mask_paths(self, record_id: str) -> list[Path]:
        d = self.root / record_id / "masks"
        if not d.is_dir():
            return []
        paths: list[Path] = []
        stray: list[Path] = []
        for p in sorted(d.iterdir()):
            (paths if is_image_file(p) else stray).append(p)
        if stray and d not in self._warned:  # once per folder: fingerprint() lists masks on every load
            self._warned.add(d)
            log.warning("%s: ignored %d non-image file(s) in masks/: %s", d, len(stray), [s.name for s in stray[:3]])
        return paths

    def location(self, record_id: str) -> str:
        return str(self.root / record_id)

    def check(self, record_id: str) -> tuple[int, int]:
        """Image header readable (PNG checksums verified) and, when masks are required, masks/ not empty.

        The one-PNG-per-nucleus masks are not opened here (tens of thousands of files); a mask whose size
        differs from its image fails when the sample is first loaded, with the mask's path in the message.
        """
        size = probe_image(self.image_path(record_id))
        if self.require_masks and not self.mask_paths(record_id):
            raise ImageReadError(
                f"{self.root / record_id / 'masks'}: expected one PNG per nucleus, found none "
                "(set data.source.require_masks=false to treat such images as unlabelled)"
            )
        return size

    def fingerprint(self, record_id: str) -> str:
        img = self.image_path(record_id)
        masks = self.mask_paths(record_id)
        mt = max([img.stat().st_mtime_ns] + [m.stat().st_mtime_ns for m in masks])
        return f"{len(masks)}:{mt}"

    def records(self) -> list[Record]:
        """List images with their imaging type and acquisition group; the per-image statistics are kept in an
        index file after the first run."""
        index_path = self.index_dir / f"{self.name}-index.json" if self.index_dir else None
        cached = load_json(index_path) if index_path else None
        if cached and cached.get("ids") == self._ids and cached.get("version") == INDEX_VERSION:
            groups, features = cached["groups"], cached["features"]
        else:
            groups, features = [], []
            for i in self._ids:
                rgb = to_rgb(read_raw(self.image_path(i)))
                groups.append(imaging_type(rgb))
                features.append(acquisition_features(rgb))
            if index_path:
                atomic_write_text(index_path, json.dumps({"root": str(self.root), "version": INDEX_VERSION,
                                                          "ids": self._ids, "groups": groups,
                                                          "features": features}))
        acq = cluster_acquisitions(np.asarray(features), self.acquisition_threshold)
        return [Record(i, g, acquisition=f"acq{a:03d}") for i, g, a in zip(self._ids, groups, acq, strict=True)]

    def load(self, record_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        path = self.image_path(record_id)
        raw = to_rgb(read_raw(path))
        masks = self.mask_paths(record_id)
        if not masks:
            if self.require_masks:
                raise ImageReadError(
                    f"{self.root / record_id / 'masks'}: expected one PNG per nucleus, found none "
                    "(set data.source.require_masks=false to treat such images as unlabelled)"
                )
            return normalize(raw, name=path), None
        labels = merge_masks(masks, raw.shape[:2])
        return normalize(raw, name=path), labels
