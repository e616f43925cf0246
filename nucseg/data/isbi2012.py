"""ISBI 2012 EM segmentation challenge: 30 labelled 512x512 serial-section TEM slices of the Drosophila ventral
nerve cord, and 30 unlabelled test slices.

Label convention: in the released label images **255 (white) is cell interior and 0 (black) is membrane**.
nucseg segments objects, so the objects here are the cells: a pixel is foreground when its label is above 127
(255 in the release), and each 4-connected region of cell interior is one instance. Membranes are background.

Two layouts are read:
- PNG slices: `<root>/train/images/<i>.png`, `<root>/train/labels/<i>.png`, `<root>/test/images/<i>.png`
- the original multi-page TIFF stacks: `<root>/train-volume.tif`, `<root>/train-labels.tif`,
  `<root>/test-volume.tif`
The unlabelled test slices become records with split "predict": they never enter train/val/test metrics and
are what `SegDataModule.predict_dataloader` serves.

Split: the slices form a z-stack 50 nm apart, so neighbours are nearly identical and a random split leaks.
The default (`split=blocks`) keeps contiguous blocks in z order: train first, then val, then test (the last
slices). `split=random` leaves the split to `stratified_split` instead.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components

from nucseg.data.io import is_image_file, probe_image, read_mask, read_raw, to_rgb
from nucseg.data.normalize import normalize
from nucseg.data.source import Record, Source
from nucseg.utils.errors import DataNotFoundError, ImageReadError
from nucseg.utils.files import natural_key

log = logging.getLogger(__name__)

ISBI_HELP = (
    "Get the ISBI 2012 EM segmentation challenge data (https://imagej.net/events/isbi-2012-segmentation-challenge;"
    " train-volume.tif, train-labels.tif, test-volume.tif) and put either the three TIFF stacks or PNG slices "
    "(train/images/<i>.png, train/labels/<i>.png, test/images/<i>.png) into <data_dir>/isbi2012, then set "
    "NUCSEG_DATA_DIR=<data_dir> (or data.source.root=<dir>)."
)
CELL_THRESHOLD = 127  # label > 127: cell interior (255 in the release); <= 127: membrane (0)


def cell_instances(label_image: np.ndarray) -> np.ndarray:
    """Instance labels (int32) of the cells: 4-connected regions of cell interior (label 255); membranes -> 0."""
    return connected_components(label_image > CELL_THRESHOLD, connectivity=1).astype(np.int32)


def block_splits(n: int, val_fraction: float, test_fraction: float) -> list[str]:
    """Split names for n slices in z order: train block, then val block, then test block at the end."""
    n_test = int(math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
    n_val = int(math.floor(n * val_fraction + 0.5)) if val_fraction > 0 else 0
    n_test = min(max(n_test, 1 if test_fraction > 0 and n >= 3 else 0), n)
    n_val = min(max(n_val, 1 if val_fraction > 0 and n >= 3 else 0), n - n_test)
    return ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test


def _n_pages(path: Path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return len(tf.pages)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read the TIFF stack ({type(exc).__name__}: {exc})") from exc


class ISBI2012Source(Source):
    """The ISBI 2012 slices (PNG or TIFF-stack layout); objects are cells, membranes are background."""

    name = "isbi2012"

    def __init__(self, root: str | os.PathLike, split: str = "blocks", val_fraction: float = 0.2,
                 test_fraction: float = 0.2, predict: bool = True):
        self.root = Path(root)
        if split not in ("blocks", "random"):
            raise ValueError(f"data.source.split: expected 'blocks' or 'random', got {split!r}")
        self.split, self.val_fraction, self.test_fraction, self.predict = split, val_fraction, test_fraction, predict
        if not self.root.is_dir():
            raise DataNotFoundError(f"ISBI 2012 data not found: looked for the directory {self.root}. {ISBI_HELP}")
        # each entry: record id -> (image file, slice index or None, label file or None, label slice or None)
        self._items: dict[str, tuple[Path, int | None, Path | None, int | None]] = {}
        if (self.root / "train" / "images").is_dir():
            self.layout = "png"
            self._scan_png()
        elif (self.root / "train-volume.tif").is_file():
            self.layout = "tiff"
            self._scan_tiff()
        else:
            raise DataNotFoundError(
                f"ISBI 2012 data root {self.root} exists but holds neither train/images/*.png nor "
                f"train-volume.tif. {ISBI_HELP}"
            )
        if (self.root / "train-volume.tif").is_file() and self.layout == "png":
            log.info("%s holds both PNG slices and TIFF stacks; using the PNG slices", self.root)
        self.name = f"isbi2012-{hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:8]}"

    # ------------------------------------------------------------------ layouts
    def _slices(self, folder: Path) -> list[Path]:
        files = sorted(folder.iterdir(), key=lambda p: natural_key(p.name))
        stray = [p.name for p in files if not is_image_file(p)]
        if stray:
            log.warning("%s: ignored %d non-image file(s): %s", folder, len(stray), stray[:5])
        return [p for p in files if is_image_file(p)]

    def _scan_png(self) -> None:
        images = self._slices(self.root / "train" / "images")
        labels_dir = self.root / "train" / "labels"
        if not images:
            raise DataNotFoundError(f"ISBI 2012: {self.root / 'train' / 'images'} holds no images. {ISBI_HELP}")
        labels = {p.stem: p for p in self._slices(labels_dir)} if labels_dir.is_dir() else {}
        missing = [p.name for p in images if p.stem not in labels]
        if missing:
            raise DataNotFoundError(
                f"ISBI 2012: {labels_dir} lacks a label image for {len(missing)} training slice(s): {missing[:5]} "
                "(expected one <i>.png with 255 = cell interior and 0 = membrane per train/images/<i>.png)"
            )
        for p in images:
            self._items[f"train-{p.stem}"] = (p, None, labels[p.stem], None)
        test_dir = self.root / "test" / "images"
        if self.predict and test_dir.is_dir():
            for p in self._slices(test_dir):
                self._items[f"test-{p.stem}"] = (p, None, None, None)

    def _scan_tiff(self) -> None:
        vol, lab = self.root / "train-volume.tif", self.root / "train-labels.tif"
        if not lab.is_file():
            raise DataNotFoundError(f"ISBI 2012: found {vol} but not {lab} (255 = cell interior, 0 = membrane)")
        n_img, n_lab = _n_pages(vol), _n_pages(lab)
        if n_img != n_lab:
            raise ImageReadError(f"{lab}: {n_lab} label slices but {vol} has {n_img} image slices; expected equal")
        width = len(str(max(n_img - 1, 0)))
        for i in range(n_img):
            self._items[f"train-{i:0{width}d}"] = (vol, i, lab, i)
        test = self.root / "test-volume.tif"
        if self.predict and test.is_file():
            n_test = _n_pages(test)
            for i in range(n_test):
                self._items[f"test-{i:0{len(str(max(n_test - 1, 0)))}d}"] = (test, i, None, None)

    # ------------------------------------------------------------------ Source API
    def records(self) -> list[Record]:
        train = sorted((r for r in self._items if r.startswith("train-")), key=natural_key)
        fixed = block_splits(len(train), self.val_fraction, self.test_fraction) if self.split == "blocks" else None
        out = [Record(r, "em", fixed[k] if fixed else None) for k, r in enumerate(train)]
        out += [Record(r, "em", "predict") for r in sorted(self._items, key=natural_key) if r.startswith("test-")]
        return out

    def location(self, record_id: str) -> str:
        path, z, _, _ = self._items[record_id]
        return f"{path}[slice {z}]" if z is not None else str(path)

    def fingerprint(self, record_id: str) -> str:
        path, _, lpath, _ = self._items[record_id]
        stats = [p.stat() for p in (path, lpath) if p is not None]
        return ":".join(f"{s.st_size}-{s.st_mtime_ns}" for s in stats)

    def _read(self, path: Path, z: int | None) -> np.ndarray:
        if z is None:
            return read_raw(path)
        import tifffile

        try:
            with tifffile.TiffFile(path) as tf:
                return tf.pages[z].asarray()
        except Exception as exc:
            raise ImageReadError(f"{path}[slice {z}]: cannot decode ({type(exc).__name__}: {exc})") from exc

    def check(self, record_id: str) -> tuple[int, int] | None:
        path, z, lpath, lz = self._items[record_id]
        if z is not None:  # slices of a stack: the stack was opened in __init__; decoding is the only check left
            return None
        size = probe_image(path)
        if lpath is not None:
            lsize = probe_image(lpath)
            if lsize != size:
                raise ImageReadError(f"{lpath}: label image is {lsize[0]}x{lsize[1]} but its slice {path} is "
                                     f"{size[0]}x{size[1]}; expected the same size")
        return size

    def load(self, record_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        path, z, lpath, lz = self._items[record_id]
        image = normalize(to_rgb(self._read(path, z)), name=path if z is None else f"{path}[slice {z}]")
        if lpath is None:
            return image, None
        lab = read_mask(lpath) if lz is None else self._read(lpath, lz)
        if lab.ndim == 3:
            lab = lab[..., 0]
        if lab.shape != image.shape[:2]:
            where = lpath if lz is None else f"{lpath}[slice {lz}]"
            raise ImageReadError(f"{where}: label image is {lab.shape} but its slice is {image.shape[:2]}; "
                                 "expected the same size")
        return image, cell_instances(lab)
