"""Figures a user would rather look at than read, written by the run itself into `<run dir>/figures/`:

- `training_curves.png`: train/val loss and val Dice / IoU per epoch;
- `best_worst.png`: for the best and worst test images by Dice, image / ground truth / prediction /
  TP-FP-FN overlay (yellow / green / red, the reference's colours) / uncertainty heatmap when available;
- `certainty_vs_dice.png`: image certainty against true Dice (when the model gives a certainty);
- `per_image.csv` of the same test figures, ranked by Dice, so failures can be studied.

Other test callbacks may add per-image results to the step outputs (`outputs["uncertainty"]` as an (H,W)
map, `outputs["certainty"]` as a float); listed after them, this callback picks those up.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only

from nucseg.data.io import atomic_write_bytes, atomic_write_text
from nucseg.metrics.pixel import dice_score, iou_score
from nucseg.utils.distributed import gather_rows
from nucseg.viz.overlays import pixel_error_overlay

log = logging.getLogger(__name__)

def _thumb(arr: np.ndarray, max_side: int) -> np.ndarray:
    step = max(1, int(np.ceil(max(arr.shape[:2]) / max_side)))
    return arr[::step, ::step]


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def training_curves_figure(train: list[dict[str, float]], val: list[dict[str, float]]):
    """Loss per epoch (train every epoch, val where validated) and val Dice / IoU; epochs counted from 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ep = [h["epoch"] + 1 for h in val]
    ax1.plot([h["epoch"] + 1 for h in train], [h["train/loss"] for h in train], "-o", label="train/loss", ms=3)
    ax1.plot(ep, [h.get("val/loss", np.nan) for h in val], "-s", label="val/loss", ms=3)
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    for key in ("val/dice", "val/iou"):
        ax2.plot(ep, [h.get(key, np.nan) for h in val], "-o", label=key, ms=3)
    ax2.set_xlabel("epoch"), ax2.set_ylim(0, 1), ax2.legend(), ax2.grid(alpha=0.3)
    fig.suptitle("training curves")
    return fig


def histories_from_csv(path: str | Path) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The same histories from Lightning's CSV log (`<run>/csv/metrics.csv`), to redraw a finished run."""
    train: dict[float, float] = {}
    val: dict[float, dict[str, float]] = {}
    with Path(path).open() as f:
        for r in csv.DictReader(f):
            if not r.get("epoch"):
                continue
            epoch = float(r["epoch"])
            if r.get("train/loss_epoch"):
                train[epoch] = float(r["train/loss_epoch"])
            for k in ("val/loss", "val/dice", "val/iou"):
                if r.get(k):
                    val.setdefault(epoch, {"epoch": epoch})[k] = float(r[k])
    return ([{"epoch": e, "train/loss": v} for e, v in sorted(train.items())],
            [val[e] for e in sorted(val)])


class ReportFigures(L.Callback):
    def __init__(self, n_best_worst: int = 3, threshold: float = 0.5, max_side: int = 256,
                 dirname: str = "figures"):
        self.n, self.threshold, self.max_side, self.dirname = n_best_worst, threshold, max_side, dirname
        self.history: list[dict[str, float]] = []  # validation epochs
        self.train_history: list[dict[str, float]] = []  # every training epoch
        self.rows: list[dict] = []

    def _dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / self.dirname

    # ------------------------------------------------------------------ training curves
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": float(trainer.current_epoch), "step": float(trainer.global_step)}
        for k in ("val/loss", "val/dice", "val/iou"):
            if k in m:
                row[k] = float(m[k])
        self.history.append(row)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # every epoch, not only those with validation (which Lightning runs before this hook)
        m = trainer.callback_metrics
        if "train/loss_epoch" in m:
            self.train_history.append({"epoch": float(trainer.current_epoch), "train/loss": float(m["train/loss_epoch"])})

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history and not self.train_history:
            return
        save_figure(training_curves_figure(self.train_history, self.history), self._dir(trainer) / "training_curves.png")

    # ------------------------------------------------------------------ test figures
    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not batch["labelled"][0]:
            return
        prob = outputs["probs"][0, 0].float().cpu()
        true = batch["target"][0, 0].cpu() > 0.5
        pred = prob > self.threshold
        image = (batch["image"][0].cpu().clamp(0, 1).numpy().transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)
        unc = outputs.get("uncertainty")
        cert = outputs.get("certainty")
        self.rows.append({
            "id": batch["id"][0],
            "height": int(true.shape[0]), "width": int(true.shape[1]),
            "dice": float(dice_score(pred, true)), "iou": float(iou_score(pred, true)),
            "n_true_pixels": int(true.sum()),
            "certainty": float(cert) if cert is not None else None,
            "_image": _thumb(image, self.max_side), "_true": _thumb(true.numpy(), self.max_side),
            "_pred": _thumb(pred.numpy(), self.max_side), "_prob": _thumb(prob.numpy(), self.max_side),
            "_unc": _thumb(torch.as_tensor(unc).float().cpu().numpy(), self.max_side) if unc is not None else None,
        })

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = gather_rows(trainer, self.rows)  # DDP: every process's test images, once each
        if not self.rows or not trainer.is_global_zero:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        out = self._dir(trainer)
        ranked = sorted(self.rows, key=lambda r: r["dice"])
        cols = ["id", "height", "width", "dice", "iou", "n_true_pixels", "certainty"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(ranked)
        atomic_write_text(out / "per_image.csv", buf.getvalue())

        n_best = min(self.n, (len(ranked) + 1) // 2)  # best and worst never repeat an image
        n_worst = min(self.n, len(ranked) - n_best)
        picks = ranked[len(ranked) - n_best:][::-1] + ranked[:n_worst]
        has_unc = any(r["_unc"] is not None for r in picks)
        ncol = 5 if has_unc else 4
        fig, axes = plt.subplots(len(picks), ncol, figsize=(2.6 * ncol, 2.6 * len(picks)), squeeze=False)
        titles = ["image", "ground truth", "prediction", "TP yellow / FP green / FN red", "uncertainty"]
        for i, r in enumerate(picks):
            tag = "best" if i < n_best else "worst"
            panels = [r["_image"], r["_true"], r["_prob"], pixel_error_overlay(r["_image"], r["_pred"], r["_true"])]
            for j, p in enumerate(panels):
                axes[i, j].imshow(p, cmap="gray" if p.ndim == 2 else None, vmin=0, vmax=1 if p.ndim == 2 else None)
            if has_unc and r["_unc"] is not None:
                axes[i, 4].imshow(r["_unc"], cmap="jet")  # red = most uncertain, blue = least
            for j in range(ncol):
                axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
                if i == 0:
                    axes[i, j].set_title(titles[j], fontsize=8)
            axes[i, 0].set_ylabel(f"{tag}\n{r['id'][:10]}\nDice {r['dice']:.2f}", fontsize=8)
        save_figure(fig, out / "best_worst.png")

        with_cert = [r for r in self.rows if r["certainty"] is not None]
        if with_cert:
            fig, ax = plt.subplots(figsize=(4.2, 4))
            ax.scatter([r["certainty"] for r in with_cert], [r["dice"] for r in with_cert], s=12, alpha=0.7)
            ax.set_xlabel("image certainty"), ax.set_ylabel("true Dice"), ax.grid(alpha=0.3)
            ax.set_title(f"certainty vs Dice ({len(with_cert)} test images)")
            save_figure(fig, out / "certainty_vs_dice.png")
        log.info("wrote figures to %s", out)
