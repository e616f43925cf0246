"""One sweeper worker on a shared study, with a trivial in-process task instead of a training: the study-wide
trial count, two worker processes on one journal study, a killed worker's trial re-queued by a restarted sweep,
failed and pruned trials recorded as such."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from nucseg.sweep.storage import resolve_storage
from nucseg.sweep.worker import FAIL_REASON, HEARTBEAT, NOT_RUN, REQUEUED_FROM, WORKER, is_stale
from nucseg.utils.errors import ConfigError
from tests.helpers.paths import PROJECT_ROOT
from tests.helpers.sweep import SPACE, logging_task, run_log, worker


def _journal(tmp_path: Path) -> str:
    return resolve_storage(f"journal://{tmp_path}/shared/study.log", "sweep", cwd=tmp_path)


def _study(url: str, name: str = "test") -> optuna.Study:
    from nucseg.sweep.storage import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url))


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def _worker_cmd(url: str, runs: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "tests.helpers.sweep", url, str(runs), *args]


def test_one_worker_runs_n_trials_and_tells_each_value(tmp_path):
    url, runs = _journal(tmp_path), tmp_path / "runs.log"
    w = worker(url, 3, logging_task(runs), seed=0)
    study = w.run(SPACE)
    assert _states(study) == ["COMPLETE"] * 3 and w.ran == [0, 1, 2]
    for t in study.trials:
        assert t.value == pytest.approx(t.params["x"]) and t.user_attrs[WORKER].endswith(f":{os.getpid()}")
    # a second sweep on the same study with the same n_trials has nothing left to do
    again = worker(url, 3, logging_task(runs), seed=1)
    again.run(SPACE)
    assert again.ran == [] and len(_study(url).trials) == 3
    assert sorted(run_log(runs)["done"]) == [t._trial_id for t in study.trials]


def test_two_worker_processes_on_one_journal_study_finish_n_trials_between_them(tmp_path):
    url, runs, go = _journal(tmp_path), tmp_path / "runs.log", tmp_path / "go"
    n = 8
    procs = [subprocess.Popen(_worker_cmd(url, runs, "--n-trials", str(n), "--seconds", "0.4", "--seed", str(i),
                                          "--go", str(go)),
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    deadline = time.monotonic() + 90
    while len(list(tmp_path.glob("go.ready.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start asking together
    outputs = [p.communicate(timeout=90)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = _study(url)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == n  # none lost
    log = run_log(runs)
    assert len(log["start"]) == len(set(log["start"])) == n  # none run twice, none run beyond n
    assert sorted(log["done"]) == sorted(t._trial_id for t in complete)
    for t in study.get_trials(deepcopy=False):  # anything else was asked in a race and not run
        assert t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and NOT_RUN in t.user_attrs), t
    ran = [line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("ran")]
    assert len(ran) == 2 and all(ran), outputs  # both workers ran trials of the one study
    assert sorted(int(x) for r in ran for x in r) == sorted(t.number for t in complete)


def test_a_sweep_killed_mid_trial_and_restarted_goes_on_with_its_trials(tmp_path):
    url, runs, marker = _journal(tmp_path), tmp_path / "runs.log", tmp_path / "trial2.pid"
    # the killed trial is the last of n_trials: its re-run must still happen
    proc = subprocess.Popen(_worker_cmd(url, runs, "--n-trials", "3", "--seed", "0", "--block-trial", "2",
                                        "--marker", str(marker)),
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 90
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate(timeout=5)[0] if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)  # mid-trial: trial 2 is RUNNING in the study
    proc.wait(timeout=30)
    before = _study(url).trials
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"]

    restarted = worker(url, 3, logging_task(runs), seed=1)  # the same sweep started again
    study = restarted.run(SPACE)
    trials = study.trials
    assert [(t.number, t.state, t.value) for t in trials[:2]] == [(t.number, t.state, t.value) for t in before[:2]]
    killed = trials[2]
    assert killed.state == TrialState.FAIL and str(proc.pid) in killed.user_attrs[FAIL_REASON]
    rerun = [t for t in trials if t.user_attrs.get(REQUEUED_FROM) == 2]
    assert len(rerun) == 1 and rerun[0].params == killed.params and rerun[0].state == TrialState.COMPLETE
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3 and len(trials) == 4
    assert restarted.ran == [rerun[0].number]  # only the re-run: the finished trials were not run again
    log = run_log(runs)
    assert log["start"].count(trials[0]._trial_id) == log["start"].count(trials[1]._trial_id) == 1


def test_failed_trials_are_recorded_and_replaced_and_too_many_stop_the_worker(tmp_path):
    url = _journal(tmp_path)
    outcomes = iter([RuntimeError("CUDA out of memory"), math.nan, None, 0.5, 0.7])

    def task(values, ref):
        out = next(outcomes)
        if isinstance(out, Exception):
            raise out
        return out

    study = worker(url, 2, task, seed=0).run(SPACE)
    assert _states(study) == ["FAIL", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    reasons = [t.user_attrs[FAIL_REASON] for t in study.trials[:3]]
    assert reasons[0] == "RuntimeError: CUDA out of memory"
    assert "non-finite" in reasons[1] and "not a number" in reasons[2]

    def always_fails(values, ref):
        raise ValueError("bad config")

    with pytest.raises(RuntimeError, match="2 trials failed in this worker"):
        worker(url, 2, always_fails, study_name="failing", max_failures=2).run(SPACE)
    assert _states(_study(url, "failing")) == ["FAIL", "FAIL"]


def _pruning_fit(pruner: str | None, epochs: int = 3):
    """A task that trains a tiny Lightning model with nucseg's OptunaPruning callback on `ref`'s trial."""

    def task(values, ref):
        import lightning as L
        import torch

        from nucseg.callbacks.optuna_pruning import OptunaPruning

        class Tiny(L.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)

            def training_step(self, batch, _):
                return self.layer(batch[0]).pow(2).mean()

            def validation_step(self, batch, _):
                self.log("val/dice", float(values["x"]) * (1 + self.current_epoch))

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu",
                            callbacks=[OptunaPruning(monitor="val/dice", pruner=pruner, trial=ref)])
        trainer.fit(Tiny(), data, data)
        return trainer.callback_metrics["val/dice"].item()

    return task


def test_a_pruned_trial_is_recorded_as_pruned(tmp_path):
    url = _journal(tmp_path)
    # a pruner that prunes at the first report: every value is below 10
    pruner = {"_target_": "optuna.pruners.ThresholdPruner", "lower": 10.0}
    study = worker(url, 1, _pruning_fit(pruner), seed=0, pruner="none").run(SPACE)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED
    assert list(trial.intermediate_values) == [2]  # reported once, at the first validation (global step 2)
    assert trial.value == pytest.approx(trial.params["x"])  # the last reported value


def test_without_pruning_every_validation_is_reported_and_the_trial_completes(tmp_path):
    url = _journal(tmp_path)
    study = worker(url, 1, _pruning_fit("none"), seed=0).run(SPACE)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and list(trial.intermediate_values) == [2, 4, 6]
    assert trial.value == pytest.approx(3 * trial.params["x"])


def test_stale_trials_dead_pid_on_this_host_or_an_old_heartbeat():
    study = optuna.create_study()
    trial = study.ask()
    frozen = study.trials[0]
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    now = time.time()
    frozen.user_attrs.update({WORKER: f"{socket.gethostname()}:{dead_pid}", HEARTBEAT: now})
    assert is_stale(frozen, grace_period=600, now=now)  # its process is gone
    frozen.user_attrs.update({WORKER: "node-17:1234", HEARTBEAT: now - 30})
    assert not is_stale(frozen, grace_period=600, now=now)  # another host, beating
    frozen.user_attrs.update({HEARTBEAT: now - 601})
    assert is_stale(frozen, grace_period=600, now=now)  # another host, silent for longer than the grace period
    frozen.user_attrs.update({WORKER: f"{socket.gethostname()}:{os.getpid()}"})
    assert not is_stale(frozen, grace_period=600, now=now)  # this worker's own
    del trial


def test_an_existing_study_without_load_if_exists_or_with_another_direction_is_a_config_error(tmp_path):
    url = _journal(tmp_path)
    worker(url, 1, lambda values, ref: 1.0).run(SPACE)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.study_name: study 'test' already exists"):
        worker(url, 1, lambda values, ref: 1.0, load_if_exists=False).run(SPACE)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.direction: minimize, but study 'test'"):
        worker(url, 1, lambda values, ref: 1.0, direction="minimize").run(SPACE)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.n_trials"):
        worker(url, 0, lambda values, ref: 1.0)


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_workers_with_the_same_seed_sample_different_trials_and_one_sweep_is_reproducible(tmp_path, sampler):
    from nucseg.sweep.space import parse_space
    from nucseg.sweep.worker import SweepSettings, Worker

    def make(url: str) -> Worker:
        s = (optuna.samplers.RandomSampler(seed=7) if sampler == "random"
             else optuna.samplers.TPESampler(seed=7, n_startup_trials=1))
        return Worker(SweepSettings(storage=url, study_name="s", n_trials=4, seed=7), lambda *a: [], sampler=s)

    space, _ = parse_space(SPACE)
    url = _journal(tmp_path)
    a, b = make(url), make(url)
    study_a, study_b = a.open_study(), b.open_study()
    (ta,), (tb,) = a._ask(study_a, 1), b._ask(study_b, 1)  # asked at the same time by two workers
    first = [a.sample(ta, space), b.sample(tb, space)]
    assert first[0] != first[1]

    # one worker on a fresh study draws the same values again
    again = make(resolve_storage(f"journal://{tmp_path}/again.log", "sweep", cwd=tmp_path))
    study = again.open_study()
    (t0,), (t1,) = again._ask(study, 1), again._ask(study, 1)  # a batch (n_jobs=2): asked, then sampled
    assert [again.sample(t0, space), again.sample(t1, space)] == first


def test_an_interrupted_sweep_queues_its_trial_again_and_a_failed_launch_does_not(tmp_path):
    url = _journal(tmp_path)

    def interrupted(values, ref):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        worker(url, 2, interrupted, seed=0).run(SPACE)
    study = worker(url, 2, lambda values, ref: float(values["x"]), seed=0).run(SPACE)
    first, rerun = study.trials[0], study.trials[1]
    assert first.state == TrialState.FAIL and first.user_attrs[FAIL_REASON] == "the sweep was interrupted"
    assert rerun.user_attrs[REQUEUED_FROM] == 0 and rerun.params == first.params
    assert rerun.state == TrialState.COMPLETE and len(study.get_trials(states=(TrialState.COMPLETE,))) == 2

    from nucseg.sweep.worker import SweepSettings, Worker

    def broken_launcher(batch, idx):
        raise RuntimeError("Could not override 'foo'")

    w = Worker(SweepSettings(storage=url, study_name="broken", n_trials=2), broken_launcher)
    with pytest.raises(RuntimeError):
        w.run(SPACE)
    (trial,) = _study(url, "broken").trials  # failed, not queued again
    assert trial.state == TrialState.FAIL and "Could not override" in trial.user_attrs[FAIL_REASON]
