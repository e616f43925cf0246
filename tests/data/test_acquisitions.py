"""Acquisition groups and the grouped split: no acquisition straddles two splits, on synthetic and real data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from nucseg.data.acquisitions import acquisition_features, cluster_acquisitions, dhash
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.io import read_raw, to_rgb
from nucseg.data.source import Record
from nucseg.data.splits import split_records
from nucseg.utils.errors import ConfigError


def _records(sizes: dict[str, list[int]]) -> list[Record]:
    """Records of several imaging types, each with acquisitions of the given sizes."""
    out = []
    for t, groups in sizes.items():
        for g, n in enumerate(groups):
            out += [Record(f"{t}-{g}-{k}", t, acquisition=f"{t}{g}") for k in range(n)]
    return out


def test_grouped_split_keeps_acquisitions_whole_and_types_in_each_split():
    records = _records({"fluo": [30, 20, 12, 10, 8, 8, 6, 5, 4, 3, 2, 2], "stained": [9, 7, 6, 5, 4, 3, 3, 2, 1]})
    acq = {r.id: r.acquisition for r in records}
    split = split_records(records, 0.1, 0.1, seed=3, split_by="acquisition")
    assert sorted(sum(split.values(), [])) == sorted(r.id for r in records)
    seen = {k: {acq[i] for i in v} for k, v in split.items()}
    assert not seen["train"] & seen["test"] and not seen["train"] & seen["val"] and not seen["val"] & seen["test"]
    types = {k: Counter(i.split("-")[0] for i in v) for k, v in split.items()}
    assert types["test"]["fluo"] > 0 and types["test"]["stained"] > 0
    assert types["val"]["fluo"] > 0 and types["val"]["stained"] > 0
    # about 10 % each, within one group's overshoot
    assert 0.05 * len(records) <= len(split["test"]) <= 0.2 * len(records)
    assert split == split_records(list(reversed(records)), 0.1, 0.1, seed=3, split_by="acquisition")
    assert split != split_records(records, 0.1, 0.1, seed=4, split_by="acquisition")


def test_image_split_and_sources_without_acquisitions_split_images():
    records = _records({"fluo": [40, 40]})
    by_image = split_records(records, 0.1, 0.1, seed=0, split_by="image")
    acq = {r.id: r.acquisition for r in records}
    # 80 images of two acquisitions: an image split necessarily puts both into train and test
    assert {acq[i] for i in by_image["test"]} & {acq[i] for i in by_image["train"]}
    plain = [Record(r.id, r.group) for r in records]
    assert split_records(plain, 0.1, 0.1, 0, "acquisition") == split_records(plain, 0.1, 0.1, 0, "image")


def test_holdout_types_go_to_test_only():
    records = _records({"fluo": [10, 8, 6, 5, 4, 3], "stained": [6, 5, 4], "brightfield": [4]})
    split = split_records(records, 0.1, 0.1, seed=0, holdout_types=["stained"])
    assert all(not i.startswith("stained") for i in split["train"] + split["val"])
    assert sum(i.startswith("stained") for i in split["test"]) == 15
    with pytest.raises(ConfigError, match="data.holdout_types.*nope"):
        split_records(records, 0.1, 0.1, seed=0, holdout_types=["nope"])
    with pytest.raises(ConfigError, match="data.split_by"):
        split_records(records, 0.1, 0.1, seed=0, split_by="random")


def test_cluster_acquisitions_cuts_at_threshold():
    feats = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0], [5.0, 5.2]])
    assert cluster_acquisitions(feats, 0.5).tolist() == [0, 0, 1, 1, 1]
    assert cluster_acquisitions(feats, 100.0).tolist() == [0] * 5
    assert cluster_acquisitions(feats[:1]).tolist() == [0]


def test_real_groups_separate_experiments_and_the_grouped_split_does_not_leak(dsb_root, cache_dir):
    src = DSB2018Source(dsb_root, index_dir=cache_dir)
    records = src.records()
    acq = {r.id: r.acquisition for r in records}
    n_groups = len(set(acq.values()))
    assert 10 < n_groups < len(records) // 3  # acquisitions, not single images nor one blob
    grouped = split_records(records, 0.1, 0.1, 42, "acquisition")
    by_image = split_records(records, 0.1, 0.1, 42, "image")
    train_acq = {acq[i] for i in grouped["train"]}
    assert not any(acq[i] in train_acq for i in grouped["test"] + grouped["val"])
    leaked = sum(acq[i] in {acq[j] for j in by_image["train"]} for i in by_image["test"])
    assert leaked > len(by_image["test"]) // 2  # the old split's test images mostly had a sibling in training
    # two crops of one image share an acquisition's statistics more than images of another imaging type
    kind = {r.id: r.group for r in records}
    fluo = next(r.id for r in records if kind[r.id] == "fluorescence")
    stained = next(r.id for r in records if kind[r.id] == "stained")
    a = to_rgb(read_raw(src.image_path(fluo)))
    f = np.array([acquisition_features(x) for x in (a, np.ascontiguousarray(a[::-1]),
                                                     to_rgb(read_raw(src.image_path(stained))))])
    assert np.linalg.norm(f[0] - f[1]) < np.linalg.norm(f[0] - f[2])
    assert bin(dhash(a) ^ dhash(a.copy())).count("1") == 0
    assert bin(dhash(a) ^ dhash(to_rgb(read_raw(src.image_path(stained))))).count("1") > 6
