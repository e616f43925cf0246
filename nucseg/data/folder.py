"""A user's own data: `<root>/images/` and `<root>/masks/`, matched by file stem.

Images: PNG, TIFF (8/16-bit, single page), JPEG or BMP with 1, 3 or 4 channels; every image is stretched
between two percentiles (`nucseg.data.normalize`), which suits dim 16-bit fluorescence as well as 8-bit
brightfield. Masks: PNG or TIFF (lossless; JPEG masks are refused because compression changes label values),
either binary (one non-zero value, e.g. 255 or 1) or instance label images (0 = background, one integer per
nucleus). `mask_type=auto` tells them apart by the number of distinct non-zero values: binary masks are split
into nuclei by 4-connected components (touching nuclei in a binary mask stay one object: use instance masks
where that matters), instance labels are kept as they are (renumbered 1..N).

Matching: mask `<stem><mask_suffix>.<ext>` belongs to image `<stem>.<ext>` (`mask_suffix: _mask` for
`a.tif` + `a_mask.png`). Images without a mask are an error by default, naming them; with
`unlabelled=predict` they become unlabelled records served by `predict_dataloader` (logged). Masks without an
image, and non-image files, are ignored with a logged warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from nucseg.data.acquisitions import imaging_type
from nucseg.data.io import is_image_file, probe_image, read_image, read_mask
from nucseg.data.source import Record, Source, load_json
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.errors import DataNotFoundError, ImageReadError

log = logging.getLogger(__name__)

FOLDER_HELP = (
    "Expected <root>/images/ with image files (PNG, TIFF, JPEG) and <root>/masks/ with one mask per image "
    "with the same file stem (binary or instance labels, PNG or TIFF); pass data.root=<root>."
)
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def masks_to_instances(mask: np.ndarray, mask_type: str = "auto", path: Path | str = "") -> np.ndarray:
    """Binary mask -> 4-connected components; instance mask -> labels renumbered 1..N (int32)."""
    if mask.min() < 0:
        raise ImageReadError(f"{path}: expected non-negative mask values (0 = background), got min {mask.min()}")
    values = np.unique(mask)
    values = values[values != 0]
    binary = mask_type == "binary" or (mask_type == "auto" and values.size <= 1)
    if binary:
        return connected_components(mask > 0, connectivity=1).astype(np.int32)
    if mask_type not in ("auto", "instance"):
        raise ValueError(f"data.source.mask_type: expected auto, binary or instance, got {mask_type!r}")
    return relabel_sequential(mask)[0].astype(np.int32)


class FolderSource(Source):
    """`<root>/<images>/*` + `<root>/<masks>/*`, matched by file stem (see the module docstring)."""

    name = "folder"

    def __init__(self, root: str | os.PathLike, images: str = "images", masks: str = "masks",
                 mask_suffix: str = "", mask_type: str = "auto", unlabelled: str = "error",
                 stratify: bool = False, index_dir: str | os.PathLike | None = None):
        if mask_type not in ("auto", "binary", "instance"):
            raise ValueError(f"data.source.mask_type: expected auto, binary or instance, got {mask_type!r}")
        if unlabelled not in ("error", "predict"):
            raise ValueError(f"data.source.unlabelled: expected 'error' or 'predict', got {unlabelled!r}")
        self.root = Path(root)
        self.image_dir, self.mask_dir = self.root / images, self.root / masks
        self.mask_suffix, self.mask_type, self.stratify = mask_suffix, mask_type, stratify
        self.index_dir = Path(index_dir) if index_dir else None
        if not self.root.is_dir():
            raise DataNotFoundError(f"data.root: {self.root} is not a directory. {FOLDER_HELP}")
        if not self.image_dir.is_dir():
            raise DataNotFoundError(f"data.root: {self.root} has no '{images}/' folder. {FOLDER_HELP}")
        self.images = self._list(self.image_dir, "image")
        if not self.images:
            raise DataNotFoundError(f"{self.image_dir} holds no image files. {FOLDER_HELP}")
        found = self._list(self.mask_dir, "mask") if self.mask_dir.is_dir() else {}
        if mask_suffix:
            found = {k[: -len(mask_suffix)]: v for k, v in found.items() if k.endswith(mask_suffix)}
        self.masks = {k: v for k, v in found.items() if k in self.images}
        orphans = sorted(set(found) - set(self.images))
        if orphans:
            log.warning("%s: ignored %d mask(s) without an image in %s: %s", self.mask_dir, len(orphans),
                        self.image_dir, [found[o].name for o in orphans[:5]])
        lossy = [p.name for p in self.masks.values() if p.suffix.lower() in LOSSY_SUFFIXES]
        if lossy:
            raise ImageReadError(f"{self.mask_dir}: masks must be lossless (PNG or TIFF); JPEG compression "
                                 f"changes label values: {lossy[:5]}")
        unmatched = sorted(set(self.images) - set(self.masks))
        if unmatched:
            names = [self.images[u].name for u in unmatched[:5]]
            where = (f"{self.mask_dir} does not exist" if not self.mask_dir.is_dir()
                     else f"{self.mask_dir} is empty" if not found
                     else f"{len(unmatched)} of {len(self.images)} images have no mask in {self.mask_dir}")
            if unlabelled == "error":
                raise DataNotFoundError(
                    f"{where}: no mask for {names}{' ...' if len(unmatched) > 5 else ''}; expected "
                    f"{self.mask_dir}/<stem>{mask_suffix}.png (or .tif) for each image <stem>.<ext>. Set "
                    "data.source.unlabelled=predict to use such images for prediction only."
                )
            log.warning("%s: %d image(s) without a mask are used for prediction only (data.source.unlabelled="
                        "predict): %s", self.image_dir, len(unmatched), names)
        # the mask files found (not the folder name) are part of the key, as before the rename to `found`
        key = f"{self.root.resolve()}|{images}|{found}|{mask_suffix}|{mask_type}"
        self.name = f"folder-{hashlib.sha1(key.encode()).hexdigest()[:8]}"

    @staticmethod
    def _list(folder: Path, what: str) -> dict[str, Path]:
        """stem -> file for the image files of a folder; other files are logged, duplicate stems are an error."""
        out: dict[str, Path] = {}
        stray = []
        for p in sorted(folder.iterdir()):
            if p.is_dir() or p.name.startswith("."):
                continue
            if not is_image_file(p):
                stray.append(p.name)
                continue
            if p.stem in out:
                raise ImageReadError(f"{folder}: two {what} files share the stem {p.stem!r}: {out[p.stem].name} "
                                     f"and {p.name}; expected one {what} per stem")
            out[p.stem] = p
        if stray:
            log.warning("%s: ignored %d file(s) that are not images (expected %s): %s", folder, len(stray),
                        "PNG/TIFF/JPEG/BMP", stray[:5])
        return out

    def location(self, record_id: str) -> str:
        return str(self.images[record_id])

    def records(self) -> list[Record]:
        ids = sorted(self.images)
        groups = self._groups(ids) if self.stratify else ["all"] * len(ids)
        return [Record(i, g, None if i in self.masks else "predict") for i, g in zip(ids, groups, strict=True)]

    def _groups(self, ids: list[str]) -> list[str]:
        """Imaging type per image (reads every image once; kept in an index file for later runs)."""
        index_path = self.index_dir / f"{self.name}-index.json" if self.index_dir else None
        cached = load_json(index_path) if index_path else None
        fps = [self.fingerprint(i) for i in ids]
        if cached and cached.get("ids") == ids and cached.get("fingerprints") == fps:
            return cached["groups"]
        groups = [imaging_type(read_image(self.images[i])) for i in ids]
        if index_path:
            atomic_write_text(index_path, json.dumps({"root": str(self.root), "ids": ids, "fingerprints": fps,
                                                      "groups": groups}))
        return groups

    def fingerprint(self, record_id: str) -> str:
        paths = [self.images[record_id]] + ([self.masks[record_id]] if record_id in self.masks else [])
        return ":".join(f"{p.name}-{p.stat().st_size}-{p.stat().st_mtime_ns}" for p in paths)

    def check(self, record_id: str) -> tuple[int, int]:
        size = probe_image(self.images[record_id])
        if record_id in self.masks:
            msize = probe_image(self.masks[record_id])
            if msize != size:
                raise ImageReadError(f"{self.masks[record_id]}: mask is {msize[0]}x{msize[1]} but its image "
                                     f"{self.images[record_id]} is {size[0]}x{size[1]}; expected the same size")
        return size

    def load(self, record_id: str) -> tuple[np.ndarray, np.ndarray | None]:
        image = read_image(self.images[record_id])
        if record_id not in self.masks:
            return image, None
        path = self.masks[record_id]
        mask = read_mask(path)
        if mask.shape != image.shape[:2]:
            raise ImageReadError(f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image "
                                 f"{self.images[record_id]} is {image.shape[0]}x{image.shape[1]}; expected the "
                                 "same size")
        return image, masks_to_instances(mask, self.mask_type, path)
