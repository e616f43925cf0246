"""Progress for people and for log files: the one rich progress bar of the command-line tools (prediction
over files, downloads), and the plain progress lines written to the log when stdout is not a terminal (a SLURM
job, nohup, CI), where a bar shows nothing until its loop ends.

The plain lines are built here once, for the training callback (nucseg.callbacks.progress_log), the loops that
the calibrate stage runs over the validation split (nucseg.utils.validation_pass) and prediction
(nucseg.inference.batch):
`ProgressClock` measures seconds per item and the time left from a monotonic clock (a fake one in tests) and
says when the next line is due; `progress_line` / `finished_line` write them, e.g.
`train 120/1512 steps (epoch 2/15) loss 0.4312 0.61 s/step ETA 14:09` and
`test done: 65 images in 3:21 (3.09 s/image)`.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["DEFAULT_INTERVAL_S", "INTERVAL_ATTR", "WHEN", "ProgressClock", "finished_line", "format_duration",
           "format_seconds_per", "logged_progress", "plain_progress_wanted", "progress_bar", "progress_interval",
           "progress_line"]

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INTERVAL_S = 30.0
# auto: plain lines only when stdout is not a terminal (a terminal has the rich bar); always; never
WHEN = ("auto", "always", "never")
# the attribute of the run's progress callback that holds its interval while it writes lines (None when not):
# how loops run by other callbacks (nucseg.utils.validation_pass) find it without importing the callbacks
INTERVAL_ATTR = "progress_log_interval_s"


def progress_bar(enabled: bool = True, label: str = "", transfer: bool = False) -> Any:
    """A `rich.progress.Progress` (use it as a context manager): `label` before each task's description, the
    bar, then done / total items and elapsed time, or with `transfer` bytes and speed; the time remaining.
    Disabled (draws nothing) when `enabled` is false."""
    from rich import progress as rp

    counts = ([rp.DownloadColumn(), rp.TransferSpeedColumn()] if transfer
              else [rp.MofNCompleteColumn(), rp.TimeElapsedColumn()])
    return rp.Progress(rp.TextColumn(f"{label}{{task.description}}"), rp.BarColumn(), *counts,
                       rp.TimeRemainingColumn(), disable=not enabled, transient=False)


def plain_progress_wanted(when: str, stream: Any = None) -> bool:
    """Whether plain progress lines are wanted: `always`, `never`, or `auto` (when `stream`, by default
    sys.stdout, is not a terminal: a file, a pipe, no stream at all)."""
    if when not in WHEN:
        raise ValueError(f"when={when!r}: expected one of {', '.join(WHEN)}")
    if when != "auto":
        return when == "always"
    stream = sys.stdout if stream is None else stream
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return True


def format_duration(seconds: float) -> str:
    """`m:ss` under an hour, `h:mm:ss` from an hour on, to the nearest second (half up): 849.5 -> `14:10`."""
    total = int(math.floor(max(0.0, seconds) + 0.5))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_seconds_per(seconds: float) -> str:
    """Seconds per item with three significant digits where it matters: 0.6123 -> `0.61`, 12.34 -> `12.3`,
    123.4 -> `123`."""
    return f"{seconds:.2f}" if seconds < 10 else f"{seconds:.1f}" if seconds < 100 else f"{seconds:.0f}"


def progress_line(stage: str, done: int, total: int | None, unit: str, per_item: float | None = None,
                  eta_s: float | None = None, details: str = "") -> str:
    """`<stage> <done>/<total> <unit>s [details] [<s> s/<unit>] [ETA <m:ss>]`; without a total (an endless
    loader) `<stage> <done> <unit>s ...`."""
    parts = [stage, f"{done}/{total} {_units(unit, total)}" if total is not None else f"{done} {_units(unit, done)}"]
    if details:
        parts.append(details)
    if per_item is not None:
        parts.append(f"{format_seconds_per(per_item)} s/{unit}")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return " ".join(parts)


def finished_line(stage: str, done: int, unit: str, elapsed_s: float, details: str = "") -> str:
    """`<stage> done: <done> <unit>s in <m:ss> (<s> s/<unit>)[ details]`, the line when a loop ends."""
    rate = f" ({format_seconds_per(elapsed_s / done)} s/{unit})" if done > 0 else ""
    line = f"{stage} done: {done} {_units(unit, done)} in {format_duration(elapsed_s)}{rate}"
    return f"{line} {details}" if details else line


def _units(unit: str, n: int) -> str:
    return unit if n == 1 else f"{unit}s"


class ProgressClock:
    """The clock of one loop: seconds per item and the time left, measured from `start` on a monotonic clock
    (`clock`, a fake one in tests) over the items done since (a resumed run's earlier steps do not count), with
    time spent in `pause` ... `resume` (training's validation) left out; and whether the next line is due, at
    most one per `interval_s` (0: every item)."""

    def __init__(self, total: int | None, interval_s: float = DEFAULT_INTERVAL_S, start: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        if interval_s < 0:
            raise ValueError(f"interval_s={interval_s}: expected seconds >= 0")
        self.total, self.interval_s, self.clock = total, float(interval_s), clock
        self.t0 = self.last_line = clock()
        self.start_count = start
        self._paused_at: float | None = None
        self._paused_s = 0.0

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_s += self.clock() - self._paused_at
            self._paused_at = None

    def elapsed(self) -> float:
        """Seconds since the start, less the paused ones."""
        now = self._paused_at if self._paused_at is not None else self.clock()
        return now - self.t0 - self._paused_s

    def per_item(self, done: int) -> float | None:
        """Seconds per item over the items done since the start; None before the first."""
        n = done - self.start_count
        return self.elapsed() / n if n > 0 else None

    def eta(self, done: int) -> float | None:
        """Seconds left at the rate so far; None without a total or a rate."""
        per = self.per_item(done)
        return None if per is None or self.total is None else max(0, self.total - done) * per

    def due(self) -> bool:
        """Whether a line is due (`interval_s` since the last one, or the start); if so, the next one counts
        from now."""
        now = self.clock()
        if now - self.last_line < self.interval_s:
            return False
        self.last_line = now
        return True

    def line(self, stage: str, done: int, unit: str, details: str = "") -> str:
        """The progress line at `done` items."""
        return progress_line(stage, done, self.total, unit, self.per_item(done), self.eta(done), details)

    def finished(self, stage: str, done: int, unit: str, details: str = "") -> str:
        """The line when the loop ends."""
        return finished_line(stage, done - self.start_count, unit, self.elapsed(), details)


def progress_interval(trainer: Any) -> float | None:
    """The interval of the run's progress callback while it writes plain lines (on rank 0 of a run whose
    stdout is not a terminal, by default), else None."""
    if not getattr(trainer, "is_global_zero", True):
        return None
    for cb in getattr(trainer, "callbacks", None) or []:
        value = getattr(cb, INTERVAL_ATTR, None)
        if value is not None:
            return float(value)
    return None


def logged_progress(items: Iterable[T], total: int | None, stage: str, unit: str, interval_s: float | None,
                    clock: Callable[[], float] = time.monotonic) -> Iterator[T]:
    """`items`, with a progress line logged at most every `interval_s` and one when they are all done (not
    when the loop is left early); nothing logged when `interval_s` is None."""
    if interval_s is None:
        yield from items
        return
    pc = ProgressClock(total, interval_s, clock=clock)
    done = 0
    for item in items:
        yield item
        done += 1
        if pc.due():
            log.info(pc.line(stage, done, unit))
    log.info(pc.finished(stage, done, unit))
