"""DDP through the real command: two CPU processes (gloo) train and test in one run directory, rank 0 alone
writes the results, and the metrics are the same keys as a one-process run."""

from __future__ import annotations

import json

import torch

from tests.helpers.marks import LONG_RUN
from tests.helpers.train_cli import LEAN, run_train, train_env

NO_SANITY = "trainer.num_sanity_val_steps=0"
DDP = ["trainer=ddp_cpu", "trainer.devices=2",
       # FAST_OVERRIDES use encoder_depth=3: the encoder's two deepest stages get no gradient
       "trainer.strategy.find_unused_parameters=true"]


@LONG_RUN
def test_two_process_cpu_ddp_matches_single_process_keys(tmp_path, cache_dir, data_dir):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    # default callbacks: the evaluation callbacks' test-time logging must work across ranks too
    run_train(NO_SANITY, f"hydra.run.dir={single}", cache_dir=cache_dir)
    proc = run_train(NO_SANITY, *DDP, f"hydra.run.dir={ddp}", cache_dir=cache_dir, env=train_env(OMP_NUM_THREADS="1"))
    out = proc.stdout + proc.stderr
    assert "distributed_backend=gloo" in out
    assert "MEMBER: 2/2" in out

    # one run directory for both ranks: the relaunched rank got rank 0's hydra.run.dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "single"]
    assert (ddp / ".hydra" / "config.yaml").is_file()
    # each rank logs to its own file; only rank 0 writes results
    assert (ddp / "debug.log").is_file()
    rank1_log = (ddp / "debug_rank1.log").read_text()
    assert "split of dsb2018" in rank1_log  # rank 1 really ran the job
    assert "wrote" not in rank1_log and "metrics.json" not in rank1_log

    m1 = json.loads((single / "metrics.json").read_text())
    m2 = json.loads((ddp / "metrics.json").read_text())
    assert set(m2) == set(m1)
    for key in ("test/dice", "test/iou", "val/dice", "train/loss"):
        assert m2[key] is not None and 0.0 <= m2[key] <= (1.0 if key != "train/loss" else 10.0), key

    # both ranks stepped together: 2 optimizer steps (limit_train_batches=2); the final last.ckpt counts the
    # one finished epoch; one checkpoint directory
    ckpt = torch.load(ddp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 1
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["epoch_000.ckpt", "last.ckpt", "model.ckpt"]
    # model.ckpt: the tested (best) weights, written once by rank 0, without the optimizer state
    model = torch.load(ddp / "checkpoints" / "model.ckpt", map_location="cpu", weights_only=True)
    best = torch.load(ddp / "checkpoints" / "epoch_000.ckpt", map_location="cpu", weights_only=False)
    assert "optimizer_states" not in model and "optimizer_states" in best
    assert model["state_dict"].keys() == best["state_dict"].keys()
    assert all(torch.equal(model["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])


@LONG_RUN
def test_ddp_inside_multirun_gives_each_job_its_ranks(tmp_path, cache_dir, data_dir):
    """`-m` + trainer=ddp: each job launches its own rank 1 into its own directory (nucseg.utils.run_lifecycle)."""
    sweep = tmp_path / "sweep"
    run_train(*LEAN, *DDP, "loss=bce_dice,dice", f"hydra.sweep.dir={sweep}", cache_dir=cache_dir, multirun=True,
              env=train_env(OMP_NUM_THREADS="1"), timeout=600)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, loss in (("0", "BCEDiceLoss"), ("1", "DiceLoss")):
        d = sweep / job
        assert (d / "metrics.json").is_file()
        assert "split of dsb2018" in (d / "debug_rank1.log").read_text()
        cfg = (d / ".hydra" / "config.yaml").read_text()
        assert f"nucseg.losses.{loss}" in cfg
