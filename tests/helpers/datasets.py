"""Small on-disk datasets built from real stage1_train images, in the layouts users bring."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import relabel_sequential

from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.rle import labels_to_rles


def write_kaggle_test_set(dsb_root: Path, ids: list[str], out: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A Kaggle-layout dir (images symlinked, merged labels written back as one PNG per nucleus) and a solution
    CSV (one RLE row per nucleus) for the same images: (stage1_test dir, solution CSV, {id: labels})."""
    src = DSB2018Source(dsb_root)
    kaggle = out / "stage1_test"
    rows, expected = [], {}
    for rid in ids:
        _, labels = src.load(rid)
        labels = relabel_sequential(labels)[0]
        expected[rid] = labels
        (kaggle / rid / "images").mkdir(parents=True)
        (kaggle / rid / "masks").mkdir()
        (kaggle / rid / "images" / f"{rid}.png").symlink_to(dsb_root / rid / "images" / f"{rid}.png")
        for k in range(1, int(labels.max()) + 1):
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(kaggle / rid / "masks" / f"{k:04d}.png")
        h, w = labels.shape
        rows += [(rid, rle, h, w, "Public") for rle in labels_to_rles(labels)]
    csv_path = out / "stage1_solution.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "Usage"])
        writer.writerows(rows)
    return kaggle, csv_path, expected


def write_user_folder(dsb_root: Path, ids: list[str], out: Path) -> Path:
    """`<out>/images/<id>.png` (symlinks) + `<out>/masks/<id>.png` (16-bit instance labels): data=folder."""
    src = DSB2018Source(dsb_root)
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    for rid in ids:
        (out / "images" / f"{rid}.png").symlink_to(dsb_root / rid / "images" / f"{rid}.png")
        labels = relabel_sequential(src.load(rid)[1])[0]
        Image.fromarray(labels.astype(np.uint16)).save(out / "masks" / f"{rid}.png")
    return out
