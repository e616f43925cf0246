"""Files written for a `Prediction`: label / probability / uncertainty TIFFs, the outline overlay PNG, and the
per-run tables (summary, nuclei, errors, Kaggle submission)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.data.io import atomic_write
from nucseg.instances.measure import COLUMNS as MEASURE_COLUMNS
from nucseg.utils.tables import write_csv

if TYPE_CHECKING:
    from nucseg.inference.prediction import Prediction

__all__ = ["ERROR_COLUMNS", "NUCLEI_COLUMNS", "SUMMARY_COLUMNS", "label_dtype", "submission_rows", "write_tiff",
           "write_image_outputs", "write_tables"]

SUMMARY_COLUMNS = ("image", "file", "height", "width", "nucleus_count", "mean_area", "certainty", "needs_review",
                   "nonfinite_pixels", "warning")
NUCLEI_COLUMNS = ("image", *MEASURE_COLUMNS)
ERROR_COLUMNS = ("file", "error")
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")


def write_tiff(path: Path, array: np.ndarray, **kwargs: Any) -> None:
    """`array` as a TIFF file, written atomically straight into the file (kwargs go to tifffile.imwrite): no
    in-memory copy of what may be hundreds of megabytes."""
    import tifffile

    atomic_write(path, lambda f: tifffile.imwrite(f, array, **kwargs))


def label_dtype(labels: np.ndarray) -> type:
    """uint16 when the labels fit (Fiji reads it as an ImageJ hyperstack), else uint32."""
    return np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32


def write_image_outputs(out_dir: Path, stem: str, pred: Prediction, overlay: bool = True) -> list[str]:
    """`<stem>_labels.tif`, `<stem>_prob.tif` (float32 nucleus probability), `<stem>_uncertainty.tif` (a
    float32 stack, one page per map, when there are maps) and `<stem>_overlay.png`, each written atomically;
    returns the names written."""
    from nucseg.viz.overlays import outline_overlay, save_png

    def draw() -> None:  # fast zlib: the overlay is for looking at; level 6 took as long as the watershed
        save_png(out_dir / f"{stem}_overlay.png", outline_overlay(pred.image, pred.labels), compress_level=1)

    # the overlay (outlines + PNG encoding, the slowest file) is drawn on its own thread while the TIFFs are
    # written: zlib and file writes release the GIL
    with ThreadPoolExecutor(max_workers=1) as pool:
        drawn = pool.submit(draw) if overlay else None
        dtype = label_dtype(pred.labels)
        # ImageJ hyperstacks hold 8/16-bit and float32; uint32 labels are written as a plain TIFF
        write_tiff(out_dir / f"{stem}_labels.tif", pred.labels.astype(dtype), imagej=dtype == np.uint16)
        write_tiff(out_dir / f"{stem}_prob.tif", pred.probability.astype(np.float32, copy=False), imagej=True)
        if pred.uncertainty:
            names = list(pred.uncertainty)
            stack = np.stack([pred.uncertainty[n] for n in names]).astype(np.float32)
            write_tiff(out_dir / f"{stem}_uncertainty.tif", stack, imagej=True,
                       metadata={"axes": "ZYX", "Labels": names})
        if drawn is not None:
            drawn.result()
    written = ["_labels.tif", "_prob.tif", *(["_uncertainty.tif"] if pred.uncertainty else []),
               *(["_overlay.png"] if overlay else [])]
    return [f"{stem}{suffix}" for suffix in written]


def submission_rows(stem: str, labels: np.ndarray) -> list[dict[str, str]]:
    """Kaggle rows (ImageId, EncodedPixels): one per nucleus; an image without nuclei gets one empty row."""
    from nucseg.data.rle import labels_to_rles

    rles = labels_to_rles(labels)
    return [{"ImageId": stem, "EncodedPixels": r} for r in rles] or [{"ImageId": stem, "EncodedPixels": ""}]


def write_tables(out_dir: Path, summary: Iterable[dict], nuclei: Iterable[dict], errors: Iterable[dict],
                 submission: Iterable[dict] | None = None, suffix: str = "") -> None:
    """summary<suffix>.csv, nuclei, errors and (when given) submission (`suffix`: e.g. ".shard-0-of-4"), each
    written atomically; floats to 6 decimals."""
    write_csv(out_dir / f"summary{suffix}.csv", SUMMARY_COLUMNS, summary, digits=6)
    write_csv(out_dir / f"nuclei{suffix}.csv", NUCLEI_COLUMNS, nuclei, digits=6)
    write_csv(out_dir / f"errors{suffix}.csv", ERROR_COLUMNS, errors, digits=6)
    if submission is not None:
        write_csv(out_dir / f"submission{suffix}.csv", SUBMISSION_COLUMNS, submission, digits=6)
