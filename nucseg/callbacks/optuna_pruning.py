"""Optuna pruning during training: a thin adapter between Lightning's validation and the trial of an Optuna
sweep (`hparams_search=optuna`, `hydra_plugins.nucseg_optuna_sweeper`).

After each validation of `fit`, rank 0 reports `monitor` (e.g. `val/dice`) at `trainer.global_step` to the trial
and asks the study's pruner whether to stop; the decision is broadcast, so every DDP rank stops together. A
pruned run raises `optuna.TrialPruned`: training stops, the job returns, and the sweeper stores the trial as
PRUNED (its value: the last reported one).

The trial comes from the environment the sweeper sets for each job (`nucseg.sweep.trial_env`); the study is
reopened from its storage (a journal file or a database), so this works in-process and in a Slurm job alike.
Outside a sweep (no trial in the environment) the callback does nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L

from nucseg.sweep.trial_env import TrialRef

__all__ = ["OptunaPruning"]

log = logging.getLogger(__name__)


class OptunaPruning(L.Callback):
    def __init__(self, monitor: str = "val/dice", pruner: Any = "median", trial: TrialRef | None = None) -> None:
        self.monitor = monitor
        self.pruner_spec = pruner
        self.ref = trial if trial is not None else TrialRef.from_env()
        self.trial: Any = None
        self._warned = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.ref is None or self.trial is not None or not trainer.is_global_zero:
            return
        import optuna

        from nucseg.sweep.storage import make_pruner, open_storage

        study = optuna.load_study(study_name=self.ref.study_name, storage=open_storage(self.ref.storage),
                                  pruner=make_pruner(self.pruner_spec))
        self.trial = optuna.trial.Trial(study, self.ref.trial_id)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.trainer.states import TrainerFn

        if self.ref is None or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        prune, message = False, ""
        if trainer.is_global_zero and self.trial is not None:
            prune, message = self._report(trainer)
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            import optuna

            message = trainer.strategy.broadcast(message, src=0)
            log.info("%s", message)
            raise optuna.TrialPruned(message)

    def _report(self, trainer: L.Trainer) -> tuple[bool, str]:
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            if not self._warned:
                log.warning("optuna pruning: %s was not logged at validation (%s); nothing reported", self.monitor,
                            value)
                self._warned = True
            return False, ""
        step = int(trainer.global_step)
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            return True, f"trial {self.trial.number} pruned at step {step}: {self.monitor} = {float(value):.4g}"
        return False, ""
