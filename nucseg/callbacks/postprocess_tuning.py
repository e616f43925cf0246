"""`postprocess.tune=true` (`postprocess=auto`): at the start of the test, choose the post-processing
parameters on the validation split with the weights being tested (the best checkpoint), use them for the test,
and store them in that checkpoint so `nucseg.evaluate` and `nucseg.predict` use them too. A thin adapter over
`nucseg.instances.tuning.tune_postprocess`."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from nucseg.data.io import atomic_write_text
from nucseg.instances.tuning import TUNED_KEYS, TuneResult, tune_postprocess
from nucseg.utils.checkpoint import update_checkpoint_hparams
from nucseg.utils.loops import validation_batches

__all__ = ["PostprocessTuning", "validation_probabilities"]

log = logging.getLogger(__name__)


@torch.no_grad()
def validation_probabilities(pl_module: L.LightningModule, batches) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Deterministic probabilities (K, H, W) float32 and label maps (H, W) of the labelled images in `batches`."""
    probs, labels = [], []
    was_training = pl_module.training
    pl_module.eval()
    try:
        for batch in batches:
            logits = pl_module.predict_logits(batch["image"].to(pl_module.device))  # type: ignore[operator]
            p = torch.sigmoid(logits).float().cpu().numpy()
            for i in range(p.shape[0]):
                if batch["labelled"][i]:
                    probs.append(p[i])
                    labels.append(batch["labels"][i].cpu().numpy())
    finally:
        pl_module.train(was_training)
    return probs, labels


class PostprocessTuning(L.Callback):
    """Tunes when the module's `postprocess.tune` is true; `max_val_images` caps the validation images used."""

    def __init__(self, max_val_images: int | None = None, store_in_checkpoint: bool = True):
        self.max_val_images, self.store_in_checkpoint = max_val_images, store_in_checkpoint
        self.result: TuneResult | None = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        settings = dict(pl_module.hparams.get("postprocess") or {})
        if not settings.get("tune"):
            return
        # every process tunes on the same validation images, so all test with the same settings
        batches = validation_batches(trainer, self.max_val_images, "postprocess.tune=true")
        probs, labels = validation_probabilities(pl_module, batches)
        if not probs:
            raise ValueError("postprocess.tune=true: the validation split has no labelled images to tune on")
        self.result = tune_postprocess(probs, labels, {k: v for k, v in settings.items() if k != "tuned"})
        tuned = {k: self.result.settings[k] for k in TUNED_KEYS if k in self.result.settings}
        tuned["tuned"] = self.result.summary()
        pl_module.hparams["postprocess"] = {**settings, **tuned}
        self._store(trainer, tuned)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.result is None:
            return
        values = {**self.result.summary(), **{k: self.result.settings.get(k) for k in TUNED_KEYS}}
        for k, v in values.items():  # into metrics.json beside the test metrics
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                pl_module.log(f"tune/{k}", float(v), batch_size=1, sync_dist=False)

    @rank_zero_only
    def _store(self, trainer: L.Trainer, tuned: dict) -> None:
        assert self.result is not None
        out = Path(trainer.default_root_dir)
        atomic_write_text(out / "postprocess_tuning.json",
                          json.dumps({"tuned": self.result.summary(), "trials": self.result.trials}, indent=2) + "\n")
        if self.store_in_checkpoint:
            update_checkpoint_hparams(getattr(trainer, "ckpt_path", None), {"postprocess": tuned})
