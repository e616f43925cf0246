"""The figures of a run's report (`nucseg.callbacks.report_figures`): training curves, the best / worst test
images, certainty against Dice; and the training histories read back from Lightning's CSV log, to redraw a
finished run."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.utils.atomic import atomic_write_bytes
from nucseg.viz.overlays import membrane_error_overlay, pixel_error_overlay

__all__ = ["best_worst_figure", "certainty_dice_figure", "confusion_matrix_figure", "histories_from_csv",
           "save_figure", "thumbnail", "training_curves_figure"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def thumbnail(arr: np.ndarray, max_side: int) -> np.ndarray:
    """Every k-th pixel, so that the longer side is at most about `max_side`."""
    step = max(1, int(np.ceil(max(arr.shape[:2]) / max_side)))
    return arr[::step, ::step]


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def training_curves_figure(train: list[dict[str, float]], val: list[dict[str, float]]) -> Any:
    """Loss per epoch (train every epoch, val where validated) and val Dice / IoU; epochs counted from 1."""
    plt = _pyplot()
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
    """The histories of `training_curves_figure` from Lightning's CSV log (`<run>/csv/metrics.csv`)."""
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


def best_worst_figure(picks: Sequence[dict[str, Any]], n_best: int, error_overlay: str = "foreground") -> Any:
    """One row per test image (the first `n_best` labelled best, the rest worst): image, ground truth,
    probability, an error overlay, and the uncertainty map when any row has one (rows hold the thumbnails
    `_image`, `_true`, `_prob`, `_pred`, `_unc` and `id`, `dice`). The overlay colours the foreground (TP yellow /
    FP green / FN red) or, with `error_overlay="membrane"`, the background as EM membranes
    (`membrane_error_overlay`: found yellow / false membrane green / missed membrane red)."""
    plt = _pyplot()
    has_unc = any(r["_unc"] is not None for r in picks)
    ncol = 5 if has_unc else 4
    fig, axes = plt.subplots(len(picks), ncol, figsize=(2.6 * ncol, 2.6 * len(picks)), squeeze=False)
    membrane = error_overlay == "membrane"
    errors = ("membrane found yellow / false green / missed red" if membrane else
              "TP yellow / FP green / FN red")
    titles = ["image", "ground truth", "prediction", errors, "uncertainty"]
    overlay = membrane_error_overlay if membrane else pixel_error_overlay
    for i, r in enumerate(picks):
        tag = "best" if i < n_best else "worst"
        panels = [r["_image"], r["_true"], r["_prob"], overlay(r["_image"], r["_pred"], r["_true"])]
        for j, p in enumerate(panels):
            axes[i, j].imshow(p, cmap="gray" if p.ndim == 2 else None, vmin=0, vmax=1 if p.ndim == 2 else None)
        if has_unc and r["_unc"] is not None:
            axes[i, 4].imshow(r["_unc"], cmap="jet")  # red = most uncertain, blue = least
        for j in range(ncol):
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(titles[j], fontsize=8)
        axes[i, 0].set_ylabel(f"{tag}\n{r['id'][:10]}\nDice {r['dice']:.2f}", fontsize=8)
    return fig


def certainty_dice_figure(certainty: Sequence[float], dice: Sequence[float]) -> Any:
    """Scatter of image certainty against true Dice."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(certainty, dice, s=12, alpha=0.7)
    ax.set_xlabel("image certainty"), ax.set_ylabel("true Dice")
    ax.grid(alpha=0.3)
    ax.set_title(f"certainty vs Dice ({len(certainty)} test images)")
    return fig


def confusion_matrix_figure(rates: np.ndarray, class_names: Sequence[str] = ("background", "foreground")) -> Any:
    """A (2, 2) confusion matrix normalised over the true class (rows true, columns predicted), each cell
    annotated with its rate."""
    plt = _pyplot()
    rates = np.asarray(rates, dtype=float)
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for (r, c), v in np.ndenumerate(rates):
        ax.text(c, r, f"{v:.3f}", ha="center", va="center", color="white" if v > 0.5 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [f"pred {n}" for n in class_names], fontsize=8)
    ax.set_yticks(ticks, [f"true {n}" for n in class_names], fontsize=8)
    ax.set_title("pixel confusion (rows sum to 1)", fontsize=9)
    return fig
