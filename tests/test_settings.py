"""The typed settings (nucseg.settings): defaults and checks written once, enums for the string options, and
the public API's docstring examples, which run here."""

from __future__ import annotations

import doctest
import importlib

import pytest

from nucseg.checks import RULES
from nucseg.settings import (
    Blend,
    CertaintyScore,
    UncertaintyMethod,
    UncertaintySettings,
    WindowSettings,
    setting_rules,
)


def test_enums_compare_as_their_strings_and_parse_with_a_named_error():
    assert UncertaintyMethod.TTA == "tta" and str(CertaintyScore.FG_ENTROPY) == "fg_entropy"
    assert CertaintyScore.values() == ("dice_agreement", "entropy", "fg_entropy", "fg_mutual_info")
    assert Blend.parse("constant", "blend") is Blend.CONSTANT
    with pytest.raises(ValueError, match=r"^blend: expected one of gaussian, constant, got 'linear'$"):
        Blend.parse("linear", "blend")


def test_uncertainty_settings_fill_method_defaults_and_round_trip_through_a_checkpoint_dict():
    s = UncertaintySettings.from_mapping({"method": "mc_dropout", "samples": 8, "score": "fg_mutual_info"},
                                         has_mc_dropout=True)
    assert s is not None and s.method is UncertaintyMethod.MC_DROPOUT and s.samples == 8
    assert s.seed == 0 and s.review_threshold == "auto" and s.score is CertaintyScore.FG_MUTUAL_INFO
    stored = s.to_dict()
    assert stored["method"] == "mc_dropout" and type(stored["method"]) is str and stored["checkpoints"] == []
    assert UncertaintySettings.from_mapping(stored, has_mc_dropout=True) == s
    tta = UncertaintySettings.for_method("tta")
    assert tta.seed is None and tta.tta_ops == "all"  # mc_dropout's seed default is its own
    # seed null means "fresh draws": a stored null is kept, not replaced by the method's default
    assert UncertaintySettings.from_mapping({"method": "mc_dropout", "seed": None, "score": "entropy"},
                                            has_mc_dropout=True).seed is None


def test_uncertainty_settings_none_method_and_mc_dropout_follow_the_network():
    assert UncertaintySettings.from_mapping({"method": "none"}) is None
    assert UncertaintySettings.from_mapping(None) is None
    s = UncertaintySettings.from_mapping({"method": "none"}, has_mc_dropout=True)
    assert s is not None and s.method is UncertaintyMethod.MC_DROPOUT
    with pytest.raises(ValueError, match="the model has no MC dropout"):
        UncertaintySettings.from_mapping({"method": "mc_dropout"})


@pytest.mark.parametrize(("values", "message"), [
    ({"samples": 0}, r"uncertainty.samples=0: expected an integer >= 1"),
    ({"review_threshold": "often"},
     r"uncertainty.review_threshold='often': expected a number between 0 and 1, or auto"),
    ({"review_budget": 2}, r"uncertainty.review_budget=2: expected a fraction"),
    ({"score": "vibes"}, r"uncertainty.score: expected one of dice_agreement, entropy, fg_entropy, fg_mutual_info"),
    ({"method": "bayes"}, r"uncertainty.method: expected one of none, mc_dropout, tta, ensemble, got 'bayes'"),
])
def test_a_bad_uncertainty_value_is_named_with_what_is_expected(values, message):
    with pytest.raises(ValueError, match=message):
        UncertaintySettings.from_mapping({"method": "tta", **values})


def test_unknown_keys_fail_a_users_config_and_warn_for_an_old_checkpoint(caplog):
    with pytest.raises(ValueError, match="uncertainty.sampels: unknown setting"):
        UncertaintySettings.from_mapping({"method": "tta", "sampels": 3}, strict=True)
    s = UncertaintySettings.from_mapping({"method": "tta", "heatmap": "entropy"})
    assert s is not None and "uncertainty.heatmap" in caplog.text


def test_window_settings_check_once_and_feed_the_config_rules():
    assert WindowSettings() == WindowSettings.from_values(tile=None, overlap=None) == WindowSettings(512, 0.25)
    with pytest.raises(ValueError, match=r"^tile=100: expected a positive multiple of 32"):
        WindowSettings(tile=100)
    with pytest.raises(ValueError, match=r"^overlap=1.0: expected a fraction of a tile"):
        WindowSettings(overlap=1.0)
    # the config check reads the very same rule objects: one place to change a range
    rules = setting_rules()
    assert {"tile", "overlap", "blend", "uncertainty.samples", "uncertainty.score"} <= set(rules)
    assert all(RULES[key] is rule for key, rule in rules.items())
    assert RULES["tile"].ok(512) and not RULES["tile"].ok(100) and RULES["uncertainty.score"].ok("fg_entropy")
    assert not RULES["uncertainty.method"].ok("bayes") and not RULES["postprocess.method"].ok("stardist")


@pytest.mark.parametrize("module", ["nucseg.settings", "nucseg.inference.sliding_window",
                                    "nucseg.instances.watershed", "nucseg.uncertainty.sampling"])
def test_the_public_api_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result


def test_the_library_never_reads_conf():
    """Only the entry points (their `@hydra.main`) and the composer they share name the config folder: the
    library gets its settings from the config the entry point composed, or from the checkpoint."""
    from tests.helpers.paths import PROJECT_ROOT

    readers = sorted(str(p.relative_to(PROJECT_ROOT)) for p in (PROJECT_ROOT / "nucseg").rglob("*.py")
                     if "CONF_DIR" in p.read_text())
    entry_points = {"nucseg/train.py", "nucseg/evaluate.py", "nucseg/predict.py", "nucseg/tune.py",
                    "nucseg/export/__main__.py", "nucseg/utils/config.py", "nucseg/utils/entry_config.py"}
    assert readers and set(readers) <= entry_points, set(readers) - entry_points
