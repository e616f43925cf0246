"""Training-progress panel: the predictions for the same few validation images at chosen global steps (as in
the Bayesian U-Net reference's figure at iterations 300 / 1200 / 2850), so a user sees the model learn, or
"forget" what it had learnt.

At each chosen step the fixed images are predicted with the weights of that moment (eval mode, deterministic:
MC dropout off); the grid so far is written to `<run>/progress/progress_grid.png` and logged to W&B under
`train/progress` (one entry per snapshot, so W&B's step slider replays training). The per-snapshot Dice of
each image is written to `<run>/progress/progress.json`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.types import STEP_OUTPUT

from nucseg.data.dataset import collate
from nucseg.metrics.pixel import dice_score
from nucseg.models.module import pixel_threshold
from nucseg.uncertainty.sampling import eval_mode
from nucseg.utils.atomic import atomic_write_bytes, atomic_write_text
from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.viz.images import as_uint8_rgb, center_crop
from nucseg.viz.plots import figure_array, figure_png, progress_grid

log = logging.getLogger(__name__)


def spread_over_groups(groups: Sequence[str], n: int) -> list[int]:
    """Indices of `n` items taken in turn from each group (largest group first, each in its own order), so the
    progress panel shows every imaging type rather than the first few images of the commonest one."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    queues = sorted(by_group.values(), key=lambda idx: (-len(idx), idx[0]))
    picks: list[int] = []
    while len(picks) < min(n, len(groups)):
        for q in queues:
            if q and len(picks) < n:
                picks.append(q.pop(0))
    return picks


class ProgressSnapshots(L.Callback):
    def __init__(self, steps: Sequence[int] = (300, 1200, 2850), every_n_steps: int | None = None,
                 at_start: bool = False, at_end: bool = True, num_images: int = 4, max_side: int = 256,
                 output_dir: str | None = None):
        """Snapshot at each global step in `steps`, every `every_n_steps`, before training (`at_start`), and
        when training ends (`at_end`); images larger than `max_side` are centre-cropped."""
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"callbacks.progress_snapshots.every_n_steps: expected >= 1 or null, got {every_n_steps}")
        self.steps = sorted({int(s) for s in steps or []})
        self.every_n_steps, self.at_start, self.at_end = every_n_steps, at_start, at_end
        self.num_images, self.max_side = num_images, max_side
        self.output_dir = Path(output_dir) if output_dir else None
        self.snapshots: list[tuple[int, list, list]] = []
        self._batches: list[dict] = []
        self._pending: list[int] = []

    def _out(self, trainer: L.Trainer) -> Path:
        return (self.output_dir or Path(trainer.default_root_dir)) / "progress"

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.snapshots, self._pending = [], [s for s in self.steps if s > trainer.global_step]
        self._batches = self._fixed_images(trainer)
        if self._batches and self.at_start:
            self._snapshot(trainer, pl_module)

    def _fixed_images(self, trainer: L.Trainer) -> list[dict]:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "val_dataloader") or self.num_images < 1:
            return []
        try:
            dataset = dm.val_dataloader().dataset
            n = min(self.num_images, len(dataset))
            groups = getattr(dm, "groups", None) or {}
            ids = getattr(dataset, "ids", None)
            picks = (spread_over_groups([groups.get(i, "all") for i in ids], n) if ids and groups
                     else list(range(n)))
            return [center_crop(collate([dataset[i]]), self.max_side) for i in picks]
        except ValueError as exc:  # e.g. an empty validation split
            log.warning("progress_snapshots: no validation images (%s)", exc)
            return []

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: STEP_OUTPUT,
                           batch: dict[str, Any], batch_idx: int) -> None:
        if not self._batches:
            return
        step = trainer.global_step
        due = False
        while self._pending and step >= self._pending[0]:
            self._pending.pop(0)
            due = True
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            due = True
        if due and (not self.snapshots or self.snapshots[-1][0] != step):
            self._snapshot(trainer, pl_module)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batches and self.at_end and (not self.snapshots or self.snapshots[-1][0] != trainer.global_step):
            self._snapshot(trainer, pl_module)

    @torch.no_grad()
    def _snapshot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        probs, dices = [], []
        thr = pixel_threshold(pl_module)
        module: Any = pl_module  # a SegmentationModule
        with eval_mode(module.net, mc_dropout=False):
            for b in self._batches:
                image = b["image"].to(module.device)
                p = torch.sigmoid(module.predict_logits(image))[0, 0].float().cpu()
                probs.append(p.numpy())
                dices.append(float(dice_score(p > thr, b["target"][0, 0] > 0.5)) if b["labelled"][0] else None)
        self.snapshots.append((int(trainer.global_step), probs, dices))
        self._write(trainer)

    def _write(self, trainer: L.Trainer) -> None:
        images = [as_uint8_rgb(b["image"][0]) for b in self._batches]
        targets = [b["target"][0, 0].numpy() if b["labelled"][0] else None for b in self._batches]
        fig = progress_grid(images, targets, self.snapshots, names=[b["id"][0] for b in self._batches])
        out = self._out(trainer)
        atomic_write_bytes(out / "progress_grid.png", figure_png(fig))
        record = {"ids": [b["id"][0] for b in self._batches],
                  "snapshots": [{"step": s, "dice": d} for s, _, d in self.snapshots]}
        atomic_write_text(out / "progress.json", json.dumps(record, indent=2) + "\n")
        runs = wandb_experiments(trainer)
        if runs:
            import wandb

            image = wandb.Image(figure_array(fig, dpi=80), caption=f"up to step {self.snapshots[-1][0]}")
            for run in runs:
                run.log({"train/progress": image, "trainer/global_step": trainer.global_step})
