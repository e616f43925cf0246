"""`python -m nucseg.evaluate ckpt_path=... data=...`: score a trained checkpoint on a dataset's test split.

Writes into the run directory `metrics.json` (pixel Dice / IoU / AUROC, the DSB2018 score, AP@0.5, count
error, and the uncertainty metrics for models that have them), `per_image.csv` (one row per test image) and
`overlays/<id>.png` error overlays: true positives yellow, false positives green, false negatives red, at the
pixel level (`overlays.level=pixel`, default) or per nucleus matched at IoU > 0.5 (`overlays.level=object`).

A Kaggle-layout folder with masks (e.g. stage1_test) is scored with `data=dsb2018_test data.source.root=DIR`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, open_dict

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.data.io import atomic_write_text
from nucseg.metrics.pixel import dice_score, iou_score
from nucseg.models.module import load_module
from nucseg.utils.instantiate import instantiate_callbacks, instantiate_loggers
from nucseg.utils.run import finish_wandb, to_float_dict, write_metrics

log = logging.getLogger(__name__)

HEADLINE = ("test/dice", "test/iou", "test/auroc", "test/dsb_score", "test/ap50", "test/count_error",
            "test/certainty_spearman", "test/failure_auroc")
PER_IMAGE_FIRST = ("id", "height", "width", "dice", "iou", "dsb_score", "ap50", "count_error", "n_true", "n_pred",
                   "certainty", "needs_review")


class EvaluationWriter(L.Callback):
    """Per test image: pixel Dice / IoU at the module's threshold, and a TP/FP/FN overlay PNG for the first
    `max_overlays` images (`level` pixel or object)."""

    def __init__(self, output_dir: str | Path, level: str = "pixel", max_overlays: int = 16, alpha: float = 0.5,
                 iou_threshold: float = 0.5):
        if level not in ("pixel", "object"):
            raise ValueError(f"overlays.level: expected 'pixel' or 'object', got {level!r}")
        self.output_dir, self.level, self.max_overlays = Path(output_dir), level, int(max_overlays)
        self.alpha, self.iou_threshold = alpha, iou_threshold
        self.rows: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        thr = float(getattr(pl_module, "threshold", 0.5))
        probs = outputs["probs"].detach().float().cpu()
        for i in range(probs.shape[0]):
            pred = probs[i, 0] > thr
            true = batch["target"][i, 0].cpu() > 0.5
            labelled = bool(batch["labelled"][i])
            row = {"id": str(batch["id"][i]), "height": int(pred.shape[0]), "width": int(pred.shape[1]),
                   "dice": float(dice_score(pred, true)) if labelled else math.nan,
                   "iou": float(iou_score(pred, true)) if labelled else math.nan}
            self.rows.append(row)
            if labelled and len(self.rows) <= self.max_overlays and trainer.is_global_zero:
                self._overlay(pl_module, batch, i, probs[i], pred.numpy(), row["id"])

    def _overlay(self, pl_module, batch: dict, i: int, probs: torch.Tensor, pred: np.ndarray, rid: str) -> None:
        from nucseg.callbacks.instance_metrics import postprocess_settings
        from nucseg.viz.overlays import object_error_overlay, pixel_error_overlay, save_png

        image = (batch["image"][i].detach().cpu().clamp(0, 1).numpy().transpose(1, 2, 0) * 255 + 0.5)
        image = image.astype(np.uint8)
        if self.level == "pixel":
            rgb = pixel_error_overlay(image, pred, batch["target"][i, 0].cpu().numpy() > 0.5, self.alpha)
        else:
            from nucseg.instances.watershed import probs_to_instances

            pred_labels = probs_to_instances(probs.numpy(), **postprocess_settings(pl_module))
            rgb = object_error_overlay(image, pred_labels, batch["labels"][i].cpu().numpy(), self.iou_threshold,
                                       self.alpha)
        save_png(self.output_dir / "overlays" / f"{_safe(rid)}.png", rgb)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120] or "image"


def merge_rows(base: list[dict], *others: list[dict]) -> list[dict]:
    """Join per-image rows from several callbacks on `id` (order of `base`)."""
    by_id = {r["id"]: dict(r) for r in base}
    for rows in others:
        for r in rows:
            if r.get("id") in by_id:
                for k, v in r.items():
                    if not k.startswith("_"):
                        by_id[r["id"]].setdefault(k, v)
    return list(by_id.values())


def write_per_image(path: Path, rows: list[dict]) -> None:
    extra = sorted({k for r in rows for k in r} - set(PER_IMAGE_FIRST))
    cols = [c for c in PER_IMAGE_FIRST if any(c in r for r in rows)] + extra
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Test the checkpoint on `cfg.data`'s test split; write metrics.json, per_image.csv and overlays."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    module = load_module(cfg.ckpt_path)
    hp = module.hparams
    with open_dict(cfg):  # the data must be prepared the way the model was trained
        for key in ("targets", "clahe"):
            if key in cfg.data and hp.get(key) is not None and cfg.data[key] != hp[key]:
                log.info("data.%s=%s set from the checkpoint (was %s)", key, hp[key], cfg.data[key])
                cfg.data[key] = hp[key]
        if cfg.data.get("val_fraction", 0) == 0 and cfg.data.get("test_fraction", 0) == 1.0:
            log.info("evaluating every image of %s", cfg.data.source.get("root", cfg.data.source))
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)

    loggers = instantiate_loggers(cfg.get("logger"))
    callbacks = instantiate_callbacks(cfg.get("callbacks"), has_logger=bool(loggers))
    from nucseg.callbacks.instance_metrics import InstanceMetrics

    if not any(isinstance(c, InstanceMetrics) for c in callbacks):
        callbacks.append(InstanceMetrics())
    ov = cfg.get("overlays") or {}
    writer = EvaluationWriter(output_dir, level=ov.get("level", "pixel"), max_overlays=ov.get("max_images", 16),
                              alpha=ov.get("alpha", 0.5))
    callbacks.append(writer)
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))

    trainer.test(module, datamodule=datamodule)
    metrics: dict[str, Any] = to_float_dict(trainer.callback_metrics)
    if trainer.is_global_zero:
        inst = next(c for c in callbacks if isinstance(c, InstanceMetrics))
        unc = [c.rows for c in callbacks if type(c).__name__ == "UncertaintyEvaluation" and getattr(c, "rows", None)]
        rows = merge_rows(writer.rows, inst.rows, *unc)
        write_per_image(output_dir / "per_image.csv", rows)
        metrics["n_images"] = len(rows)
        write_metrics(output_dir / "metrics.json", {**metrics, "ckpt_path": str(cfg.ckpt_path)})
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    parts = [f"{k.split('/', 1)[1]} {metrics[k]:.4f}" for k in HEADLINE
             if isinstance(metrics.get(k), float) and math.isfinite(metrics[k])]
    return f"{int(metrics.get('n_images', 0))} test images: " + ", ".join(parts)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from nucseg.utils.errors import friendly_errors

    try:
        with friendly_errors():
            metrics = evaluate(cfg)
    finally:
        finish_wandb()
    print(headline(metrics))
    print(f"wrote {Path(cfg.paths.output_dir) / 'metrics.json'} and per_image.csv")


if __name__ == "__main__":
    main()
