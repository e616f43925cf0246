"""Resume: a run killed with SIGKILL mid-epoch and re-launched with `ckpt_path=last` finishes the planned
epochs and steps, in the same W&B run; checkpoints are written atomically; `ckpt_path` values resolve."""

from __future__ import annotations

import csv
import os
import signal
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from nucseg.training.resume import (
    AtomicCheckpointIO,
    checkpoint_progress,
    keep_csv_history,
    resolve_ckpt_path,
    wandb_run_id,
)
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import PROJECT_ROOT
from tests.helpers.train_cli import LEAN, resumable, run_train, train_cmd, train_env, wait_for_mid_epoch_checkpoint

EPOCHS, BATCHES = 2, 5
RESUMABLE = [*LEAN, *resumable(EPOCHS, BATCHES), "logger=[csv,wandb]"]


@LONG_RUN
def test_sigkill_mid_epoch_then_resume_with_ckpt_path_last(tmp_path, cache_dir, data_dir):
    run_dir = tmp_path / "run"
    cmd = train_cmd(*RESUMABLE, f"hydra.run.dir={run_dir}", cache_dir=cache_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=train_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_mid_epoch_checkpoint(last, proc, BATCHES - 2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint_progress(last)
    assert killed_at["epochs_done"] == 0 and 0 < killed_at["global_step"] < BATCHES  # really mid-epoch
    assert not (run_dir / "metrics.json").exists()
    run_id = (run_dir / "wandb_id.txt").read_text().strip()

    # the same command plus ckpt_path=last
    done = run_train(*RESUMABLE, f"hydra.run.dir={run_dir}", "ckpt_path=last", cache_dir=cache_dir)
    log = done.stdout + done.stderr
    assert f"Restoring states from the checkpoint path at {last}" in log
    # Lightning resumes inside the epoch (the rest of epoch 0, then epoch 1): the same count as without a kill
    assert checkpoint_progress(last)["global_step"] == EPOCHS * BATCHES
    # the resumed launch trained exactly the steps after the checkpoint, once each, and validated both epochs
    # (its CSV goes beside the killed launch's, which is kept when it had been flushed)
    resumed_csv = run_dir / "csv" / "resume_1" / "metrics.csv"
    if not resumed_csv.is_file():
        resumed_csv = run_dir / "csv" / "metrics.csv"
    rows = list(csv.DictReader(resumed_csv.open()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps == list(range(killed_at["global_step"], EPOCHS * BATCHES))
    assert [int(r["epoch"]) for r in rows if r.get("val/dice")] == list(range(EPOCHS))
    assert "val/dice" in (run_dir / "metrics.json").read_text()
    assert list((run_dir / "checkpoints").glob(".*.tmp")) == []  # no half-written leftovers

    # one W&B run, continued: both launches used the id stored in the run directory
    assert (run_dir / "wandb_id.txt").read_text().strip() == run_id
    runs = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(name.endswith(f"-{run_id}") for name in runs), runs


def test_atomic_checkpoint_io_keeps_old_file_when_a_write_dies(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 1

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # a kill arriving mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # temporary file removed


def test_resolve_ckpt_path(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) is None  # first launch: nothing to resume, start fresh
    ckpt_dir.mkdir()
    (ckpt_dir / "last.ckpt").write_bytes(b"x")
    stale = ckpt_dir / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half")
    assert resolve_ckpt_path("last", tmp_path) == str(ckpt_dir / "last.ckpt")
    assert not stale.exists()  # a killed write's leftover is removed
    assert resolve_ckpt_path(str(tmp_path), tmp_path / "other") == str(ckpt_dir / "last.ckpt")
    assert resolve_ckpt_path(str(ckpt_dir / "last.ckpt"), tmp_path) == str(ckpt_dir / "last.ckpt")
    with pytest.raises(FileNotFoundError, match="ckpt_path: no checkpoint at"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="directory without checkpoints/last.ckpt"):
        resolve_ckpt_path(str(tmp_path / "empty"), tmp_path)


def test_wandb_run_id_is_stable_per_output_dir(tmp_path):
    first = wandb_run_id(tmp_path / "a")
    assert first and wandb_run_id(tmp_path / "a") == first
    assert wandb_run_id(tmp_path / "b") != first


def test_keep_csv_history_moves_resumed_logs_to_a_new_version(tmp_path):
    cfg = OmegaConf.create({"logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger",
                                               "save_dir": str(tmp_path), "name": "csv", "version": ""}}})
    keep_csv_history(cfg)
    assert cfg.logger.csv.version == ""  # nothing logged yet: keep the folder
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step\n0,0\n")
    keep_csv_history(cfg)
    assert cfg.logger.csv.version == "resume_1"
