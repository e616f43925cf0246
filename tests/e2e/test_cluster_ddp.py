"""DDP ranks started by the cluster, not by Lightning: `torchrun --nproc_per_node=2` and a Slurm step of 2 tasks
(`srun`) train and test in one run directory, give the test metric keys of a one-process run and a per_image.csv
with one row per test image gathered from both ranks (the DistributedSampler's padding copy once), and train
at the precision rank 0 chose."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import hydra
import pytest

from nucseg.training.resume import checkpoint_progress
from tests.helpers.config import FAST_OVERRIDES, compose_cfg
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import PROJECT_ROOT
from tests.helpers.train_cli import run_train, train_env

# the whole test split, made small (5 images: odd, so the 2-rank DistributedSampler pads it with a copy), and
# the callbacks that give per-image rows
COMMON = ["trainer.num_sanity_val_steps=0", "trainer.limit_val_batches=1", "data.split_by=image",
          "data.test_fraction=0.005", "trainer.limit_test_batches=1.0",
          "callbacks=[model_checkpoint,last_checkpoint,rich_progress_bar,instance_metrics,region_scores]"]
# FAST_OVERRIDES use encoder_depth=3: the encoder's two deepest stages get no gradient;
# train_precision=auto: rank 0 measures, rank 1 follows
DDP = ["trainer=ddp_cpu", "trainer.devices=2", "trainer.strategy.find_unused_parameters=true",
       "module.train_precision=auto"]
ENV = {"OMP_NUM_THREADS": "1"}  # two ranks on the test machine's cores


def nucseg_train(*overrides: str, cache_dir: Path) -> list[str]:
    return ["-m", "nucseg.train", *FAST_OVERRIDES, f"paths.cache_dir={cache_dir}", *COMMON, *overrides]


def run(cmd: list[str], timeout: float = 560) -> str:
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, env=train_env(**ENV), capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd[:6]} exited with {proc.returncode}:\n{out[-6000:]}"
    return out


def per_image(run_dir: Path) -> tuple[list[str], list[str]]:
    """(columns, image ids) of a run's per_image.csv."""
    with (run_dir / "per_image.csv").open() as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), [row["id"] for row in reader]


@pytest.fixture(scope="module")
def test_ids(cache_dir, data_dir, tmp_path_factory) -> list[str]:
    """The ids of the test split the runs use, counted from the data."""
    cfg = compose_cfg([*FAST_OVERRIDES, *COMMON], tmp_path_factory.mktemp("split"), cache_dir=cache_dir)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("test")
    return list(datamodule.splits["test"])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir, data_dir, test_ids) -> Path:
    """The same run in one process: what both DDP launches must match."""
    run_dir = tmp_path_factory.mktemp("one") / "run"
    run_train(*COMMON, f"hydra.run.dir={run_dir}", cache_dir=cache_dir, env=train_env(**ENV), timeout=560)
    columns, ids = per_image(run_dir)
    assert sorted(ids) == sorted(test_ids) and len(test_ids) % 2 == 1  # odd: the sampler pads it for 2 ranks
    return run_dir


def check_ddp_run(run_dir: Path, one: Path, test_ids: list[str]) -> None:
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((run_dir / "metrics.json").read_text())
    assert set(m2) == set(m1)
    assert any(k.startswith("test/") for k in m2)
    columns, ids = per_image(run_dir)
    assert columns == per_image(one)[0]
    assert len(ids) == len(test_ids) and set(ids) == set(test_ids)  # every test image, once: both ranks' rows
    # rank 1 really ran, into the same directory, and trained at rank 0's precision
    rank1 = (run_dir / "debug_rank1.log").read_text()
    assert "split of dsb2018" in rank1
    assert "as rank 0 chose" in rank1
    assert "module.train_precision=auto:" in (run_dir / "debug.log").read_text()  # rank 0 measured
    assert "module.train_precision=auto:" not in rank1  # rank 1 did not
    assert checkpoint_progress(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2  # ranks stepped together


@LONG_RUN
def test_torchrun_two_ranks_match_one_process_and_resume(tmp_path, cache_dir, one_process, test_ids):
    log_dir = tmp_path / "outputs"
    # hydra.run.dir not given: both ranks compose their own config and must still agree on the directory
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               *nucseg_train(*DDP, f"paths.log_dir={log_dir}", cache_dir=cache_dir)])
    assert "MEMBER: 2/2" in out
    (run_dir,) = (log_dir / "debug" / "runs").iterdir()  # one run directory for both ranks
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    check_ddp_run(run_dir, one_process, test_ids)

    # resume: the same launch continues from last.ckpt for a second epoch
    out = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               *nucseg_train(*DDP, f"hydra.run.dir={run_dir}", "ckpt_path=last", "trainer.max_epochs=2", "test=false",
                             cache_dir=cache_dir)])
    assert f"Restoring states from the checkpoint path at {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    assert checkpoint_progress(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4


@LONG_RUN
def test_srun_two_tasks_match_one_process(slurm, tmp_path, cache_dir, one_process, test_ids):
    run_dir = tmp_path / "run"
    # Lightning's SLURM environment reads the ranks from the step: --ntasks-per-node must equal trainer.devices
    out = run(["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G", sys.executable,
               *nucseg_train(*DDP, f"hydra.run.dir={run_dir}", cache_dir=cache_dir)])
    assert "MEMBER: 2/2" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    check_ddp_run(run_dir, one_process, test_ids)
