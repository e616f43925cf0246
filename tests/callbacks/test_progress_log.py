"""ProgressLog: exact lines from a fake clock and trainer (validation time left out of s/step, the mean loss
since the previous line, nothing from the sanity check), lines in a real tiny training run with `when=always`
and none with `when=never`, and `auto` on for a pipe, off for a terminal."""

from __future__ import annotations

import logging
import os
import re
import sys
from types import SimpleNamespace

import pytest
import torch

from nucseg.callbacks.progress_log import ProgressLog
from nucseg.train import train
from nucseg.utils.progress import INTERVAL_ATTR

LOGGER = "nucseg.callbacks.progress_log"


class FakeClock:
    def __init__(self) -> None:
        self.t = 500.0

    def __call__(self) -> float:
        return self.t


def fake_trainer(**kw) -> SimpleNamespace:
    values = dict(is_global_zero=True, sanity_checking=False, global_step=0, estimated_stepping_batches=100,
                  max_epochs=2, current_epoch=0, num_val_batches=[10], num_test_batches=[4])
    return SimpleNamespace(**{**values, **kw})


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def started(caplog) -> tuple[ProgressLog, FakeClock, SimpleNamespace]:
    """A ProgressLog set up for fit on a fake clock and trainer, its lines captured."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    cb = ProgressLog(interval_s=30, when="always", clock=clock)
    trainer = fake_trainer()
    cb.setup(trainer, None, "fit")
    return cb, clock, trainer


def test_lines_from_a_fake_clock(caplog):
    cb, clock, trainer = started(caplog)
    assert getattr(cb, INTERVAL_ATTR) == 30
    cb.on_validation_start(trainer, None)  # the sanity check: not logged
    trainer.sanity_checking = True
    cb.on_validation_batch_start(trainer, None, {}, 0)
    cb.on_validation_batch_end(trainer, None, {}, {}, 0)
    cb.on_validation_end(trainer, None)
    trainer.sanity_checking = False
    cb.on_train_start(trainer, None)
    for step in range(1, 51):  # 2 s per step, loss 0.5 then 0.25
        cb.on_train_batch_start(trainer, None, {}, step - 1)
        clock.t += 2
        trainer.global_step, trainer.current_epoch = step, (step - 1) // 50
        cb.on_train_batch_end(trainer, None, torch.tensor(0.5 if step <= 15 else 0.25), {}, step - 1)
    # validation inside fit: 10 images, 3 s each; its 30 s are not training time
    cb.on_validation_start(trainer, None)
    for i in range(10):
        cb.on_validation_batch_start(trainer, None, {}, i)
        clock.t += 3
        cb.on_validation_batch_end(trainer, None, {}, {}, i)
    cb.on_validation_end(trainer, None)
    trainer.current_epoch = 1
    for step in range(51, 101):
        cb.on_train_batch_start(trainer, None, {}, step - 51)
        clock.t += 2
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, {"loss": torch.tensor(0.125)}, {}, step - 51)
    cb.on_train_end(trainer, None)
    assert messages(caplog) == [
        "train 15/100 steps (epoch 1/2) loss 0.5000 2.00 s/step ETA 2:50",
        "train 30/100 steps (epoch 1/2) loss 0.2500 2.00 s/step ETA 2:20",
        "train 45/100 steps (epoch 1/2) loss 0.2500 2.00 s/step ETA 1:50",
        "validate 10/10 images 3.00 s/image ETA 0:00",  # 30 s after its first image started
        "validate done: 10 images in 0:30 (3.00 s/image)",
        "train 51/100 steps (epoch 2/2) loss 0.2292 2.00 s/step ETA 1:38",  # (5 x 0.25 + 0.125) / 6
        "train 66/100 steps (epoch 2/2) loss 0.1250 2.00 s/step ETA 1:08",
        "train 81/100 steps (epoch 2/2) loss 0.1250 2.00 s/step ETA 0:38",
        "train 96/100 steps (epoch 2/2) loss 0.1250 2.00 s/step ETA 0:08",
        "train done: 100 steps in 3:20 (2.00 s/step) loss 0.1250",
    ]


def test_a_replanned_run_shows_its_new_length(caplog):
    """BudgetKeeper changes max_epochs mid-run: the next line counts against the new total."""
    cb, clock, trainer = started(caplog)
    cb.on_train_start(trainer, None)
    for step in range(1, 31):
        if step == 16:  # re-planned after the first line: 3 epochs of 50 steps
            trainer.estimated_stepping_batches, trainer.max_epochs = 150, 3
        cb.on_train_batch_start(trainer, None, {}, step - 1)
        clock.t += 2
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, torch.tensor(0.5), {}, step - 1)
    assert messages(caplog) == [
        "train 15/100 steps (epoch 1/2) loss 0.5000 2.00 s/step ETA 2:50",
        "train 30/150 steps (epoch 1/3) loss 0.5000 2.00 s/step ETA 4:00",
    ]


def test_test_loop_and_an_endless_loader(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    cb = ProgressLog(interval_s=0, when="always", clock=clock)
    trainer = fake_trainer(num_test_batches=[float("inf")])
    cb.setup(trainer, None, "test")
    cb.on_test_start(trainer, None)
    clock.t += 60  # work done by other callbacks at the start of the test is not an image
    for i in range(2):
        cb.on_test_batch_start(trainer, None, {}, i)
        clock.t += 1.5
        cb.on_test_batch_end(trainer, None, {}, {}, i)
    cb.on_test_end(trainer, None)
    assert messages(caplog) == ["test 1 image 1.50 s/image", "test 2 images 1.50 s/image",
                                "test done: 2 images in 0:03 (1.50 s/image)"]


def test_only_rank_zero_logs_and_bad_settings_fail_at_once(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    cb = ProgressLog(interval_s=0, when="always")
    trainer = fake_trainer(is_global_zero=False)
    cb.setup(trainer, None, "test")
    assert getattr(cb, INTERVAL_ATTR) is None
    cb.on_test_start(trainer, None)
    cb.on_test_batch_start(trainer, None, {}, 0)
    cb.on_test_batch_end(trainer, None, {}, {}, 0)
    cb.on_test_end(trainer, None)
    assert messages(caplog) == []
    with pytest.raises(ValueError, match="when='tty'"):
        ProgressLog(when="tty")
    with pytest.raises(ValueError, match="interval_s"):
        ProgressLog(interval_s=-1)


def test_auto_is_on_for_a_pipe_and_off_for_a_terminal(monkeypatch):
    read_fd, write_fd = os.pipe()
    master, slave = os.openpty()
    with os.fdopen(write_fd, "w") as pipe, os.fdopen(slave, "w") as tty:
        for stream, on in ((pipe, True), (tty, False)):
            monkeypatch.setattr(sys, "stdout", stream)
            cb = ProgressLog(interval_s=5)
            cb.setup(fake_trainer(), None, "fit")
            assert cb.enabled is on and getattr(cb, INTERVAL_ATTR) == (5 if on else None)
        monkeypatch.undo()
    os.close(read_fd)
    os.close(master)


LINE = re.compile(r"^train \d+/4 steps \(epoch [12]/2\) loss \d+\.\d{4} \d+\.\d\d s/step ETA \d+:\d\d$")
# a light network (the whole validation / test images are the slow part), one validation and test image
TINY_RUN = ["logger=none", "callbacks=[rich_progress_bar,progress_log]", "callbacks.progress_log.interval_s=0",
            "model.decoder_channels=[32,16,8]", "trainer.max_epochs=2", "trainer.num_sanity_val_steps=1",
            "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "+trainer.enable_checkpointing=false"]


@pytest.mark.parametrize("when", ["always", "never"])
def test_lines_in_a_real_tiny_run(make_cfg, caplog, when):
    """Two epochs of two steps, validation and test on one image; interval 0: a line per step and image."""
    caplog.set_level(logging.INFO, logger="nucseg")
    train(make_cfg([*TINY_RUN, f"callbacks.progress_log.when={when}"]))
    lines = messages(caplog)
    if when == "never":
        assert lines == []
        return
    train_lines = [m for m in lines if m.startswith("train ") and " done: " not in m]
    assert len(train_lines) == 4 and all(LINE.match(m) for m in train_lines), lines
    assert [m.split()[1] for m in train_lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert re.fullmatch(r"train done: 4 steps in \d+:\d\d \(\d+\.\d\d s/step\) loss \d+\.\d{4}",
                        next(m for m in lines if m.startswith("train done")))
    # two validations of one image, a line each and one when it ends; none from the sanity check
    val = [m for m in lines if m.startswith("validate")]
    assert len(val) == 4 and sum(m.startswith("validate done: 1 image in ") for m in val) == 2, lines
    assert re.fullmatch(r"validate 1/1 image \d+\.\d\d s/image ETA 0:00", val[0])
    test = [m for m in lines if m.startswith("test")]
    assert len(test) == 2 and re.fullmatch(r"test 1/1 image \d+\.\d\d s/image ETA 0:00", test[0])
    assert test[1].startswith("test done: 1 image in ")
