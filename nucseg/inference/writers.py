"""Files written for a `Prediction`: label / probability / uncertainty TIFFs, the outline overlay PNG, and the
per-run tables (summary, nuclei, errors, Kaggle submission)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nucseg.data.rle import labels_to_rles
from nucseg.instances.measure import COLUMNS as MEASURE_COLUMNS
from nucseg.utils.atomic import atomic_write, atomic_write_bytes
from nucseg.utils.tables import write_csv
from nucseg.viz.overlays import outline_overlay, save_png
from nucseg.viz.plots import figure_png, review_panel

if TYPE_CHECKING:
    from nucseg.inference.prediction import Prediction

__all__ = ["ERROR_COLUMNS", "NUCLEI_COLUMNS", "SUMMARY_COLUMNS", "label_dtype", "review_title", "submission_rows",
           "write_image_outputs", "write_probability_stack", "write_review_figure", "write_tables", "write_tiff"]

SUMMARY_COLUMNS = ("image", "file", "height", "width", "nucleus_count", "mean_area", "certainty", "ood_score",
                   "unlike_training", "needs_review", "review_reason", "nonfinite_pixels", "warning")
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


def review_title(stem: str, pred: Prediction) -> str:
    """"<stem>: NEEDS REVIEW (low certainty; unlike the training data)" and the numbers behind it."""
    parts = [f"{stem}: NEEDS REVIEW ({pred.review_reason or 'flagged'})", f"{len(pred.nuclei)} nuclei"]
    if pred.certainty is not None:
        below = f" (review below {pred.review_threshold:.3f})" if pred.review_threshold is not None else ""
        parts.append(f"certainty {pred.certainty:.3f}{below}")
    if pred.ood_score is not None:
        above = f" (unlike above {pred.ood_threshold:.2f})" if pred.ood_threshold is not None else ""
        parts.append(f"unlike-training score {pred.ood_score:.2f}{above}")
    return ",  ".join(parts)


def write_review_figure(path: Path, stem: str, pred: Prediction, outlines: np.ndarray) -> None:
    """`<stem>_review.png`: image, outlines and uncertainty of an image flagged for review, with the reason."""
    fig = review_panel(pred.image, outlines, pred.uncertainty.get("entropy"), review_title(stem, pred))
    atomic_write_bytes(path, figure_png(fig))


def write_image_outputs(out_dir: Path, stem: str, pred: Prediction, overlay: bool = True,
                        review_figure: bool = True) -> list[str]:
    """`<stem>_labels.tif`, `<stem>_prob.tif` (float32 nucleus probability, calibrated), `<stem>_uncertainty.tif`
    (a float32 stack, one page per map, when there are maps), `<stem>_overlay.png` and, for an image flagged
    for review, `<stem>_review.png` (`write_review_figure`), each written atomically; returns the names
    written."""
    review = review_figure and bool(pred.needs_review)

    def draw() -> None:  # fast zlib: the overlay is for looking at; level 6 took as long as the watershed
        outlines = outline_overlay(pred.image, pred.labels)
        if overlay:
            save_png(out_dir / f"{stem}_overlay.png", outlines, compress_level=1)
        if review:
            write_review_figure(out_dir / f"{stem}_review.png", stem, pred, outlines)

    # the overlay (outlines + PNG encoding, the slowest file) is drawn on its own thread while the TIFFs are
    # written: zlib and file writes release the GIL
    with ThreadPoolExecutor(max_workers=1) as pool:
        drawn = pool.submit(draw) if overlay or review else None
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
               *(["_overlay.png"] if overlay else []), *(["_review.png"] if review else [])]
    return [f"{stem}{suffix}" for suffix in written]


def submission_rows(stem: str, labels: np.ndarray) -> list[dict[str, str]]:
    """Kaggle rows (ImageId, EncodedPixels): one per nucleus; an image without nuclei gets one empty row."""
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


def write_probability_stack(out_dir: Path, stems: list[str], name: str = "probabilities.tif") -> Path:
    """One float32 TIFF stack (Z, Y, X) of the images' `<stem>_prob.tif`, in the order of `stems`: for a
    z-stack cut into slices, such as ISBI 2012's test volume, where it is the challenge's results format (values
    from 0 = membrane to 1 = cell interior). Every slice must be there and of one size; a ValueError names the
    first that is not."""
    import tifffile

    pages: list[np.ndarray] = []
    for stem in stems:
        path = out_dir / f"{stem}_prob.tif"
        if not path.is_file():
            raise ValueError(f"{path}: missing, so the probability stack {name} cannot be written (was the image "
                             "predicted? see errors.csv)")
        page = tifffile.imread(path)
        if pages and page.shape != pages[0].shape:
            raise ValueError(f"{path}: {page.shape[1]}x{page.shape[0]} pixels, but the stack's first slice has "
                             f"{pages[0].shape[1]}x{pages[0].shape[0]}; stack=true needs images of one size")
        pages.append(page.astype(np.float32, copy=False))
    target = out_dir / name
    write_tiff(target, np.stack(pages), imagej=True, metadata={"axes": "ZYX"})
    return target
