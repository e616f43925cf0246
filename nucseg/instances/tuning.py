"""Choose the post-processing parameters on validation images: the settings of `probs_to_instances` that
maximise the mean score of an objective, by coordinate search over small grids (StarDist tunes its thresholds on
validation data the same way and stores them with the model). Objectives (`postprocess.objective`):
`dsb_score` (default; nuclei: the DSB2018 score) and `rand_f` (regions that tile the tissue, such as ISBI 2012
EM cells: the foreground-restricted Rand F-score, over threshold, `grow` and min_size).

The probabilities are computed once by the caller; each candidate costs one watershed and one vectorised score
per image, so a search over ~40 candidates and ~70 validation images takes seconds.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nucseg.instances.watershed import probs_to_instances
from nucseg.metrics.dsb_score import dsb_score_image
from nucseg.metrics.regions import rand_f
from nucseg.utils.progress import logged_progress

__all__ = ["DEFAULT_GRID", "DISTANCE_GRID", "OBJECTIVES", "OBJECTIVE_TITLES", "REGION_GRID", "TuneResult",
           "score_settings", "tune_postprocess"]

log = logging.getLogger(__name__)

# searched one stage after another; a stage keeps the best values of the stages before it
DEFAULT_GRID: dict[str, list[Any]] = {
    "threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "contour_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "seed_min_size": [3, 10, 20, 40],
    "min_size": [5, 10, 20, 40],
}
# objective rand_f: cells that tile the tissue; grow=true gives every pixel to a cell
REGION_GRID: dict[str, list[Any]] = {
    "threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "grow": [False, True],
    "min_size": [0, 10, 40, 160],
}
# objective name -> (score of one image: (true labels, predicted labels) -> float, higher better; default grid)
OBJECTIVES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], dict[str, list[Any]]]] = {
    "dsb_score": (dsb_score_image, DEFAULT_GRID),
    "rand_f": (rand_f, REGION_GRID),
}
OBJECTIVE_TITLES = {"dsb_score": "DSB score", "rand_f": "Rand F-score"}
# keys searched jointly (they interact: a lower foreground threshold needs a different contour cut, and growing
# the cells over the membranes a different threshold)
JOINT = ("threshold", "contour_threshold", "grow")
TUNED_KEYS = ("threshold", "contour_threshold", "seed_min_size", "min_size", "grow", "distance_threshold")
# searched too where the probabilities carry an inner-distance channel (data.targets=instance_distance)
DISTANCE_GRID: dict[str, list[Any]] = {"distance_threshold": [0.0, 0.2, 0.35, 0.5]}


@dataclass
class TuneResult:
    """`settings`: the base settings with the tuned values; `score` and `base_score`: mean `objective` score of
    the validation images with the tuned and the given settings; `trials`: every (settings, score) tried."""

    settings: dict[str, Any]
    score: float
    base_score: float
    n_images: int
    base: dict[str, Any] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    objective: str = "dsb_score"

    def summary(self) -> dict[str, Any]:
        """What a checkpoint keeps as `postprocess.tuned`: validation scores (`val_<objective>`,
        `val_<objective>_base`), the untuned values (`base`)."""
        return {f"val_{self.objective}": self.score, f"val_{self.objective}_base": self.base_score,
                "n_val_images": self.n_images, "n_trials": len(self.trials),
                "base": {k: self.base.get(k) for k in TUNED_KEYS}}


def objective_of(settings: Mapping[str, Any]) -> str:
    """`postprocess.objective` of a settings mapping (default dsb_score), checked."""
    objective = settings.get("objective") or "dsb_score"
    if objective not in OBJECTIVES:
        raise ValueError(f"postprocess.objective: expected one of {sorted(OBJECTIVES)}, got {objective!r}")
    return str(objective)


def score_settings(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], settings: Mapping[str, Any],
                   objective: str = "dsb_score") -> float:
    """Mean `objective` score of `probs_to_instances(p, **settings)` over images: probs (K, H, W), labels (H, W)."""
    score = OBJECTIVES[objective][0]
    scores = [score(t, probs_to_instances(p, **settings)) for p, t in zip(probs, labels, strict=True)]
    return float(np.mean(scores)) if scores else float("nan")


def tune_postprocess(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray], base: Mapping[str, Any],
                     grid: Mapping[str, Sequence[Any]] | None = None, progress_interval: float | None = None
                     ) -> TuneResult:
    """Coordinate search from `base` (a `postprocess` config, whose `objective` picks the score and the default
    grid): first the `JOINT` keys of the grid jointly (contour_threshold only for the watershed), then each
    remaining key on its own. Ties keep the earlier (base or smaller) value, so the result is deterministic.
    `progress_interval`: log a progress line at most every so many seconds (a log file; None: none)."""
    if len(probs) != len(labels) or not probs:
        raise ValueError(f"tune_postprocess: expected as many probability maps as label maps (> 0), got "
                         f"{len(probs)} and {len(labels)}")
    objective = objective_of(base)
    best = dict(base)
    method = best.get("method", "auto")
    watershed = method == "watershed" or (method == "auto" and probs[0].shape[0] >= 2)
    if grid is None:
        distance = watershed and objective == "dsb_score" and probs[0].shape[0] >= 4
        grid = {**OBJECTIVES[objective][1], **(DISTANCE_GRID if distance else {})}
    grid = {k: list(v) for k, v in grid.items()}
    trials: list[dict[str, Any]] = []
    cache: dict[tuple, float] = {}

    def evaluate(settings: dict[str, Any]) -> float:
        key = tuple(sorted((k, settings.get(k)) for k in TUNED_KEYS))
        if key not in cache:
            cache[key] = score_settings(probs, labels, settings, objective)
            trials.append({**{k: settings.get(k) for k in TUNED_KEYS}, "score": cache[key]})
        return cache[key]

    base_score = best_score = evaluate(best)
    joint = [k for k in JOINT if k in grid and (k != "contour_threshold" or watershed)]
    stages: list[list[dict[str, Any]]] = []
    if joint:
        # the product keeps each value's type (grow stays a bool in the checkpoint)
        stages.append([dict(zip(joint, v, strict=True)) for v in itertools.product(*[grid[k] for k in joint])])
    for k in grid:
        if k in JOINT or (k == "seed_min_size" and not watershed):
            continue
        stages.append([{k: v} for v in grid[k]])
    changes = [change for candidates in stages for change in candidates]
    # each change applies to the best settings so far: the generator is consumed one candidate at a time
    for change in logged_progress(changes, len(changes), "post-processing search", "candidate", progress_interval):
        trial = {**best, **change}
        s = evaluate(trial)
        if s > best_score + 1e-9:
            best, best_score = trial, s
    log.info("post-processing tuned on %d validation images: %s %.4f -> %.4f (%s)", len(probs), objective,
             base_score, best_score, ", ".join(f"{k}={best.get(k)}" for k in TUNED_KEYS if k in grid))
    return TuneResult(best, best_score, base_score, len(probs), dict(base), trials, objective)
