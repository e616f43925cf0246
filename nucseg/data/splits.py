"""Which images train, validate and test: deterministic splits stratified by imaging type (or by whole
acquisition groups, `nucseg.data.acquisitions`), held-out imaging types, and the sampling weights that
rebalance imaging types in training."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from nucseg.data.acquisitions import grouped_split
from nucseg.data.source import Record
from nucseg.utils.errors import ConfigError

__all__ = ["SPLIT_BY", "check_group_balance", "group_weights", "split_records", "stratified_split"]


def stratified_split(records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int
                     ) -> dict[str, list[str]]:
    """Split ids into train/val/test per imaging group, so each split keeps the groups' proportions.

    Deterministic for a seed and a set of ids (independent of file-system order). Records that carry a
    fixed split (e.g. unlabelled test slices) keep it.
    """
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    by_group: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.split:
            out.setdefault(r.split, []).append(r.id)
        else:
            by_group[r.group].append(r.id)
    rng = np.random.default_rng(seed)
    for group in sorted(by_group):
        ids = sorted(by_group[group])
        rng.shuffle(ids)
        n = len(ids)
        n_test = int(math.floor(n * test_fraction + 0.5)) if test_fraction > 0 else 0
        n_val = int(math.floor(n * val_fraction + 0.5)) if val_fraction > 0 else 0
        if n >= 3:  # a group big enough to split is represented in each requested split
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        n_test, n_val = min(n_test, n), min(n_val, max(n - n_test, 0))
        out["test"] += ids[:n_test]
        out["val"] += ids[n_test:n_test + n_val]
        out["train"] += ids[n_test + n_val:]
    return {k: sorted(v) for k, v in out.items()}


SPLIT_BY = ("acquisition", "image")


def split_records(records: Sequence[Record], val_fraction: float, test_fraction: float, seed: int,
                  split_by: str = "acquisition", holdout_types: Sequence[str] = ()) -> dict[str, list[str]]:
    """train / val / test ids. `split_by=acquisition` keeps each acquisition group (near-copies) in one split
    (sources without acquisition groups fall back to images); `image` splits images independently. Images of
    an imaging type in `holdout_types` all go to test (leave-one-type-out: the model never sees the type)."""
    if split_by not in SPLIT_BY:
        raise ConfigError(f"data.split_by: expected one of {SPLIT_BY}, got {split_by!r}")
    holdout = set(holdout_types or ())
    unknown = holdout - {r.group for r in records}
    if unknown:
        raise ConfigError(f"data.holdout_types: {sorted(unknown)} not among the imaging types "
                         f"{sorted({r.group for r in records})}")
    held = sorted(r.id for r in records if r.group in holdout and not r.split)
    rest = [r for r in records if r.id not in set(held)]
    free = [r for r in rest if not r.split]
    if split_by == "acquisition" and free and all(r.acquisition for r in free):
        out = grouped_split([r.id for r in free], [r.group for r in free], [str(r.acquisition) for r in free],
                            val_fraction, test_fraction, seed)
        for r in rest:
            if r.split:
                out.setdefault(r.split, []).append(r.id)
    else:
        out = stratified_split(rest, val_fraction, test_fraction, seed)
    out["test"] = sorted(out.get("test", []) + held)
    return {k: sorted(v) for k, v in out.items()}


def check_group_balance(balance: float) -> float:
    if not 0.0 <= balance <= 1.0:
        raise ValueError(f"data.group_balance: expected a number in [0, 1], got {balance}")
    return float(balance)


def group_weights(groups: Sequence[str], balance: float) -> np.ndarray:
    """Per-image sampling weights that rebalance imaging types: an image of a group of n images gets
    n ** -balance (normalised to sum 1). balance=0 draws images uniformly (groups in proportion to their
    size), 1 draws every group equally often, 0.5 in proportion to sqrt(n): rare types are seen more often
    without repeating their few images as often as full balance would."""
    check_group_balance(balance)
    counts: dict[str, int] = defaultdict(int)
    for g in groups:
        counts[g] += 1
    w = np.array([counts[g] ** -balance for g in groups], dtype=np.float64)
    return w / w.sum()
