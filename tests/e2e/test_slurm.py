"""`hydra/launcher=slurm` on a real one-node Slurm (`.ci/slurm.sh`; the `slurm` fixture skips where it cannot
be installed): a 2-job multirun runs as two Slurm jobs, and a training job that Slurm re-queues mid-run
(`scontrol requeue`) resumes from its `last.ckpt` and ends with the planned steps, not more; two Optuna sweeps on
one study launch their trials as Slurm jobs and finish n_trials between them."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from nucseg.training.resume import checkpoint_progress
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import PROJECT_ROOT
from tests.helpers.slurm import SLURM_LAUNCHER, wait_for_state
from tests.helpers.train_cli import LEAN, resumable, run_train, train_cmd, train_env, wait_for_mid_epoch_checkpoint

# one intra-op thread per job: two jobs share the test machine's cores
JOB_ENV = {"OMP_NUM_THREADS": "1"}


def slurm_jobs(sweep: Path) -> list[str]:
    """The Slurm job ids of the sweep's started jobs: submitit's folders that hold a job log (`<array>_<k>`, or
    `<job>` for a single job)."""
    folder = sweep / ".submitit"
    return sorted(d.name for d in folder.glob("*/") if any(d.glob("*_log.*"))) if folder.is_dir() else []


def submitit_logs(sweep: Path) -> dict[str, str]:
    """{Slurm job id: its submitit log (stdout and stderr)} of the sweep's jobs."""
    return {job: "".join(p.read_text() for p in sorted((sweep / ".submitit" / job).glob("*_log.*")))
            for job in slurm_jobs(sweep)}


@LONG_RUN
def test_two_job_multirun_runs_as_slurm_jobs(slurm, tmp_path, cache_dir, data_dir):
    sweep = tmp_path / "sweep"
    run_train(*LEAN, *SLURM_LAUNCHER, "loss=bce_dice,dice", "test=false", f"hydra.sweep.dir={sweep}",
              cache_dir=cache_dir, multirun=True, env=train_env(**JOB_ENV), timeout=580)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    # two Slurm jobs (one array, one task each), each ran its Hydra job to completion
    logs = submitit_logs(sweep)
    assert len(logs) == 2, sorted(logs)
    assert all("Job completed successfully" in log for log in logs.values()), logs
    metrics = {}
    for job, loss in (("0", "bce_dice"), ("1", "dice")):
        d = sweep / job
        assert f"loss={loss}" in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        metrics[job] = json.loads((d / "metrics.json").read_text())
        assert 0.0 <= metrics[job]["val/dice"] <= 1.0
        assert checkpoint_progress(d / "checkpoints" / "last.ckpt")["global_step"] == 2  # limit_train_batches
    # the jobs really differ: their losses differ on the same first batches
    assert metrics["0"]["train/loss"] != metrics["1"]["train/loss"]


EPOCHS, BATCHES = 2, 5
RESUMABLE = [*LEAN, *SLURM_LAUNCHER, *resumable(EPOCHS, BATCHES), "logger=csv"]


@LONG_RUN
def test_requeued_training_job_resumes_from_last_ckpt(slurm, tmp_path, cache_dir, data_dir):
    """`scontrol requeue` ends the running job (SIGTERM, then SIGKILL) and later starts its batch script again:
    submitit runs the same pickled Hydra job in the same directory, and nucseg, seeing SLURM_RESTART_COUNT,
    continues from last.ckpt although the command has no ckpt_path."""
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = train_cmd(*RESUMABLE, f"hydra.sweep.dir={sweep}", cache_dir=cache_dir, multirun=True)
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=train_env(**JOB_ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_mid_epoch_checkpoint(last, proc, BATCHES - 3, timeout=400)
        (job_id,) = slurm_jobs(sweep)
        subprocess.run(["scontrol", "requeue", job_id], check=True)
        # the killed instance is gone once the job waits again (Slurm holds a re-queued job back a while)
        assert wait_for_state(job_id, ("PENDING",)) == "PENDING"
        killed_at = checkpoint_progress(last)
        assert killed_at["epochs_done"] == 0 and 0 < killed_at["global_step"] < BATCHES  # really mid-epoch
        assert not (run_dir / "metrics.json").exists()
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)
        out, _ = proc.communicate(timeout=450)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        for job in slurm_jobs(sweep):  # nothing left running on the cluster
            subprocess.run(["scancel", job], check=False)
    assert proc.returncode == 0, out[-6000:]

    log = submitit_logs(sweep)[job_id]
    assert log.count("Starting with JobEnvironment") == 2  # the batch script ran twice, as one Slurm job
    assert "after a re-queue: ckpt_path=last" in log
    assert f"Restoring states from the checkpoint path at {last}" in log
    # the planned steps, not more: the restarted job trained exactly the steps after the checkpoint, once each
    assert checkpoint_progress(last)["global_step"] == EPOCHS * BATCHES
    resumed_csv = run_dir / "csv" / "resume_1" / "metrics.csv"
    if not resumed_csv.is_file():  # the killed instance had not flushed its CSV
        resumed_csv = run_dir / "csv" / "metrics.csv"
    rows = list(csv.DictReader(resumed_csv.open()))
    steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert steps == list(range(killed_at["global_step"], EPOCHS * BATCHES))
    assert [int(r["epoch"]) for r in rows if r.get("val/dice")] == list(range(EPOCHS))
    assert 0.0 <= json.loads((run_dir / "metrics.json").read_text())["val/dice"] <= 1.0


@LONG_RUN
def test_optuna_trials_run_as_slurm_jobs_sharing_one_study(slurm, tmp_path, cache_dir, data_dir):
    """Issue 24, 2(c): two sweepers started together on one journal study, each launching its trials as Slurm
    jobs (`hydra/launcher=slurm`, one at a time): the study ends with exactly n_trials COMPLETE trials between
    them, each run once, in a Slurm job, by one of the two sweeps."""
    import optuna
    from optuna.trial import TrialState

    from nucseg.sweep.storage import open_storage
    from nucseg.sweep.worker import NOT_RUN, OUTPUT_DIR, WORKER

    url = f"journal://{tmp_path}/shared/study.log"
    sweeps = [tmp_path / f"sweep{i}" for i in range(2)]
    # pruner=none: with 3 tiny trials the test wants every trial COMPLETE, not a pruning decision
    args = [*LEAN, *SLURM_LAUNCHER, "hparams_search=optuna", "hydra.sweeper.sampler.n_startup_trials=2",
            "hydra.sweeper.pruner=none", "test=false", f"hydra.sweeper.storage={url}", "hydra.sweeper.study_name=s",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1"]
    procs = [subprocess.Popen(train_cmd(*args, f"hydra.sweep.dir={sweep}", cache_dir=cache_dir), cwd=PROJECT_ROOT,
                              env=train_env(**JOB_ENV), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for sweep in sweeps]
    try:
        outputs = [p.communicate(timeout=560)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=60)
        for sweep in sweeps:  # nothing left running on the cluster
            for job in slurm_jobs(sweep):
                subprocess.run(["scancel", job.split("_")[0]], check=False)
    assert [p.returncode for p in procs] == [0, 0], [o[-4000:] for o in outputs]

    study = optuna.load_study(study_name="s", storage=open_storage(url))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3, [(t.number, t.state.name, t.user_attrs) for t in study.trials]
    # the rest (if any) were asked in a race with the other sweep and failed unrun, never launched
    assert all(t.state == TrialState.FAIL and NOT_RUN in t.user_attrs
               for t in study.trials if t.state != TrialState.COMPLETE)
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    assert all(t.value is not None and math.isfinite(t.value) for t in complete)

    # each COMPLETE trial ran once, in its own directory (named by its trial number) of one of the two sweeps,
    # and returned the val/dice its metrics.json holds
    ran: dict[Path, set[str]] = {sweep: set() for sweep in sweeps}
    for trial in complete:
        out = Path(trial.user_attrs[OUTPUT_DIR])
        assert out.parent in ran and out.name == str(trial.number), out
        ran[out.parent].add(out.name)
        assert json.loads((out / "metrics.json").read_text())["val/dice"] == pytest.approx(trial.value)
    assert sum(len(r) for r in ran.values()) == 3
    # ...as a Slurm job: every sweep submitted one job per trial it ran, each ran its Hydra job to completion in
    # that trial's directory, and no trial directory exists without a Slurm job behind it
    for sweep, trials in ran.items():
        assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == sorted(trials)
        logs = submitit_logs(sweep)
        assert len(logs) == len(trials), (sweep, sorted(logs), sorted(trials))
        for job, log in logs.items():  # submitit's job environment, read from SLURM_JOB_ID in the job
            assert f"job_id={job.split('_')[0]}" in log and "Job completed successfully" in log, log[-3000:]
        for t in trials:  # the job that wrote the trial's metrics, one per trial
            wrote = [job for job, log in logs.items() if f"wrote {sweep / t / 'metrics.json'}" in log]
            assert len(wrote) == 1, (t, logs)
    # the study was shared: both sweeps ran trials (each asks its first at once; a trial's job takes a minute)
    assert len({t.user_attrs[WORKER] for t in complete}) == 2
