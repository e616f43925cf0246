"""The plain progress lines of log files (nucseg.utils.progress): exact durations, rates, ETAs and lines from a
fake clock; when they are wanted (a real terminal, a real pipe)."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from nucseg.utils import progress
from nucseg.utils.progress import ProgressClock, finished_line, format_duration, format_seconds_per, progress_line


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0:00"), (-3, "0:00"), (59.4, "0:59"), (59.5, "1:00"), (108.5, "1:49"), (849, "14:09"),
    (3599.4, "59:59"), (3600, "1:00:00"), (3725, "1:02:05"), (36000 + 61, "10:01:01"),
])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.6123, "0.61"), (3.1, "3.10"), (9.994, "9.99"), (12.34, "12.3"),
                                               (123.4, "123")])
def test_format_seconds_per(seconds, text):
    assert format_seconds_per(seconds) == text


def test_progress_and_finished_lines():
    assert (progress_line("train", 120, 1512, "step", 0.6123, 849.0, "(epoch 2/15) loss 0.4312")
            == "train 120/1512 steps (epoch 2/15) loss 0.4312 0.61 s/step ETA 14:09")
    assert progress_line("test", 30, 65, "image", 3.1, 108.5) == "test 30/65 images 3.10 s/image ETA 1:49"
    assert progress_line("predict", 7, None, "image") == "predict 7 images"  # an endless loader: no total, no ETA
    assert finished_line("validate", 67, "image", 62.0) == "validate done: 67 images in 1:02 (0.93 s/image)"
    assert finished_line("train", 0, "step", 5.0, "loss 0.1000") == "train done: 0 steps in 0:05 loss 0.1000"
    assert progress_line("test", 1, 1, "image") == "test 1/1 image" and progress_line("test", 1, 2, "image") == (
        "test 1/2 images")


def test_clock_rate_eta_pause_and_interval():
    clock = FakeClock()
    pc = ProgressClock(total=100, interval_s=30, start=20, clock=clock)  # a run resumed at step 20
    assert pc.per_item(20) is None and pc.eta(20) is None  # nothing done yet in this process
    clock.advance(10)
    assert not pc.due()
    clock.advance(20)  # 30 s after the start
    assert pc.due() and not pc.due()  # the next one counts from now
    assert pc.per_item(50) == pytest.approx(1.0) and pc.eta(50) == pytest.approx(50.0)
    pc.pause()  # e.g. validation inside fit: not training time
    clock.advance(100)
    assert pc.elapsed() == pytest.approx(30.0)
    pc.resume()
    clock.advance(30)
    assert pc.elapsed() == pytest.approx(60.0)
    assert pc.line("train", 80, "step") == "train 80/100 steps 1.00 s/step ETA 0:20"
    assert pc.due()  # 130 s of wall time since the last line, paused or not
    clock.advance(15)
    assert pc.finished("train", 100, "step") == "train done: 80 steps in 1:15 (0.94 s/step)"


def test_clock_without_total_and_every_item():
    clock = FakeClock()
    pc = ProgressClock(total=None, interval_s=0, clock=clock)
    clock.advance(2)
    assert pc.due() and pc.due()  # interval 0: every item
    assert pc.eta(1) is None and pc.line("test", 1, "image") == "test 1 image 2.00 s/image"
    with pytest.raises(ValueError, match="interval_s"):
        ProgressClock(total=1, interval_s=-1)


def test_logged_progress_lines_at_the_interval_and_at_the_end(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="nucseg.utils.progress")
    for _ in progress.logged_progress(range(4), 4, "uncertainty: val", "image", interval_s=15, clock=clock):
        clock.advance(10)  # the work on each item
    assert [r.getMessage() for r in caplog.records] == [
        "uncertainty: val 2/4 images 10.0 s/image ETA 0:20",
        "uncertainty: val 4/4 images 10.0 s/image ETA 0:00",
        "uncertainty: val done: 4 images in 0:40 (10.0 s/image)",
    ]
    caplog.clear()
    assert list(progress.logged_progress(range(3), 3, "x", "image", interval_s=None)) == [0, 1, 2]
    assert not caplog.records


def test_plain_lines_are_wanted_on_a_pipe_not_on_a_terminal(monkeypatch):
    read_fd, write_fd = os.pipe()
    master, slave = os.openpty()
    with os.fdopen(write_fd, "w") as pipe, os.fdopen(slave, "w") as tty:
        assert progress.plain_progress_wanted("auto", pipe) is True
        assert progress.plain_progress_wanted("auto", tty) is False
        assert progress.plain_progress_wanted("always", tty) is True
        assert progress.plain_progress_wanted("never", pipe) is False
        monkeypatch.setattr(sys, "stdout", tty)  # the default stream is sys.stdout
        assert progress.plain_progress_wanted("auto") is False
        monkeypatch.setattr(sys, "stdout", pipe)
        assert progress.plain_progress_wanted("auto") is True
        monkeypatch.setattr(sys, "stdout", None)  # no stream at all (pythonw, a daemon)
        assert progress.plain_progress_wanted("auto") is True
    os.close(read_fd)
    os.close(master)
    with pytest.raises(ValueError, match="when='sometimes'"):
        progress.plain_progress_wanted("sometimes")


def test_progress_interval_of_the_runs_callback():
    class Cb:
        pass

    quiet, active = Cb(), Cb()
    setattr(active, progress.INTERVAL_ATTR, 12.5)

    class Trainer:
        is_global_zero = True
        callbacks = [quiet, active]

    assert progress.progress_interval(Trainer()) == 12.5
    Trainer.is_global_zero = False  # only rank 0 logs
    assert progress.progress_interval(Trainer()) is None
    Trainer.is_global_zero, Trainer.callbacks = True, [quiet]
    assert progress.progress_interval(Trainer()) is None
