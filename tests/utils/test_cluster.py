"""nucseg.utils.cluster: which processes count as cluster-started ranks, the run directory's shared launch time,
and the resume of a Slurm job that Slurm re-queued."""

from __future__ import annotations

import os
import time

import pytest

from nucseg.utils import cluster
from nucseg.utils.cluster import external_rank, rank_overrides, requeued_ckpt_path

TORCHRUN = {"TORCHELASTIC_RUN_ID": "none", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
SRUN = {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}


def test_external_rank_reads_torchrun_and_srun_but_not_lightnings_relaunch():
    assert external_rank(TORCHRUN) == 1
    assert external_rank(SRUN) == 1
    assert external_rank({**SRUN, "SLURM_PROCID": "0"}) == 0
    assert external_rank({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) is None  # Lightning's own re-launch
    assert external_rank({**SRUN, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) is None  # one task
    assert external_rank({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None  # a batch script
    assert external_rank({}) is None


def test_rank_overrides_keep_hydra_output_to_rank_zero():
    assert rank_overrides(["trainer=ddp_cpu"], TORCHRUN) == ["hydra.output_subdir=null"]
    assert rank_overrides(["trainer=ddp_cpu"], {**TORCHRUN, "RANK": "0"}) == []
    assert rank_overrides(["hydra.output_subdir=.h1"], TORCHRUN) == []
    assert rank_overrides(["trainer=ddp_cpu"], {}) == []


def test_requeued_slurm_job_resumes_from_last():
    assert requeued_ckpt_path(None, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}) == "last"
    assert requeued_ckpt_path(None, {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "0"}) is None
    assert requeued_ckpt_path(None, {}) is None
    # an explicit choice stands
    assert requeued_ckpt_path("a.ckpt", {"SLURM_RESTART_COUNT": "2"}) == "a.ckpt"


def test_launch_time_is_the_parents_start_in_cluster_ranks(monkeypatch):
    monkeypatch.setattr(cluster, "_LAUNCH", {})
    for k, v in TORCHRUN.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(cluster.LAUNCH_TIME_ENV, raising=False)
    parent = cluster._process_start(os.getppid())
    if parent is None:
        pytest.skip("no /proc here")
    assert parent <= time.time()
    assert cluster.launch_seconds() == parent
    assert cluster.launch_time("%Y") == time.strftime("%Y", time.localtime(parent))

    monkeypatch.setattr(cluster, "_LAUNCH", {})
    monkeypatch.setenv(cluster.LAUNCH_TIME_ENV, "86400")  # given explicitly: taken as it is
    assert cluster.launch_time("%Y-%m-%d") == time.strftime("%Y-%m-%d", time.localtime(86400))


def test_launch_time_is_now_in_a_plain_run(monkeypatch):
    monkeypatch.setattr(cluster, "_LAUNCH", {})
    for k in (*TORCHRUN, *SRUN, cluster.LAUNCH_TIME_ENV):
        monkeypatch.delenv(k, raising=False)
    before = int(time.time())
    assert before <= cluster.launch_seconds() <= time.time()
    assert cluster.launch_seconds() == cluster.launch_seconds()  # fixed once read
