"""`python -m nucseg.evaluate ckpt_path=... data=...`: score a trained checkpoint on a dataset's test split.

Writes into the run directory `metrics.json` (pixel Dice / IoU / AUROC, the DSB2018 score, AP@0.5, count
error, and the uncertainty metrics for models that have them), `per_image.csv` (one row per test image) and
`overlays/<id>.png` error overlays: true positives yellow, false positives green, false negatives red, at the
pixel level (`overlays.level=pixel`, default) or per nucleus matched at IoU > 0.5 (`overlays.level=object`).

A Kaggle-layout folder with masks (e.g. stage1_test) is scored with `data=dsb2018_test data.source.root=DIR`.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.calibrate import calibrate_before_test
from nucseg.callbacks.evaluation_writer import EvaluationWriter
from nucseg.callbacks.instance_metrics import InstanceMetrics
from nucseg.callbacks.region_scores import RegionScores
from nucseg.callbacks.uncertainty import UncertaintyEvaluation
from nucseg.checks import check_config
from nucseg.models.module import SegmentationModule, load_module
from nucseg.uncertainty.sampling import resolve_settings
from nucseg.utils.config import CONF_DIR, align_data_with_checkpoint
from nucseg.utils.errors import ConfigError, friendly_errors
from nucseg.utils.extras import check_overrides
from nucseg.utils.instantiate import instantiate_callbacks, instantiate_loggers
from nucseg.utils.run_lifecycle import finish_wandb, to_float_dict, write_metrics
from nucseg.utils.tables import merge_rows, write_per_image

log = logging.getLogger(__name__)

HEADLINE = ("test/dice", "test/iou", "test/auroc", "test/dsb_score", "test/ap50", "test/count_error",
            "test/certainty_spearman", "test/failure_auroc")


def _score_split(datamodule: Any, split: str) -> None:
    """Serve `split` (e.g. val, for failure analysis and other choices that must not read the test split) as
    the split the test loop scores."""
    if split == "test":
        return
    datamodule.setup("test")
    if not datamodule.splits.get(split):
        raise ConfigError(f"split={split}: expected test, val or train (a non-empty split of "
                          f"{datamodule.source.name}: {sorted(k for k, v in datamodule.splits.items() if v)})")
    log.info("scoring the %s split (%d images) instead of the test split", split, len(datamodule.splits[split]))
    datamodule.splits["test"] = list(datamodule.splits[split])


def _override_uncertainty(module: SegmentationModule, overrides: Any) -> None:
    """`uncertainty.<key>=<value>` over the checkpoint's settings for this evaluation (e.g. fewer MC samples),
    checked as a user's settings: an unknown key or a bad value is one error line."""
    given = {str(k): v for k, v in (OmegaConf.to_container(overrides) if overrides else {}).items()  # type: ignore[union-attr]
             if v is not None}
    if not given:
        return
    merged = {**dict(module.hparams.get("uncertainty") or {}), **given}
    try:
        resolve_settings(merged, module.net, strict=True)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    module.hparams["uncertainty"] = merged
    log.info("uncertainty settings for this evaluation: %s over the checkpoint's", given)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint on `cfg.data`'s test split; write metrics.json, per_image.csv and overlays."""
    check_config(cfg, "evaluate")
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    module = load_module(cfg.ckpt_path)
    _override_uncertainty(module, cfg.get("uncertainty"))
    align_data_with_checkpoint(cfg, module.hparams)  # the data must be prepared the way the model was trained
    if cfg.data.get("val_fraction", 0) == 0 and cfg.data.get("test_fraction", 0) == 1.0:
        log.info("evaluating every image of %s", cfg.data.source.get("root", cfg.data.source))
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    _score_split(datamodule, str(cfg.get("split") or "test"))

    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    if not any(isinstance(c, InstanceMetrics) for c in callbacks):
        callbacks.append(InstanceMetrics())
    ov = cfg.get("overlays") or {}
    writer = EvaluationWriter(output_dir, level=ov.get("level", "pixel"), max_overlays=ov.get("max_images", 16),
                              alpha=ov.get("alpha", 0.5))
    callbacks.append(writer)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

    calibrate_before_test(trainer, module, datamodule, callbacks, cfg.ckpt_path)
    trainer.test(module, datamodule=datamodule)
    metrics: dict[str, Any] = to_float_dict(trainer.callback_metrics)
    if trainer.is_global_zero:
        inst = next(c for c in callbacks if isinstance(c, InstanceMetrics))
        unc = [c.rows for c in callbacks if isinstance(c, UncertaintyEvaluation | RegionScores) and c.rows]
        rows = merge_rows(writer.rows, inst.rows, *unc)
        write_per_image(output_dir / "per_image.csv", rows)
        metrics["n_images"] = len(rows)
        write_metrics(output_dir / "metrics.json", {**metrics, "ckpt_path": str(cfg.ckpt_path),
                                                     "split": str(cfg.get("split") or "test")})
    return metrics


def headline(metrics: dict[str, Any], split: str = "test") -> str:
    parts = [f"{k.split('/', 1)[1]} {metrics[k]:.4f}" for k in HEADLINE
             if isinstance(metrics.get(k), float) and math.isfinite(metrics[k])]
    return f"{int(metrics.get('n_images', 0))} {split} images: " + ", ".join(parts)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        with friendly_errors():
            metrics = evaluate(cfg)
    finally:
        finish_wandb()
    print(headline(metrics, str(cfg.get("split") or "test")))
    print(f"wrote {Path(cfg.paths.output_dir) / 'metrics.json'} and per_image.csv")


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # one line, not a Hydra traceback, when an override needs a missing extra
    main()
