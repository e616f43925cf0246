"""How a launched job finds its trial: three environment variables the sweeper sets through
`hydra.job.env_set` (Hydra sets them around the job, in-process or in a Slurm job), read by the pruning callback
(`nucseg.callbacks.optuna_pruning`), which reopens the study from its storage to report validation values."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["TrialRef", "env_overrides"]

STORAGE = "NUCSEG_OPTUNA_STORAGE"
STUDY = "NUCSEG_OPTUNA_STUDY"
TRIAL = "NUCSEG_OPTUNA_TRIAL_ID"


@dataclass(frozen=True)
class TrialRef:
    storage: str  # a URL from nucseg.sweep.storage.resolve_storage
    study_name: str
    trial_id: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrialRef | None:
        """The trial this process runs, or None outside an Optuna sweep."""
        env = os.environ if env is None else env
        if not env.get(TRIAL):
            return None
        return cls(env[STORAGE], env[STUDY], int(env[TRIAL]))


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def env_overrides(ref: TrialRef) -> list[str]:
    """The Hydra overrides that hand `ref` to the job."""
    return [f"++hydra.job.env_set.{STORAGE}={_quote(ref.storage)}",
            f"++hydra.job.env_set.{STUDY}={_quote(ref.study_name)}",
            f"++hydra.job.env_set.{TRIAL}={ref.trial_id}"]
