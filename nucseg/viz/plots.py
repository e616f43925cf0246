"""Figures for uncertainty and training progress: heatmap overlays (red = most uncertain, blue = least),
image / ground truth / prediction / uncertainty panels, reliability diagrams, and the training-progress grid.

Figures are built with `matplotlib.figure.Figure` (no pyplot state, no display needed) and returned as PNG
bytes or RGB arrays, ready for `atomic_write_bytes` or `wandb.Image`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from nucseg.viz.images import as_uint8_rgb, to_uint8

# blue (low) -> cyan -> yellow -> red (high)
HEAT_CMAP = "jet"
# full scale of each uncertainty map for a binary foreground (entropies in bits)
MAP_RANGE = {"entropy": 1.0, "mutual_info": 1.0, "variance": 0.25}


def heat_colors(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """HxW values -> HxWx3 uint8 colours of HEAT_CMAP on a fixed [vmin, vmax] scale."""
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12, clip=True)
    rgba = colormaps[HEAT_CMAP](norm(np.asarray(values, dtype=np.float64)))
    return to_uint8(rgba[..., :3])


def overlay_heatmap(image: np.ndarray, values: np.ndarray, vmax: float = 1.0, alpha: float = 0.6) -> np.ndarray:
    """Blend the heat colours of `values` over `image`; pixels with no uncertainty keep more of the image."""
    img = as_uint8_rgb(image).astype(np.float32)
    heat = heat_colors(values, 0.0, vmax).astype(np.float32)
    weight = alpha * (0.35 + 0.65 * np.clip(np.asarray(values, np.float32) / max(vmax, 1e-12), 0, 1))[..., None]
    return (img * (1 - weight) + heat * weight + 0.5).astype(np.uint8)


def mask_overlay(image: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (0, 255, 0),
                 alpha: float = 0.45) -> np.ndarray:
    img = as_uint8_rgb(image).astype(np.float32)
    m = np.asarray(mask, bool)[..., None]
    out = np.where(m, img * (1 - alpha) + np.asarray(color, np.float32) * alpha, img)
    return (out + 0.5).astype(np.uint8)


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """RGB uint8 array of a rendered figure."""
    from matplotlib.image import imread

    return to_uint8(imread(io.BytesIO(figure_png(fig, dpi)), format="png")[..., :3])


def pad_to_common_size(arrays: Sequence[np.ndarray], fill: int = 255) -> list[np.ndarray]:
    """Pad HxWx3 arrays on the bottom/right to one size (W&B shows a list of images well only then)."""
    if not arrays:
        return []
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    return [np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1]), (0, 0)), constant_values=fill) for a in arrays]


def uncertainty_panel(image: np.ndarray, target: np.ndarray | None, pred: np.ndarray, values: np.ndarray,
                      map_name: str = "entropy", vmax: float | None = None, title: str = "") -> Figure:
    """One row: image | ground truth | prediction | uncertainty heatmap over the image, with a colour bar."""
    vmax = MAP_RANGE.get(map_name, 1.0) if vmax is None else vmax
    img = as_uint8_rgb(image)
    panels = [("image", img)]
    if target is not None:
        panels.append(("ground truth", mask_overlay(img, target, (0, 255, 0))))
    panels += [("prediction", mask_overlay(img, pred, (255, 0, 255))),
               (f"{map_name} (red = most uncertain)", overlay_heatmap(img, values, vmax))]
    fig, axes = _panel_row(panels, 0.8, 0.6)
    mappable = fig.colorbar(_scalar_mappable(vmax), ax=axes, fraction=0.02, pad=0.01)
    mappable.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def review_panel(image: np.ndarray, outlines: np.ndarray, entropy: np.ndarray | None, title: str) -> Figure:
    """For an image flagged for review: image | nucleus outlines | entropy heatmap (when the model has
    uncertainty), titled with the reason in words."""
    img = as_uint8_rgb(image)
    panels = [("image", img), ("nuclei found", as_uint8_rgb(outlines))]
    if entropy is not None:
        panels.append(("uncertainty (red = most uncertain)", overlay_heatmap(img, entropy, MAP_RANGE["entropy"])))
    fig, _ = _panel_row(panels, 0.4, 0.9)
    fig.suptitle(title, fontsize=9)
    return fig


def _panel_row(panels: list[tuple[str, np.ndarray]], extra_w: float, extra_h: float) -> tuple[Figure, list]:
    """A figure of titled image panels side by side, each about 3.2 inches on its long side."""
    h, w = panels[0][1].shape[:2]
    scale = 3.2 / max(h, w)
    fig = Figure(figsize=(len(panels) * w * scale + extra_w, h * scale + extra_h))
    axes = list(np.atleast_1d(fig.subplots(1, len(panels))))
    for ax, (name, arr) in zip(axes, panels, strict=True):
        ax.imshow(arr)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    return fig, axes


def row_panel(image: Any, pred: Any, heat: Any, true: Any, map_name: str, row: dict) -> Figure:
    """`uncertainty_panel` of one test image (tensors accepted) titled with the per-image row of the
    uncertainty evaluation: id, certainty, Dice of the mean prediction and NEEDS REVIEW when flagged."""
    return uncertainty_panel(as_uint8_rgb(image), None if true is None else true.cpu().numpy(),
                             pred.cpu().numpy(), heat.float().cpu().numpy(), map_name, title=row_title(row))


def row_title(row: dict) -> str:
    """"<id>  certainty 0.912  Dice 0.850  NEEDS REVIEW" (Dice only when labelled, the flag only when set)."""
    return (f"{row['id'][:24]}  certainty {row['certainty']:.3f}"
            + ("" if math.isnan(row["dice_mc"]) else f"  Dice {row['dice_mc']:.3f}")
            + ("  NEEDS REVIEW" if row.get("needs_review") else ""))


def _scalar_mappable(vmax: float) -> ScalarMappable:
    return ScalarMappable(norm=Normalize(0.0, vmax), cmap=colormaps[HEAT_CMAP])


def reliability_diagram(bins: dict, ece: float, title: str = "pixel reliability") -> Figure:
    """Bars of the observed foreground frequency per probability bin against the diagonal, with the pixel
    share of each bin below (log scale: most pixels are confident background)."""
    edges = np.asarray(bins["edges"], np.float64)
    count = np.asarray(bins["count"], np.float64)
    freq = np.asarray(bins["frequency"], np.float64)
    conf = np.asarray(bins["confidence"], np.float64)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = Figure(figsize=(4.2, 5.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = count > 0
    top.bar(centers[ok], freq[ok], width=width[ok], edgecolor="black", color="tab:blue", label="observed")
    top.bar(centers[ok], conf[ok] - freq[ok], bottom=freq[ok], width=width[ok], color="tab:red", alpha=0.35,
            label="gap to mean probability")
    top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    top.set_ylabel("fraction of foreground pixels")
    top.set_ylim(0, 1)
    top.set_title(f"{title} (ECE = {ece:.4f})", fontsize=10)
    top.legend(fontsize=7, loc="upper left")
    share = count / max(count.sum(), 1)
    bottom.bar(centers, np.where(share > 0, share, np.nan), width=width, color="gray", edgecolor="black")
    bottom.set_yscale("log")
    bottom.set_xlabel("predicted foreground probability")
    bottom.set_ylabel("pixel share")
    bottom.set_xlim(0, 1)
    return fig


def progress_grid(images: Sequence[np.ndarray], targets: Sequence[np.ndarray | None],
                  snapshots: Sequence[tuple[int, Sequence[np.ndarray], Sequence[float]]],
                  names: Sequence[str] | None = None) -> Figure:
    """Rows = fixed images; columns = image, ground truth, then the predicted foreground probability at each
    snapshot `(global_step, probs per image, Dice per image)`: the model learning (or forgetting) over time."""
    n_rows, n_cols = len(images), 2 + len(snapshots)
    fig = Figure(figsize=(1.9 * n_cols, 1.9 * n_rows + 0.4))
    axes = np.asarray(fig.subplots(n_rows, n_cols, squeeze=False))
    for r, img in enumerate(images):
        row: list[tuple[str, np.ndarray, str | None]] = [("image", as_uint8_rgb(img), None)]
        tgt = targets[r]
        row.append(("ground truth", np.zeros(img.shape[:2]) if tgt is None else np.asarray(tgt, float), "gray"))
        for step, probs, dices in snapshots:
            d = dices[r]
            label = f"step {step}" + ("" if d is None or not np.isfinite(d) else f"\nDice {d:.2f}")
            row.append((label, np.asarray(probs[r], float), "magma"))
        for c, (label, arr, cmap) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(arr, cmap=cmap, vmin=0, vmax=1) if cmap else ax.imshow(arr)
            ax.set_title(label if c >= 2 or r == 0 else "", fontsize=7)
            ax.axis("off")
        if names:
            axes[r, 0].set_title(str(names[r])[:16], fontsize=7)
    fig.suptitle("predicted foreground probability during training", fontsize=9)
    return fig
