"""One sweeper process on a shared study: ask trials, launch them through Hydra's launcher, tell the results.

Several workers (processes, Slurm jobs) can run on one study; they share it through its storage only:

- `n_trials` is the study's total. A worker asks while fewer than `n_trials` trials are COMPLETE, PRUNED or
  RUNNING (`ask` hands out WAITING, i.e. re-queued, trials first); it runs the trial it got only if fewer than
  `n_trials` trials with a smaller number are COMPLETE, PRUNED, RUNNING or WAITING (trial numbers are handed out
  atomically by the storage), else it tells it FAIL unrun (`nucseg_not_run`). So
  the workers finish exactly `n_trials` between them, whatever their timing. FAILed trials do not count: a trial
  that crashed is replaced by a new one (up to `max_failures` per worker).
- Each worker stamps its trials with `nucseg_worker` (host:pid) and refreshes `nucseg_heartbeat` every
  `heartbeat_interval` seconds from a thread while they run. A RUNNING trial is stale when its worker is a dead
  process on this host, or its heartbeat is older than `grace_period` (another host). At start and before each
  batch a worker fails the stale trials (`nucseg_fail_reason`) and enqueues their parameters again, once
  (`nucseg_requeued_from`): a trial killed with its worker (pre-emption, a node lost, Ctrl-C) says nothing about its
  parameters, so the search runs the point it had chosen instead of losing it; a trial that was itself a re-run is
  not queued a third time, in case the parameters are what kills the worker (out of memory). A sweep stopped by
  Ctrl-C does the same for its running trials on its way out. The journal storage
  has no heartbeat of its own (optuna's `fail_stale_trials` covers RDB storage only), hence this one, the same for
  both kinds of storage.
- Results: COMPLETE with a finite objective; PRUNED when the job raised optuna.TrialPruned (the pruning
  callback); FAIL for an exception or a missing / non-finite objective, logged in one line, the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from nucseg.sweep.space import parse_space, suggest
from nucseg.sweep.storage import open_storage
from nucseg.sweep.trial_env import TrialRef, env_overrides
from nucseg.utils.errors import ConfigError

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

__all__ = ["SweepSettings", "Worker", "counted_trials", "fail_stale_trials", "job_outcome"]

WORKER = "nucseg_worker"
HEARTBEAT = "nucseg_heartbeat"
OVERRIDES = "nucseg_overrides"
OUTPUT_DIR = "nucseg_output_dir"
FAIL_REASON = "nucseg_fail_reason"
NOT_RUN = "nucseg_not_run"
REQUEUED_FROM = "nucseg_requeued_from"

# launch(list of override lists, initial job index) -> one result per list (hydra.core.utils.JobReturn)
Launch = Callable[[Sequence[Sequence[str]], int], Sequence[Any]]


@dataclass
class SweepSettings:
    storage: str  # resolved URL (nucseg.sweep.storage.resolve_storage)
    study_name: str
    direction: str = "maximize"
    n_trials: int = 20  # the study's total, over every worker
    n_jobs: int = 1  # trials launched at a time (in parallel with a parallel launcher)
    load_if_exists: bool = True
    max_failures: int = 5  # this worker stops with an error after this many failed trials
    heartbeat_interval: float = 60.0
    grace_period: float = 600.0  # a RUNNING trial whose heartbeat is older (another host) is stale
    # the sampler's seed (hydra.sweeper.sampler.seed): trial n samples from seed + n, see reseed_for_trial
    seed: int | None = None

    def check(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(f"hydra.sweeper.direction: {self.direction!r}; expected maximize or minimize")
        for key in ("n_trials", "n_jobs", "max_failures"):
            if int(getattr(self, key)) < 1:
                raise ConfigError(f"hydra.sweeper.{key}: {getattr(self, key)!r}; expected a whole number >= 1")
        if not self.study_name:
            raise ConfigError("hydra.sweeper.study_name: empty; expected a name (workers share a study by it)")
        if self.grace_period <= self.heartbeat_interval:
            raise ConfigError(f"hydra.sweeper.grace_period: {self.grace_period!r}; expected more than "
                              f"hydra.sweeper.heartbeat_interval ({self.heartbeat_interval!r})")


def this_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, grace_period: float, now: float | None = None,
             me: str | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone (see the module docstring)."""
    now = time.time() if now is None else now
    owner = str(trial.user_attrs.get(WORKER, ""))
    if owner and owner == (me or this_worker()):
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    beat = trial.user_attrs.get(HEARTBEAT)
    if beat is None:
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        return now - start > grace_period
    return now - float(beat) > grace_period


def fail_stale_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """FAIL the stale RUNNING trials and enqueue their parameters once more; the numbers of the trials failed."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, grace_period):
            continue
        storage = study._storage
        owner = trial.user_attrs.get(WORKER, "?")
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, f"its worker {owner} stopped")
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except (UpdateFinishedTrialError, RuntimeError):  # finished, or failed by another worker first
            continue
        failed.append(trial.number)
        if REQUEUED_FROM in trial.user_attrs:
            log.warning("trial %d was left running by %s (stopped); failed, not re-queued (it was a re-run of "
                        "trial %s)", trial.number, owner, trial.user_attrs[REQUEUED_FROM])
            continue
        study.enqueue_trial(trial.params, user_attrs={REQUEUED_FROM: trial.number}, skip_if_exists=False)
        log.warning("trial %d was left running by %s (stopped): failed and its parameters queued again",
                    trial.number, owner)
    return failed


def reseed_for_trial(sampler: Any, seed: int, number: int) -> bool:
    """Seed the random state(s) of an optuna sampler with `seed + number` before trial `number` samples.

    Several workers started with the same seed (the same command in every Slurm job) would otherwise draw the
    same parameters for the trials they ask at the same time; seeding by trial number keeps one sweep reproducible
    and makes the trials of concurrent workers differ. optuna has no public API to seed a sampler again
    (`reseed_rng` takes no seed): this sets the `_rng` (LazyRandomState) of the sampler and of its fallback random
    sampler, as optuna 4-5 define them; False where a sampler has none (nothing is changed).
    """
    import numpy as np

    done = False
    for obj in (sampler, getattr(sampler, "_random_sampler", None), getattr(sampler, "_independent_sampler", None)):
        rng = getattr(getattr(obj, "_rng", None), "rng", None)
        if isinstance(rng, np.random.RandomState):
            rng.seed((seed + number) % 2**32)
            done = True
    return done


COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")


def counted_trials(study: optuna.Study, waiting: bool = True) -> list[optuna.trial.FrozenTrial]:
    """The trials that count towards n_trials (`waiting=False`: those started)."""
    from optuna.trial import TrialState

    states = [TrialState[s] for s in COUNTED if waiting or s != "WAITING"]
    return study.get_trials(deepcopy=False, states=tuple(states))


def job_outcome(ret: Any) -> tuple[str, float | None, str]:
    """(state name, objective, message) of a launched job's JobReturn."""
    import optuna
    from hydra.core.utils import JobStatus

    value = getattr(ret, "_return_value", None)
    if ret.status == JobStatus.FAILED or isinstance(value, BaseException):
        if isinstance(value, optuna.TrialPruned):
            return "PRUNED", None, str(value) or "pruned"
        first = str(value).strip().splitlines()[0] if str(value).strip() else ""
        return "FAIL", None, f"{type(value).__name__}: {first}"
    try:
        objective = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "FAIL", None, f"the job returned {value!r}, not a number (is optimized_metric logged?)"
    if not math.isfinite(objective):
        return "FAIL", None, f"the job returned a non-finite objective ({objective})"
    return "COMPLETE", objective, ""


class _Heartbeat:
    """Refreshes HEARTBEAT on the trials this worker runs, from a daemon thread."""

    def __init__(self, storage: Any, interval: float) -> None:
        self.storage, self.interval = storage, interval
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="nucseg-optuna-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for trial_id in ids:
                # finished meanwhile, or a storage hiccup: the next beat retries
                with contextlib.suppress(Exception):
                    self.storage.set_trial_user_attr(trial_id, HEARTBEAT, time.time())

    def track(self, ids: Sequence[int]) -> None:
        with self._lock:
            self.trial_ids = set(ids)

    def stop(self) -> None:
        self._stop.set()


class Worker:
    def __init__(self, settings: SweepSettings, launch: Launch, sampler: Any = None, pruner: Any = None) -> None:
        settings.check()
        self.settings, self.launch = settings, launch
        self.sampler, self.pruner = sampler, pruner
        self.failures = 0
        self.ran: list[int] = []  # trial numbers this worker launched
        self.fixed: list[str] = []  # the overrides every trial gets

    def open_study(self) -> optuna.Study:
        import optuna

        s = self.settings
        storage = open_storage(s.storage)
        try:
            study = optuna.create_study(storage=storage, study_name=s.study_name, sampler=self.sampler,
                                        pruner=self.pruner, direction=cast(Any, s.direction),
                                        load_if_exists=s.load_if_exists)
        except optuna.exceptions.DuplicatedStudyError as exc:
            raise ConfigError(f"hydra.sweeper.study_name: study {s.study_name!r} already exists in {s.storage}; set "
                              "hydra.sweeper.load_if_exists=true to add trials to it, or choose another name") from exc
        if study.direction.name.lower() != s.direction:
            raise ConfigError(f"hydra.sweeper.direction: {s.direction}, but study {s.study_name!r} in {s.storage} "
                              f"was created to {study.direction.name.lower()}")
        return study

    def run(self, arguments: Sequence[str]) -> optuna.Study:
        from optuna.trial import TrialState

        s = self.settings
        space, fixed = parse_space(arguments)
        self.fixed = fixed
        study = self.open_study()
        log.info("study %r in %s: %d of %d trials counted, %s; searching %s", s.study_name, s.storage,
                 len(counted_trials(study)), s.n_trials, this_worker(), ", ".join(space) or "nothing")
        heartbeat = _Heartbeat(study._storage, s.heartbeat_interval)
        try:
            while True:
                fail_stale_trials(study, s.grace_period)
                # waiting (re-queued) trials are work to do, not done: ask() hands them out first
                remaining = s.n_trials - len(counted_trials(study, waiting=False))
                if remaining <= 0:
                    break
                trials = self._ask(study, min(s.n_jobs, remaining))
                if not trials:
                    continue
                overrides = []
                for trial in trials:
                    sampled = self.sample(trial, space)
                    trial.set_user_attr(OVERRIDES, sampled)
                    ref = TrialRef(s.storage, s.study_name, trial._trial_id)
                    # the job's directory is named by the trial's number: unique in the study, so a restarted sweep
                    # or another worker in the same sweep directory never reuses a finished trial's directory
                    overrides.append([*fixed, *sampled, *env_overrides(ref), f"++hydra.sweep.subdir={trial.number}"])
                    log.info("trial %d: %s", trial.number, " ".join(sampled))
                heartbeat.track([t._trial_id for t in trials])
                try:
                    returns = self.launch(overrides, trials[0].number)
                except BaseException as exc:  # the launcher failed, or Ctrl-C / a signal: no trial left running
                    self._fail_batch(study, trials, exc)
                    raise
                heartbeat.track([])
                for trial, ret in zip(trials, returns, strict=True):
                    self._tell(study, trial, ret)
                    self.ran.append(trial.number)
                if self.failures >= s.max_failures:
                    raise RuntimeError(f"{self.failures} trials failed in this worker (hydra.sweeper.max_failures="
                                       f"{s.max_failures}); see the failed trials' logs")
        finally:
            heartbeat.stop()
        states = {st.name: len(study.get_trials(deepcopy=False, states=(st,))) for st in TrialState}
        log.info("study %r: %s", s.study_name, ", ".join(f"{n} {k.lower()}" for k, n in states.items() if n))
        return study

    def sample(self, trial: optuna.trial.Trial, space: dict[str, Any]) -> list[str]:
        """The trial's overrides, sampled from the seed for its number (reseed_for_trial) when a seed is set."""
        if self.settings.seed is not None:
            reseed_for_trial(trial.study.sampler, self.settings.seed, trial.number)
        return suggest(trial, space)

    def _ask(self, study: optuna.Study, n: int) -> list[optuna.trial.Trial]:
        """Up to `n` new trials that fit in n_trials (see the module docstring)."""
        from optuna.trial import TrialState

        trials = []
        for _ in range(n):
            trial = study.ask()
            trial.set_user_attr(WORKER, this_worker())
            trial.set_user_attr(HEARTBEAT, time.time())
            earlier = [t for t in counted_trials(study) if t.number < trial.number]
            if len(earlier) >= self.settings.n_trials:
                trial.set_user_attr(NOT_RUN, "the study had n_trials trials when it was asked (another worker)")
                study.tell(trial, state=TrialState.FAIL)
                log.info("trial %d not run: the study already has %d trials", trial.number, self.settings.n_trials)
                break
            trials.append(trial)
        return trials

    def _fail_batch(self, study: optuna.Study, trials: Sequence[optuna.trial.Trial], exc: BaseException) -> None:
        """FAIL the trials of a launch that raised; re-queue their parameters once when the sweep was interrupted
        (Ctrl-C, or Lightning's exit after one), as for a killed worker, but not when the launch itself failed."""
        from optuna.trial import TrialState

        interrupted = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, SystemExit) and exc.code not in (0, 2))
        for trial in trials:
            reason = "the sweep was interrupted" if interrupted else f"the launch failed: {type(exc).__name__}: {exc}"
            trial.set_user_attr(FAIL_REASON, reason[:500])
            frozen = study._storage.get_trial(trial._trial_id)
            study.tell(trial, state=TrialState.FAIL)
            if interrupted and REQUEUED_FROM not in frozen.user_attrs:
                study.enqueue_trial(frozen.params, user_attrs={REQUEUED_FROM: trial.number}, skip_if_exists=False)

    def _tell(self, study: optuna.Study, trial: optuna.trial.Trial, ret: Any) -> None:
        from optuna.trial import TrialState

        state, value, message = job_outcome(ret)
        output_dir = _output_dir(ret)
        if output_dir:
            trial.set_user_attr(OUTPUT_DIR, output_dir)
        if state == "FAIL":
            trial.set_user_attr(FAIL_REASON, message)
            self.failures += 1
            log.warning("trial %d failed: %s", trial.number, message)
        elif state == "PRUNED":
            log.info("trial %d pruned: %s", trial.number, message)
        else:
            log.info("trial %d: %s", trial.number, value)
        study.tell(trial, value, state=TrialState[state])


def _output_dir(ret: Any) -> str | None:
    try:
        return str(ret.hydra_cfg.hydra.runtime.output_dir)
    except Exception:
        return getattr(ret, "working_dir", None)
