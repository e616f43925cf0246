"""Split test predictions into nuclei and score them with the official DSB2018 metric.

Runs after each test (optionally validation) step on the probabilities the module returns, with the
post-processing stored in the module's hyper-parameters (so a checkpoint is scored the way it will predict).
When the model has contour channels, connected components are scored beside the watershed, so one run shows
what the splitting is worth.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch

from nucseg.callbacks.scoring import ScoringCallback
from nucseg.instances.watershed import postprocess_settings, probs_to_instances
from nucseg.metrics.dsb_score import DSBScore
from nucseg.metrics.pixel import dice_score
from nucseg.models.module import pixel_threshold

log = logging.getLogger(__name__)


def untuned_settings(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The settings before validation tuning (`postprocess.tuned.base`), or None for untuned settings."""
    base = (settings.get("tuned") or {}).get("base")
    return {**settings, **base} if base else None


def output_channels(pl_module: L.LightningModule) -> int:
    return int((pl_module.hparams.get("net") or {}).get("classes", 1))


class InstanceMetrics(ScoringCallback):
    """Log `<stage>/dsb_score`, `<stage>/ap50`, `<stage>/count_error` (and `*_cc` for comparison) and keep
    one row per labelled test image in `rows` (id, dsb_score, ap50, count_error, n_true, n_pred, dice, and the
    `*_cc` columns when compared). In DDP each process keeps the rows of its own images."""

    def __init__(self, compare_cc: bool = True, on_validation: bool = False):
        super().__init__()
        self.compare_cc, self.on_validation = compare_cc, on_validation
        self._metrics: dict[str, DSBScore] = {}

    # ----------------------------------------------------------------- shared
    def _start(self, pl_module: L.LightningModule) -> None:
        settings = postprocess_settings(pl_module)
        # decided from the config, not the data, so every DDP process computes (and syncs) the same metrics
        compare = (self.compare_cc and output_channels(pl_module) >= 2
                   and settings.get("method", "auto") != "cc")
        # on the module's device, so that DDP can sum the states across processes
        self._metrics = {"": DSBScore().to(pl_module.device)}
        if compare:
            self._metrics["_cc"] = DSBScore().to(pl_module.device)
        if untuned_settings(settings) is not None:  # what the validation-tuned post-processing gained
            self._metrics["_untuned"] = DSBScore().to(pl_module.device)

    def _update(self, pl_module: L.LightningModule, outputs: Any, batch: dict) -> list[dict[str, Any]]:
        settings = postprocess_settings(pl_module)
        probs = outputs["probs"].detach().float().cpu().numpy()
        labels = batch["labels"].cpu().numpy()
        rows = []
        for i in range(probs.shape[0]):
            if not batch["labelled"][i]:
                continue
            self._metrics[""].update(probs_to_instances(probs[i], **settings), labels[i])
            row = {"id": batch["id"][i], **self._metrics[""].last[0]}
            fg_pred = probs[i, 0] > pixel_threshold(pl_module)
            row["dice"] = float(dice_score(torch.from_numpy(fg_pred), torch.from_numpy(labels[i] > 0)))
            if "_cc" in self._metrics:
                cc = probs_to_instances(probs[i], **{**settings, "method": "cc"})
                self._metrics["_cc"].update(cc, labels[i])
                row.update({f"{k}_cc": v for k, v in self._metrics["_cc"].last[0].items() if k != "n_true"})
            base = untuned_settings(settings)
            if "_untuned" in self._metrics and base is not None:
                self._metrics["_untuned"].update(probs_to_instances(probs[i], **base), labels[i])
                row["dsb_score_untuned"] = self._metrics["_untuned"].last[0]["dsb_score"]
            rows.append(row)
        return rows

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        for suffix, metric in self._metrics.items():
            with warnings.catch_warnings():  # a process that saw no labelled image is handled below
                warnings.filterwarnings("ignore", message=".*compute.*called before the ..update")
                values = metric.compute()  # summed over processes
            metric.reset()
            if values.pop("n_images") == 0:
                log.info("%s: no labelled images, no instance scores", stage)
                continue
            for name, value in values.items():
                pl_module.log(f"{stage}/{name}{suffix}", value, batch_size=1)

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._log(pl_module, stage)
