"""`postprocess.tune=true` (`postprocess=auto`): the post-processing chosen on the validation split by the
calibrate stage (`nucseg.calibrate`, with this callback's `max_val_images` and `store_in_checkpoint`), logged
beside the test metrics as `tune/*` (validation scores before / after, the chosen values). It fits nothing."""

from __future__ import annotations

import lightning as L

from nucseg.instances.tuning import TUNED_KEYS

__all__ = ["PostprocessTuning"]


class PostprocessTuning(L.Callback):
    """The calibrate stage's tuning settings; logs what it chose (`postprocess.tuned`) at the end of the test."""

    def __init__(self, max_val_images: int | None = None, store_in_checkpoint: bool = True):
        self.max_val_images, self.store_in_checkpoint = max_val_images, store_in_checkpoint

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        settings = dict(pl_module.hparams.get("postprocess") or {})
        tuned = settings.get("tuned")
        if not settings.get("tune") or not isinstance(tuned, dict):
            return
        values = {**tuned, **{k: settings.get(k) for k in TUNED_KEYS}}
        for k, v in values.items():  # into metrics.json beside the test metrics
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                pl_module.log(f"tune/{k}", float(v), batch_size=1, sync_dist=False)
