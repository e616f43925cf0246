"""Uncertainty heatmaps on W&B during training: for the first validation images (a fixed set: the validation
loader is not shuffled), image | ground truth | prediction | heatmap (red = most uncertain, blue = least), with
the image certainty and Dice in the caption. A no-op without a WandbLogger or without an uncertainty method.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT

from nucseg.metrics.pixel import dice_score
from nucseg.models.module import pixel_threshold
from nucseg.settings import UncertaintyMethod, UncertaintySettings
from nucseg.uncertainty.estimate import HEATMAPS, module_samples, module_settings
from nucseg.uncertainty.scores import image_certainty, pixel_uncertainty
from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.viz.images import as_uint8_rgb, center_crop
from nucseg.viz.plots import figure_array, pad_to_common_size, uncertainty_panel

log = logging.getLogger(__name__)


class WandbUncertaintyHeatmaps(L.Callback):
    def __init__(self, num_images: int = 4, samples: int | None = 8, every_n_epochs: int = 1,
                 heatmap: str = "entropy", max_side: int = 384):
        """`samples` overrides `uncertainty.samples` for these previews (None: use it); images larger than
        `max_side` are centre-cropped to keep each validation epoch cheap."""
        if heatmap not in HEATMAPS:
            raise ValueError(f"callbacks.wandb_uncertainty.heatmap: expected entropy, mutual_info or variance, "
                             f"got {heatmap!r}")
        self.num_images, self.samples, self.every_n_epochs = num_images, samples, max(1, every_n_epochs)
        self.heatmap, self.max_side = heatmap, max_side
        self._settings: UncertaintySettings | None = None
        self._active = False
        self._images: list = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._settings = module_settings(pl_module)
        if self._settings is not None and self._settings.method is UncertaintyMethod.ENSEMBLE:
            log.info("wandb_uncertainty: ensemble members exist only after training; no validation heatmaps")
            self._settings = None

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = []
        self._active = (self._settings is not None and not trainer.sanity_checking
                        and trainer.current_epoch % self.every_n_epochs == 0 and bool(wandb_experiments(trainer)))

    @rank_zero_only
    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active or batch_idx >= self.num_images:
            return
        assert self._settings is not None
        crop = center_crop(batch, self.max_side)
        samples = module_samples(pl_module, crop["image"][:1], self._settings, samples=self.samples)
        thr = pixel_threshold(pl_module)
        maps = pixel_uncertainty(samples)
        certainty = float(image_certainty(samples, thr)[0])
        pred = maps["mean"][0] > thr
        true = crop["target"][0, 0].to(pred.device) > 0.5
        dice = float(dice_score(pred, true))
        caption = f"{batch['id'][0]} certainty {certainty:.3f} Dice {dice:.3f}"
        fig = uncertainty_panel(as_uint8_rgb(crop["image"][0]), true.cpu().numpy(), pred.cpu().numpy(),
                                maps[self.heatmap][0].float().cpu().numpy(), self.heatmap,
                                title=f"epoch {trainer.current_epoch}, step {trainer.global_step}: {caption}")
        self._images.append((figure_array(fig, dpi=80), caption))

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._images:
            return
        import wandb

        arrays = pad_to_common_size([a for a, _ in self._images])
        images = [wandb.Image(a, caption=c) for a, (_, c) in zip(arrays, self._images, strict=True)]
        for run in wandb_experiments(trainer):
            run.log({"val/uncertainty_heatmaps": images, "trainer/global_step": trainer.global_step})
        self._images = []
