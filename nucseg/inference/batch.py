"""Predict a list of image files into an output folder: the loop of `python -m nucseg.predict`.

Each image's outputs and record are written on a worker thread while the next image is predicted (TIFF / PNG
encoding and fsync overlap the network); results are collected in input order, so the tables and the log read
as if everything ran in one thread. Images over `OVERLAP_MAX_PIXELS` are written before the next one starts:
two of them in memory at once would double the peak memory. Progress: a rich bar on a terminal; where stdout is
not one (a log file), a plain line every `interval_s`, `predict 30/65 images 3.10 s/image ETA 1:48`, and one at
the end (nucseg.utils.progress).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nucseg.inference import records
from nucseg.inference.prediction import Prediction
from nucseg.inference.predictor import Predictor
from nucseg.utils.progress import DEFAULT_INTERVAL_S, ProgressClock, plain_progress_wanted, progress_bar

__all__ = ["OVERLAP_MAX_PIXELS", "BatchResult", "predict_into"]

log = logging.getLogger(__name__)

OVERLAP_MAX_PIXELS = 1 << 22  # 4 megapixels (2048 x 2048)


@dataclass
class BatchResult:
    """Output names predicted, and one {"file", "error"} row per image that failed."""

    predicted: list[str] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)


def predict_into(predictor: Predictor, todo: Sequence[tuple[Path, str]], out_dir: Path, settings: Mapping[str, Any],
                 done: dict[str, dict], overlay: bool = True, rle: bool = False, progress: bool = True,
                 result: BatchResult | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> BatchResult:
    """Predict the (file, output name) pairs of `todo` into `out_dir`, adding each image's record to `done` and
    its name or error to `result` as it finishes (so an interrupted run still reports what it did). A file
    that cannot be read, predicted or written is recorded in the errors; the rest go on. `progress`: the bar,
    or where stdout is not a terminal a progress line every `interval_s` seconds (false: neither)."""
    result = BatchResult() if result is None else result
    lines = ProgressClock(len(todo), interval_s) if progress and plain_progress_wanted("auto") else None
    finished = 0
    with progress_bar(progress, "[bold]predict[/bold] ") as bar, ThreadPoolExecutor(max_workers=1) as pool:
        task = bar.add_task("", total=len(todo))
        pending: tuple[Path, str, Future | Exception, Prediction | None, float] | None = None

        def finish(path: Path, stem: str, outcome: Future | Exception, pred: Prediction | None, t0: float) -> None:
            nonlocal finished
            if isinstance(outcome, Future):
                try:
                    done[stem] = outcome.result()
                except Exception as exc:  # one bad file must not stop a folder of hundreds
                    outcome = exc
            if isinstance(outcome, Exception):
                records.forget(out_dir, stem)  # what an earlier run wrote for it is not this run's result
                log.error("%s: failed: %s", path, outcome)
                result.errors.append({"file": str(path), "error": f"{type(outcome).__name__}: {outcome}"})
            elif pred is not None:
                result.predicted.append(stem)
                log.info("%s: %d nuclei in %.1fs%s", path.name, len(pred.nuclei), time.perf_counter() - t0,
                         "" if pred.certainty is None else f", certainty {pred.certainty:.3f}")
            bar.update(task, advance=1, description=path.name)
            finished += 1
            if lines is not None and lines.due():
                log.info(lines.line("predict", finished, "image"))

        t0 = time.perf_counter()
        try:
            for (path, pred), (_, stem) in zip(predictor.predict_files(f for f, _ in todo), todo, strict=True):
                outcome: Future | Exception = pred if isinstance(pred, Exception) else pool.submit(
                    records.write_image, out_dir, stem, path, pred, settings, overlay=overlay, rle=rle)
                if pending is not None:
                    finish(*pending)
                pending = (path, stem, outcome, None if isinstance(pred, Exception) else pred, t0)
                if not isinstance(pred, Exception) and pred.labels.size > OVERLAP_MAX_PIXELS:
                    finish(*pending)
                    pending = None
                t0 = time.perf_counter()
            if pending is not None:
                finish(*pending)
            if lines is not None:
                log.info(lines.finished("predict", finished, "image"))
        except BaseException:  # interrupted: a write in flight still completes (the pool waits for it); count it
            if pending is not None and isinstance(pending[2], Future):
                with contextlib.suppress(BaseException):  # a failed write: write_image removed its files
                    done[pending[1]] = pending[2].result()
            raise
    return result
