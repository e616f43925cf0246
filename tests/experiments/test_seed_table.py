"""experiments/seed_table.py: the rule that decides what the project calls "better", and recorded arms."""

from __future__ import annotations

import json

import pytest

from tests.helpers.scripts import load_experiment


@pytest.fixture(scope="module")
def st():
    return load_experiment("seed_table")


def rows(arm: str, metric: str, values: list[float]) -> list[tuple[str, str, dict]]:
    return [(arm, str(i + 1), {metric: v}) for i, v in enumerate(values)]


def test_a_gap_larger_than_the_larger_sd_is_a_verdict(st):
    table = st.summarise(rows("a", "val/dsb_score", [0.60, 0.61, 0.62])
                         + rows("b", "val/dsb_score", [0.50, 0.52, 0.54]), ["val/dsb_score"])
    assert table["a"]["val/dsb_score"]["sd"] == pytest.approx(0.01)
    text = st.verdict(table, "val/dsb_score")
    assert text.startswith("'a' better than 'b' by 0.0900") and "0.0200" in text


def test_a_gap_within_the_spread_is_noise(st):
    table = st.summarise(rows("a", "val/dice", [0.90, 0.92, 0.94])
                         + rows("b", "val/dice", [0.89, 0.90, 0.91]), ["val/dice"])
    assert st.verdict(table, "val/dice").startswith("noise: difference 0.0200 <= larger sd 0.0200")


def test_lower_is_better_for_errors(st):
    table = st.summarise(rows("a", "test/count_error", [0.20, 0.21, 0.22])
                         + rows("b", "test/count_error", [0.30, 0.31, 0.32]), ["test/count_error"])
    assert st.verdict(table, "test/count_error").startswith("'a' better than 'b'")


def test_fewer_than_three_seeds_make_no_claim(st):
    table = st.summarise(rows("a", "val/dice", [0.9, 0.91]) + rows("b", "val/dice", [0.5, 0.51, 0.52]),
                         ["val/dice"])
    assert st.verdict(table, "val/dice").startswith("fewer than 3 seeds per arm")


def test_a_recorded_arm_joins_new_runs(st, tmp_path):
    old = st.summarise(rows("base", "val/dice", [0.80, 0.81, 0.82]), ["val/dice"])
    record = tmp_path / "seed_table.json"
    record.write_text(json.dumps(old))
    got = st.collect(f"before={record}:base")
    assert [(a, s, m["val/dice"]) for a, s, m in got] == [("before", "1", 0.8), ("before", "2", 0.81),
                                                          ("before", "3", 0.82)]
    assert [a for a, _, _ in st.collect(f"{record}:base")] == ["base"] * 3
    with pytest.raises(SystemExit, match="no arm 'other'"):
        st.collect(f"x={record}:other")


def test_against_judges_every_arm_against_the_baseline(st):
    table = st.summarise(rows("base", "val/dsb_score", [0.50, 0.51, 0.52])
                         + rows("good", "val/dsb_score", [0.60, 0.61, 0.62])
                         + rows("same", "val/dsb_score", [0.50, 0.52, 0.54]), ["val/dsb_score"])
    text = st.markdown(table, ["val/dsb_score"], against="base")
    assert "`good` against `base`:\n- val/dsb_score: 'good' better than 'base' by 0.1000" in text
    assert "`same` against `base`:\n- val/dsb_score: noise: difference 0.0100" in text
    # without a baseline the verdict is between the two best arms only
    assert st.markdown(table, ["val/dsb_score"]).count("- val/dsb_score:") == 1
