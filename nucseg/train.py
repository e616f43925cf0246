"""`python -m nucseg.train [overrides]`: compose the config, fit, test the best checkpoint, write metrics.json
and per_image.csv.

Thin on purpose: every piece is chosen by config and built with `hydra.utils.instantiate`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.calibrate import calibrate_before_test
from nucseg.callbacks.budget_keeper import BudgetKeeper
from nucseg.callbacks.instance_metrics import InstanceMetrics
from nucseg.callbacks.region_scores import RegionScores
from nucseg.callbacks.uncertainty import UncertaintyEvaluation
from nucseg.callbacks.wandb_outputs import log_run_outputs
from nucseg.checks import check_config
from nucseg.models.module import SegmentationModule
from nucseg.training.budget import apply_budget, reuse_budget, run_elapsed
from nucseg.training.resume import keep_csv_history, pin_wandb_run, resolve_ckpt_path
from nucseg.utils.checkpoint import MODEL_FILE, publish_model
from nucseg.utils.cluster import rank_overrides, requeued_ckpt_path
from nucseg.utils.config import CONF_DIR
from nucseg.utils.distributed import gather_rows
from nucseg.utils.errors import friendly_errors
from nucseg.utils.extras import check_overrides
from nucseg.utils.instantiate import instantiate_callbacks, instantiate_loggers
from nucseg.utils.run_lifecycle import finish_wandb, hydra_job_for_ddp, to_float_dict, write_metrics
from nucseg.utils.tables import merge_rows, write_per_image

log = logging.getLogger(__name__)


def _dict(node: Any) -> dict[str, Any]:
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))


def build_module(cfg: DictConfig) -> SegmentationModule:
    sched: Any = cfg.get("scheduler") or {}
    return SegmentationModule(
        net=_dict(cfg.model),
        loss=_dict(cfg.loss),
        optimizer=hydra.utils.instantiate(cfg.optimizer),
        scheduler=hydra.utils.instantiate(sched.scheduler) if sched.get("scheduler") else None,
        scheduler_config=_dict(sched.config) if sched.get("config") else None,
        **_dict(cfg.module),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    started = time.monotonic()  # budget.minutes counts from here (plus the process's start-up)
    check_config(cfg, "train")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    output_dir = Path(cfg.paths.output_dir)
    # resume point (train) or weights (test); a job Slurm re-queued continues from its last.ckpt
    ckpt_path = resolve_ckpt_path(requeued_ckpt_path(cfg.get("ckpt_path")), output_dir)
    if ckpt_path and cfg.get("train", True):
        keep_csv_history(cfg)
    pin_wandb_run(cfg, output_dir)

    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    module = build_module(cfg)
    keeper: BudgetKeeper | None = None
    if cfg.get("train", True) and (cfg.get("budget") or {}).get("minutes"):
        # a resumed run keeps the schedule it was planned with, budget.plan reruns a recorded one; else measure
        plan = cfg.budget.get("plan") or (output_dir / "budget.json" if ckpt_path else None)
        if not (plan and reuse_budget(cfg, module, datamodule, plan, output_dir)):
            planned = apply_budget(cfg, module, datamodule, output_dir, started=started)
            if cfg.budget.get("replan", True):  # a measured plan follows the pace it meets (not a rerun's)
                keeper = BudgetKeeper(planned, lambda: run_elapsed(started), output_dir / "budget.json",
                                      max_steps=cfg.budget.get("max_steps"))
        if cfg.get("seed") is not None:  # the timing drew random batches: start training from the seed
            L.seed_everything(cfg.seed, workers=True)
    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    if keeper is not None:
        callbacks.append(keeper)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    for lg in loggers:
        lg.log_hyperparams(_dict(cfg))

    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = to_float_dict(trainer.callback_metrics)

    if cfg.get("test", True):
        ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if not cfg.get("train", True):
            ckpt = ckpt_path or ""
        if not ckpt:
            log.warning("no best checkpoint found; testing the current weights")
        else:  # calibrate the weights that will be tested
            module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
        calibrate_before_test(trainer, module, datamodule, callbacks, ckpt or None)
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt or None, weights_only=False)
        metrics.update(to_float_dict(trainer.callback_metrics))
        if ckpt:
            metrics["best_model_path"] = ckpt  # type: ignore[assignment]
            if trainer.is_global_zero:
                publish_model(ckpt, output_dir / "checkpoints" / MODEL_FILE)

    if cfg.get("test", True):  # every rank: the rows are gathered from all of them
        write_test_rows(output_dir / "per_image.csv", callbacks, trainer)
    if trainer.is_global_zero:
        write_metrics(output_dir / "metrics.json", metrics)
        log_run_outputs(callbacks, trainer, output_dir, metrics)  # W&B: model artifact, per-image table, figures
    return metrics


def write_test_rows(path: Path, callbacks: list, trainer: L.Trainer | None = None) -> None:
    """per_image.csv of the test split as `nucseg.evaluate` writes it: the instance metrics, the uncertainty
    rows (certainty, every candidate score, OOD score, review flag) and the pixel error / region scores joined on
    the image id. In DDP every rank calls it: each table is gathered from all ranks (once per image, without the
    DistributedSampler's padding copies) and rank 0 writes."""
    tables = [gather_rows(trainer, c.rows) for kind in (InstanceMetrics, UncertaintyEvaluation, RegionScores)
              for c in callbacks if isinstance(c, kind)]
    tables = [t for t in tables if t]
    if tables and (trainer is None or trainer.is_global_zero):
        write_per_image(path, merge_rows(tables[0], *tables[1:]))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        with friendly_errors(), hydra_job_for_ddp():
            metrics = train(cfg)
    finally:
        finish_wandb()
    return objective(cfg, metrics)


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value handed back to Hydra's sweeper: `metrics[optimized_metric]`.

    A missing metric is an error only where a sweeper optimises it (Optuna); a plain run or a grid multirun
    (e.g. `train=false`, which logs no val/ metrics) only warns.
    """
    from hydra.core.hydra_config import HydraConfig

    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in metrics:
        msg = f"optimized_metric: {name!r} was not logged; logged: {sorted(metrics)}"
        sweeper = str(HydraConfig.get().sweeper.get("_target_", "")) if HydraConfig.initialized() else ""
        if sweeper and not sweeper.endswith("BasicSweeper"):
            raise KeyError(msg)
        log.warning(msg)
        return None
    return float(metrics[name])


if __name__ == "__main__":
    sys.argv += rank_overrides(sys.argv[1:])  # ranks > 0 that torchrun / srun started: rank 0 writes .hydra/
    check_overrides(sys.argv[1:])  # one line, not a Hydra traceback, when an override needs a missing extra
    main()
