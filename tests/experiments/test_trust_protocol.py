"""experiments/trust_protocol.py: the figures of one run, on a synthetic per-image table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers.scripts import load_experiment


@pytest.fixture(scope="module")
def protocol():
    return load_experiment("trust_protocol")


def test_budget_split_flags_the_least_certain_share(protocol):
    score = np.array([0.9, 0.1, 0.5, 0.7])
    dice = np.array([0.95, 0.2, 0.6, 0.8])
    kept, flagged = protocol.budget_split(score, dice, 0.25)  # ceil(1) = the 0.1 image
    assert flagged == pytest.approx(0.2) and kept == pytest.approx((0.95 + 0.6 + 0.8) / 3)
    kept, flagged = protocol.budget_split(score, dice, 0.5)
    assert flagged == pytest.approx(0.4) and kept == pytest.approx(0.875)


def _row(i: int, dice: float, ood: float, certainty: float, review: bool) -> dict[str, str]:
    row = {"id": f"img{i}", "dice": str(dice), "dice_mc": str(dice), "dsb_score": str(dice - 0.3),
           "ood_score": str(ood), "needs_review": str(review), "unlike_training": str(ood > 2)}
    row.update({f"score_{name}": str(certainty) for name in protocol_scores()})
    return row


def protocol_scores() -> tuple[str, ...]:
    return ("dice_agreement", "entropy", "fg_entropy", "fg_mutual_info")


def test_run_figures_ood_auroc_budget_and_review_recall(protocol):
    # images 0-3 of the unseen type (OOD 3-6, predicted confidently and wrongly), 4-9 seen (OOD 0.5-1)
    rows = [_row(i, 0.1, 3.0 + i, 0.95, True) for i in range(4)]
    rows += [_row(i, 0.9 - 0.01 * i, 0.5 + 0.1 * i, 0.5 + 0.04 * i, i == 4) for i in range(4, 10)]
    types = {f"img{i}": "stained" if i < 4 else "fluorescence" for i in range(10)}
    metrics = {"test/ece": 0.1, "test/ece_calibrated": 0.08, "test/ece_calibrated_val": 0.09}
    f = protocol.run_figures(rows, metrics, types, "stained")
    assert f["ood/auroc_unseen_type"] == 1.0
    assert f["ood/auroc_dice08"] == 1.0
    assert f["dice_agreement/auroc_dice08"] == 0.0  # confident on every failure: the case OOD must catch
    assert f["unseen/unlike_fraction"] == 1.0 and f["seen/unlike_fraction"] == 0.0
    assert f["review/recall_dice08"] == 1.0
    assert f["review/flagged_dice"] == pytest.approx((4 * 0.1 + 0.86) / 5)
    assert f["ece"] == 0.1 and f["ece_calibrated"] == 0.08 and f["ece_calibrated_val"] == 0.09
    assert math.isnan(f["temperature"])
    assert f["n_images"] == 10 and f["failures_dice08"] == 4


def test_val_figures_rank_each_score_on_the_validation_images(protocol):
    dice = [0.95, 0.9, 0.85, 0.6, 0.3]
    rows = [{"dice_mc": str(d), "score_dice_agreement": str(d), "score_entropy": str(1 - d),
             "score_fg_entropy": str(d), "score_fg_mutual_info": "0.5"} for d in dice]
    f = protocol.val_figures(rows)
    assert f["val/n_images"] == 5 and f["val/failures_dice08"] == 2
    assert f["val/dice_agreement/spearman_dice"] == pytest.approx(1.0)
    assert f["val/entropy/spearman_dice"] == pytest.approx(-1.0) and f["val/entropy/auroc_dice08"] == 0.0
    assert f["val/fg_entropy/auroc_dice08"] == 1.0 and math.isnan(f["val/fg_mutual_info/spearman_dice"])


def test_review_figures_choose_the_threshold_on_validation_and_join_the_ood_flag(protocol):
    settings = {"failure_dice": 0.7, "min_val_failures": 5, "review_budget": 0.25}
    # 1 validation failure (< min_val_failures): the budget rule flags the least certain quarter (score < 0.35)
    val = [{"dice_mc": str(d), "score_fg_entropy": str(c)} for d, c in
           [(0.9, 0.9), (0.85, 0.8), (0.6, 0.3), (0.95, 0.4)]]
    test = [{"id": f"i{i}", "dice": str(d), "dice_mc": str(d), "dsb_score": str(d / 2), "score_fg_entropy": str(c),
             "unlike_training": str(u), "certainty": "0.99", "needs_review": "False"}
            for i, (d, c, u) in enumerate([(0.9, 0.9, False), (0.5, 0.2, False), (0.3, 0.95, True),
                                           (0.95, 0.7, False)])]
    f = protocol.review_figures(test, val, "fg_entropy", settings, {"i2": "stained"}, "stained")
    p = "review_fg_entropy/"
    assert f[p + "flagged_fraction"] == 0.5  # i1 by low certainty, i2 as unlike the training data
    assert f[p + "recall_dice08"] == 1.0 and f[p + "flagged_dice"] == pytest.approx(0.4)
    assert f[p + "seen_flagged"] == pytest.approx(1 / 3)
    assert p + "differs_from_run" not in f  # the run's certainty was another score
