"""Hydra multirun through the real command: one output directory and one W&B run per job."""

from __future__ import annotations

import json

import yaml

from tests.helpers.marks import LONG_RUN
from tests.helpers.train_cli import LEAN, run_train


@LONG_RUN
def test_two_job_multirun_gives_separate_outputs_and_wandb_runs(tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    run_train(*LEAN, "loss=bce_dice,dice", "logger=wandb", "test=false", f"hydra.sweep.dir={sweep}",
              cache_dir=cache_dir, multirun=True)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    assert (sweep / "multirun.yaml").is_file()

    run_ids = []
    for job, loss in (("0", "bce_dice"), ("1", "dice")):
        d = sweep / job
        assert f"loss={loss}" in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        metrics = json.loads((d / "metrics.json").read_text())
        assert 0.0 <= metrics["val/dice"] <= 1.0
        assert (d / "checkpoints" / "last.ckpt").is_file()
        run_id = (d / "wandb_id.txt").read_text().strip()
        wandb_runs = list((d / "wandb").glob("offline-run-*"))
        assert [p.name.rsplit("-", 1)[-1] for p in wandb_runs] == [run_id]  # exactly one W&B run, this job's
        run_ids.append(run_id)
    assert run_ids[0] != run_ids[1]
    # the jobs really differ: their losses differ on the same first batches
    m0, m1 = (json.loads((sweep / j / "metrics.json").read_text()) for j in "01")
    assert m0["train/loss"] != m1["train/loss"]


def test_slurm_launcher_config_composes():
    """`hydra/launcher=slurm` selects hydra-submitit-launcher's SLURM launcher with nucseg's defaults."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.helpers.paths import PROJECT_ROOT

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", "hydra.launcher.tasks_per_node=4",
                                          "hydra.launcher.gpus_per_node=4", "trainer=ddp", "trainer.devices=4"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == launcher.gpus_per_node == cfg.trainer.devices == 4
    assert launcher.max_num_timeout > 0  # pre-empted jobs are re-queued
