"""The sweeper's config (`hydra.sweeper.*`), registered as `hydra/sweeper=nucseg_optuna`."""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class NucsegOptunaSweeperConf:
    _target_: str = "hydra_plugins.nucseg_optuna_sweeper.sweeper.NucsegOptunaSweeper"
    # null: a journal file <sweep dir>/optuna_journal.log; journal:///path/study.log: a journal file anywhere (on
    # shared storage for several workers); or an SQLAlchemy URL: sqlite:///study.db, postgresql://user@host/db
    storage: str | None = None
    study_name: str = "nucseg"
    # add trials to an existing study of that name (several workers, a restarted sweep); false: fail if it exists
    load_if_exists: bool = True
    direction: str = "maximize"
    # the study's total over every worker sharing it
    n_trials: int = 20
    # trials launched at a time (run in parallel by a parallel launcher, e.g. hydra/launcher=slurm)
    n_jobs: int = 1
    # this worker stops with an error after this many failed trials
    max_failures: int = 5
    # a running trial's worker refreshes its heartbeat this often (s); older than grace_period: the worker is gone
    heartbeat_interval: float = 60.0
    grace_period: float = 600.0
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None})
    # median | percentile | successive_halving | hyperband | none, or {_target_: optuna.pruners.<Name>, ...}
    pruner: Any = "median"
    # key: choice(...) | range(...) | interval(...) | tag(log, interval(...)) | a fixed value
    params: dict[str, str] | None = None


ConfigStore.instance().store(group="hydra/sweeper", name="nucseg_optuna", node=NucsegOptunaSweeperConf,
                             provider="nucseg")
