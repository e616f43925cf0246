"""Choose the post-processing parameters on validation images: the settings of `probs_to_instances` that
maximise the mean DSB2018 score, by coordinate search over small grids (StarDist tunes its thresholds on
validation data the same way and stores them with the model).

The probabilities are computed once by the caller; each candidate costs one watershed and one vectorised score
per image, so a search over ~40 candidates and ~70 validation images takes seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.dsb_score import dsb_score_image

__all__ = ["DEFAULT_GRID", "TuneResult", "score_settings", "tune_postprocess"]

log = logging.getLogger(__name__)

# searched one stage after another; a stage keeps the best values of the stages before it
DEFAULT_GRID: dict[str, list[Any]] = {
    "threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "contour_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "seed_min_size": [3, 10, 20, 40],
    "min_size": [5, 10, 20, 40],
}
# keys searched jointly (they interact: a lower foreground threshold needs a different contour cut)
JOINT = ("threshold", "contour_threshold")
TUNED_KEYS = tuple(DEFAULT_GRID)


@dataclass
class TuneResult:
    """`settings`: the base settings with the tuned values; `score` and `base_score`: mean DSB score of the
    validation images with the tuned and the given settings; `trials`: every (settings, score) tried."""

    settings: dict[str, Any]
    score: float
    base_score: float
    n_images: int
    base: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What a checkpoint keeps as `postprocess.tuned`: validation scores, the untuned values (`base`)."""
        return {"val_dsb_score": self.score, "val_dsb_score_base": self.base_score, "n_val_images": self.n_images,
                "n_trials": len(self.trials), "base": {k: self.base.get(k) for k in TUNED_KEYS}}


def score_settings(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], settings: Mapping[str, Any]
                   ) -> float:
    """Mean DSB score of `probs_to_instances(p, **settings)` over images: probs (K, H, W), labels (H, W)."""
    scores = [dsb_score_image(t, probs_to_instances(p, **settings)) for p, t in zip(probs, labels, strict=True)]
    return float(np.mean(scores)) if scores else float("nan")


def tune_postprocess(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], base: Mapping[str, Any],
                     grid: Mapping[str, Sequence[Any]] | None = None) -> TuneResult:
    """Coordinate search from `base` (a `postprocess` config): first `threshold` x `contour_threshold` jointly
    (contour_threshold only for the watershed), then each remaining key of `grid` on its own. Ties keep the
    earlier (base or smaller) value, so the result is deterministic."""
    if len(probs) != len(labels) or not probs:
        raise ValueError(f"tune_postprocess: expected as many probability maps as label maps (> 0), got "
                         f"{len(probs)} and {len(labels)}")
    grid = {k: list(v) for k, v in (grid or DEFAULT_GRID).items()}
    best = dict(base)
    method = best.get("method", "auto")
    watershed = method == "watershed" or (method == "auto" and probs[0].shape[0] >= 2)
    trials: list[dict[str, Any]] = []
    cache: dict[tuple, float] = {}

    def evaluate(settings: dict[str, Any]) -> float:
        key = tuple(sorted((k, settings.get(k)) for k in TUNED_KEYS))
        if key not in cache:
            cache[key] = score_settings(probs, labels, settings)
            trials.append({**{k: settings.get(k) for k in TUNED_KEYS}, "score": cache[key]})
        return cache[key]

    base_score = best_score = evaluate(best)
    joint = [k for k in JOINT if k in grid and (k != "contour_threshold" or watershed)]
    stages: list[list[dict[str, Any]]] = []
    if joint:
        values = np.array(np.meshgrid(*[grid[k] for k in joint], indexing="ij")).reshape(len(joint), -1).T
        stages.append([dict(zip(joint, v.tolist(), strict=True)) for v in values])
    for k in grid:
        if k in JOINT or (k == "seed_min_size" and not watershed):
            continue
        stages.append([{k: v} for v in grid[k]])
    for candidates in stages:
        for change in candidates:
            trial = {**best, **change}
            s = evaluate(trial)
            if s > best_score + 1e-9:
                best, best_score = trial, s
    log.info("post-processing tuned on %d validation images: DSB score %.4f -> %.4f (%s)", len(probs),
             base_score, best_score, ", ".join(f"{k}={best.get(k)}" for k in TUNED_KEYS))
    return TuneResult(best, best_score, base_score, len(probs), dict(base), trials)
