"""The prediction loop (nucseg.inference.batch.predict_into) logs plain progress lines where stdout is not a
terminal, and none on a terminal or with progress=false; three real images, a crafted 1x1-convolution model."""

from __future__ import annotations

import io
import logging
import re
import sys

import pytest

import nucseg
from nucseg.inference import records
from nucseg.inference.batch import predict_into
from tests.helpers.checkpoints import save_checkpoint

LOGGER = "nucseg.inference.batch"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory, dsb_root):
    d = tmp_path_factory.mktemp("batch-progress")
    ckpt = save_checkpoint(d / "conv.ckpt")
    ids = sorted(p.name for p in dsb_root.iterdir() if p.is_dir())[:3]
    todo = [(dsb_root / i / "images" / f"{i}.png", i) for i in ids]
    return nucseg.Predictor.from_checkpoint(ckpt, device="cpu"), todo, records.run_settings(ckpt, {})


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.getMessage().startswith("predict")]


@pytest.mark.parametrize(("stdout", "progress", "expect_lines"), [
    (io.StringIO(), True, True),  # a log file / pipe
    (Terminal(), True, False),  # the rich bar instead
    (io.StringIO(), False, False),  # progress=false: neither
])
def test_progress_lines_where_stdout_is_not_a_terminal(setup, tmp_path, caplog, monkeypatch, stdout, progress,
                                                       expect_lines):
    predictor, todo, settings = setup
    monkeypatch.setattr(sys, "stdout", stdout)
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = predict_into(predictor, todo, tmp_path, settings, {}, overlay=False, progress=progress, interval_s=0)
    assert len(result.predicted) == 3 and not result.errors
    lines = progress_lines(caplog)
    if not expect_lines:
        assert lines == []
        return
    assert len(lines) == 4, lines
    for n, line in enumerate(lines[:3], 1):
        assert re.fullmatch(rf"predict {n}/3 images \d+\.\d\d s/image ETA \d+:\d\d", line), line
    assert lines[2].endswith("ETA 0:00")
    assert re.fullmatch(r"predict done: 3 images in \d+:\d\d \(\d+\.\d\d s/image\)", lines[3])
