"""nucseg.inference.writers: what the review figure says."""

from __future__ import annotations

import numpy as np

from nucseg.inference.prediction import Prediction
from nucseg.inference.writers import review_title


def _pred(**kw) -> Prediction:
    return Prediction(labels=np.zeros((4, 4), np.int32), probs=np.zeros((1, 4, 4), np.float32),
                      image=np.zeros((4, 4, 3), np.uint8), **kw)


def test_review_title_names_the_reason_and_the_thresholds_behind_it():
    both = _pred(certainty=0.91234, review_threshold=0.95, ood_score=3.456, ood_threshold=2.5, needs_review=True,
                 review_reason="low certainty; unlike the training data")
    assert review_title("img", both) == ("img: NEEDS REVIEW (low certainty; unlike the training data),  0 nuclei,  "
                                         "certainty 0.912 (review below 0.950),  "
                                         "unlike-training score 3.46 (unlike above 2.50)")
    ood_only = _pred(ood_score=0.8, ood_threshold=2.5, review_reason="unlike the training data")
    assert review_title("x", ood_only) == ("x: NEEDS REVIEW (unlike the training data),  0 nuclei,  "
                                           "unlike-training score 0.80 (unlike above 2.50)")
