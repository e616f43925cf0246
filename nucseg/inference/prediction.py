"""`Prediction`: what `nucseg.Predictor` found in one image (labels, probabilities, uncertainty, nuclei table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nucseg.instances.measure import COLUMNS
from nucseg.metrics.calibration import apply_temperature

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """What the model found in one image.

    labels: (H, W) int32 instance labels, 0 = background, nuclei numbered 1..N.
    probs: (K, H, W) float32 probabilities (K = 1 nucleus channel, or 3 with contour and touching borders).
    image: (H, W, 3) uint8, the input as the model saw it (percentile-normalised, CLAHE if trained with it).
    uncertainty: name -> (H, W) float32 map (entropy, mutual_info, variance); empty without an uncertainty
        method.
    certainty: image certainty in [0, 1] (the checkpoint's `uncertainty.score` of the samples); None without one.
    ood_score: how unlike the training images the image looks (encoder features; about 1 is typical of
        training, `nucseg.uncertainty.ood`); None when the checkpoint holds no OOD density.
    unlike_training: ood_score above the checkpoint's OOD threshold; None without a density.
    needs_review: certainty < the review threshold, or unlike_training; None when neither can be said.
    review_reason: why it needs review ("low certainty", "unlike the training data", both, or the warning);
        "" when it does not.
    temperature: the calibration temperature applied to `probability` (1: none).
    review_threshold / ood_threshold: the thresholds the flags were set by (None: not applied).
    nuclei: one dict per nucleus, in label order (`nucseg.instances.measure.COLUMNS`: nucleus_id, area,
        centroid_y, centroid_x, equivalent_diameter, eccentricity, mean_intensity); pixels, and intensity in
        the input's own units.
    nonfinite_pixels: input pixels with a NaN / inf value (ignored by the normalisation, seen as 0).
    warning: None, or why the result is not to be trusted ("constant image", "nearly constant image", "no
        finite pixels"); an image with a warning always has needs_review=True.
    """

    labels: np.ndarray
    probs: np.ndarray
    image: np.ndarray
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)
    certainty: float | None = None
    needs_review: bool | None = None
    ood_score: float | None = None
    unlike_training: bool | None = None
    review_reason: str = ""
    temperature: float = 1.0
    review_threshold: float | None = None
    ood_threshold: float | None = None
    nuclei: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_pixels: int = 0
    warning: str | None = None

    @property
    def probability(self) -> np.ndarray:
        """(H, W) float32 nucleus (foreground) probability, calibrated by the checkpoint's temperature (masks
        come from the uncalibrated `probs`, on which the post-processing was tuned; at 0.5 both agree)."""
        if self.temperature == 1.0:
            return self.probs[0]
        return apply_temperature(torch.from_numpy(self.probs[0]), self.temperature).numpy().astype(np.float32)

    def summary(self) -> dict[str, Any]:
        """height, width, nucleus_count, mean_area (pixels), certainty, ood_score, unlike_training, needs_review,
        review_reason, nonfinite_pixels, warning."""
        areas = [n["area"] for n in self.nuclei]
        return {"height": int(self.labels.shape[0]), "width": int(self.labels.shape[1]),
                "nucleus_count": len(self.nuclei), "mean_area": float(np.mean(areas)) if areas else 0.0,
                "certainty": self.certainty, "ood_score": self.ood_score, "unlike_training": self.unlike_training,
                "needs_review": self.needs_review, "review_reason": self.review_reason,
                "nonfinite_pixels": self.nonfinite_pixels, "warning": self.warning}

    def to_dataframe(self) -> Any:
        """The per-nucleus table as a pandas DataFrame (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError("Prediction.to_dataframe needs pandas (pip install pandas); "
                              "Prediction.nuclei holds the same table as a list of dicts") from exc
        return pd.DataFrame(self.nuclei, columns=list(COLUMNS))
