"""A sweeper worker without Hydra's launcher or a training: `nucseg.sweep.worker.Worker` with a launcher that
calls a small Python task in-process, and `python -m tests.helpers.sweep` to run such a worker in its own process
(the concurrent-workers and killed-worker tests).

The task gets the trial's sampled values and its `TrialRef` (from the same `hydra.job.env_set` overrides a real
job gets) and appends `<event> <trial id>` lines to a runs log, so a test can count how often each trial ran.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nucseg.sweep.trial_env import STORAGE, STUDY, TRIAL, TrialRef
from nucseg.sweep.worker import SweepSettings, Worker

Task = Callable[[dict[str, str], TrialRef], Any]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return value


def split_overrides(overrides: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """(task values, job environment) of one trial's overrides."""
    values, env = {}, {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key.startswith("++hydra.job.env_set."):
            env[key.rsplit(".", 1)[1]] = _unquote(value)
        elif key.startswith("++hydra."):
            continue
        else:
            values[key.lstrip("+~")] = value
    return values, env


def fake_launch(task: Task) -> Callable[[Sequence[Sequence[str]], int], list[Any]]:
    """A launcher that runs `task` in-process, one trial after the other, as Hydra's basic launcher would: its
    exceptions become FAILED job returns."""
    from hydra.core.utils import JobReturn, JobStatus

    def launch(batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
        returns = []
        for overrides in batch:
            values, env = split_overrides(overrides)
            ref = TrialRef(env[STORAGE], env[STUDY], int(env[TRIAL]))
            ret = JobReturn()
            try:
                ret.return_value = task(values, ref)
                ret.status = JobStatus.COMPLETED
            except Exception as exc:
                ret.return_value = exc
                ret.status = JobStatus.FAILED
            returns.append(ret)
        return returns

    return launch


def logging_task(runs_log: Path, seconds: float = 0.0, block_trial: int | None = None,
                 marker: Path | None = None) -> Task:
    """Returns x; logs `start <id>` and `done <id>`; the trial numbered `block_trial` writes `marker` and hangs."""

    def task(values: dict[str, str], ref: TrialRef) -> float:
        _append(runs_log, f"start {ref.trial_id}")
        if block_trial is not None and _trial_number(ref) == block_trial:
            assert marker is not None
            marker.write_text(str(os.getpid()))
            time.sleep(3600)
        time.sleep(seconds)
        _append(runs_log, f"done {ref.trial_id}")
        return float(values["x"])

    return task


def _open(url: str) -> Any:
    from nucseg.sweep.storage import open_storage

    return open_storage(url)


def _trial_number(ref: TrialRef) -> int:
    import optuna

    study = optuna.load_study(study_name=ref.study_name, storage=_open(ref.storage))
    return study._storage.get_trial(ref.trial_id).number


def _append(path: Path, line: str) -> None:
    with open(path, "a") as f:  # one short write per line: appends from several processes do not interleave
        f.write(line + "\n")


def run_log(path: Path) -> dict[str, list[int]]:
    """{'start': [trial ids], 'done': [trial ids]} of a runs log."""
    out: dict[str, list[int]] = {"start": [], "done": []}
    if path.is_file():
        for line in path.read_text().splitlines():
            event, trial_id = line.split()
            out[event].append(int(trial_id))
    return out


def worker(storage: str, n_trials: int, task: Task, study_name: str = "test", seed: int | None = None,
           **settings: Any) -> Worker:
    import optuna

    pruner = settings.pop("pruner", None)
    sampler = optuna.samplers.RandomSampler(seed=seed)
    settings.setdefault("seed", seed)
    return Worker(SweepSettings(storage=storage, study_name=study_name, n_trials=n_trials, **settings),
                  fake_launch(task), sampler=sampler, pruner=pruner)


SPACE = ["x=interval(0.0, 1.0)"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage")
    parser.add_argument("runs_log", type=Path)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--block-trial", type=int, default=None)
    parser.add_argument("--marker", type=Path, default=None)
    parser.add_argument("--go", type=Path, default=None, help="write <go>.ready.<pid>, start once <go> exists")
    args = parser.parse_args(argv)
    if args.go:
        Path(f"{args.go}.ready.{os.getpid()}").touch()
        while not args.go.exists():
            time.sleep(0.05)
    task = logging_task(args.runs_log, args.seconds, args.block_trial, args.marker)
    w = worker(args.storage, args.n_trials, task, seed=args.seed, heartbeat_interval=0.5, grace_period=30.0)
    w.run(SPACE)
    print("ran", " ".join(map(str, w.ran)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
