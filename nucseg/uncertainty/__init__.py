"""How far to trust each mask: probability samples from MC dropout, test-time augmentation or a deep
ensemble (`sampling`), the per-pixel maps and per-image certainty computed from them (`scores`), the review
rule (`review`), the out-of-distribution score of the encoder features (`ood`) and the perturbed copies that
shift calibration fits its temperature on (`perturb`)."""

from nucseg.uncertainty.sampling import sample_probs
from nucseg.uncertainty.scores import image_certainty, pixel_uncertainty

__all__ = ["image_certainty", "pixel_uncertainty", "sample_probs"]
