"""DSB2018 loading against the real files: mask merge, imaging types, cache, split, batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nucseg.data.datamodule import SegDataModule
from nucseg.data.dsb2018 import DSB2018Source, merge_masks
from nucseg.data.source import CachedSource
from nucseg.data.splits import group_weights, stratified_split
from nucseg.utils.errors import DataNotFoundError

# a 256x256 fluorescence image and a 1000x1388... let the test find sizes from the files themselves
SOME_IDS = 5


def _ids(root, n=SOME_IDS):
    return sorted(p.name for p in root.iterdir())[:n]


def test_merge_matches_every_mask_file(dsb_root):
    for rid in _ids(dsb_root):
        mask_files = sorted((dsb_root / rid / "masks").glob("*.png"))
        labels = merge_masks(mask_files)
        assert labels.dtype == np.int32
        assert labels.max() == len(mask_files)  # one label per nucleus file
        assert len(np.unique(labels)) - 1 == len(mask_files)
        for k, f in enumerate(mask_files, start=1):  # label k covers exactly the pixels of file k
            m = np.asarray(Image.open(f)) > 0
            assert np.array_equal(labels == k, m), f


def test_source_load_gives_rgb_uint8_and_labels(dsb_root, tmp_path):
    src = DSB2018Source(dsb_root, index_dir=tmp_path)
    rid = _ids(dsb_root, 1)[0]
    image, labels = src.load(rid)
    raw = np.asarray(Image.open(dsb_root / rid / "images" / f"{rid}.png"))
    assert image.dtype == np.uint8 and image.shape == raw.shape[:2] + (3,)
    assert labels.shape == raw.shape[:2]
    assert labels.max() == len(list((dsb_root / rid / "masks").glob("*.png")))


def test_records_group_imaging_types(dsb_root, cache_dir):
    src = DSB2018Source(dsb_root, index_dir=cache_dir)  # the session's index: built by its first reader
    records = src.records()
    n_present = sum((d / "images" / f"{d.name}.png").is_file() for d in dsb_root.iterdir())
    assert len(records) == n_present > 600  # 664 here, 670 in the public downloads
    counts = {g: sum(r.group == g for r in records) for g in ("fluorescence", "stained", "brightfield")}
    # the published make-up of stage1_train: mostly fluorescence, about a sixth stained tissue, a few brightfield
    assert counts["fluorescence"] > 500 and 80 < counts["stained"] < 130 and 5 < counts["brightfield"] < 30
    assert sum(counts.values()) == len(records)
    assert (cache_dir / f"{src.name}-index.json").is_file()  # second call reads the index
    assert src.records() == records


def test_cache_round_trip_and_invalidation(dsb_root, tmp_path, monkeypatch):
    src = DSB2018Source(dsb_root)
    cached = CachedSource(src, tmp_path)
    rid = _ids(dsb_root, 1)[0]
    img1, lab1 = cached.load(rid)
    files = list((tmp_path / src.name).glob("*.npz"))
    assert len(files) == 1
    calls = []
    monkeypatch.setattr(src, "load", lambda r: calls.append(r) or (img1, lab1))
    img2, lab2 = cached.load(rid)  # from the cache: the source is not asked again
    assert calls == [] and np.array_equal(img1, img2) and np.array_equal(lab1, lab2)
    monkeypatch.setattr(src, "fingerprint", lambda r: "changed")
    cached.load(rid)  # a changed fingerprint rebuilds the entry
    assert calls == [rid]


def test_memory_cache_reads_each_record_once_within_its_budget(dsb_root, tmp_path, monkeypatch):
    src = DSB2018Source(dsb_root)
    ids = _ids(dsb_root, 3)
    disk = CachedSource(src, tmp_path)
    sizes = {rid: sum(a.nbytes for a in disk.load(rid)) for rid in ids}
    # room for the two largest records together, not for all three
    budget = sorted(sizes.values())[-1] + sorted(sizes.values())[-2]
    cached = CachedSource(src, tmp_path, memory_mb=budget / 2**20)
    reads = []
    real = cached._load
    monkeypatch.setattr(cached, "_load", lambda r: reads.append(r) or real(r))
    for rid in ids + ids[-2:]:
        image, labels = cached.load(rid)
    assert reads == ids  # the last two came from memory
    assert not image.flags.writeable and not labels.flags.writeable  # a transform cannot change the cache
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 0
    assert cached._held <= budget and ids[0] not in cached._memory  # the oldest went first
    image2, labels2 = disk.load(ids[-1])
    assert np.array_equal(image, image2) and np.array_equal(labels, labels2)


def test_split_is_deterministic_disjoint_and_stratified(dsb_root, cache_dir):
    records = DSB2018Source(dsb_root, index_dir=cache_dir).records()  # the session's index (built once)
    a = stratified_split(records, 0.1, 0.1, seed=42)
    b = stratified_split(list(reversed(records)), 0.1, 0.1, seed=42)
    c = stratified_split(records, 0.1, 0.1, seed=7)
    assert a == b and a != c
    all_ids = a["train"] + a["val"] + a["test"]
    assert len(all_ids) == len(set(all_ids)) == len(records)
    group = {r.id: r.group for r in records}
    for split in ("val", "test"):
        groups = {group[i] for i in a[split]}
        assert groups == {"fluorescence", "stained", "brightfield"}, split
    assert 60 <= len(a["test"]) <= 72


def test_datamodule_batches(dsb_root, cache_dir):
    dm = SegDataModule(DSB2018Source(dsb_root, index_dir=cache_dir), cache_dir=str(cache_dir), crop_size=64,
                       batch_size=3, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 64, 64) and batch["target"].shape == (3, 1, 64, 64)
    assert batch["image"].min() >= 0 and batch["image"].max() <= 1
    assert set(batch["target"].unique().tolist()) <= {0.0, 1.0}
    assert ((batch["labels"] > 0).float() == batch["target"][:, 0]).all()
    val = next(iter(dm.val_dataloader()))
    rid = val["id"][0]
    raw = Image.open(dsb_root / rid / "images" / f"{rid}.png")
    assert val["image"].shape[-2:] == (raw.height, raw.width)  # whole image, original size


def test_group_weights_hand_computed():
    groups = ["a", "a", "a", "b"]
    assert group_weights(groups, 0.0).tolist() == pytest.approx([0.25] * 4)  # uniform over images
    assert group_weights(groups, 1.0).tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 0.5])  # groups 50/50
    w = group_weights(groups, 0.5)  # group shares in proportion to sqrt(3) : 1
    assert w[:3].sum() / w[3] == pytest.approx(3 ** 0.5)
    with pytest.raises(ValueError, match="data.group_balance"):
        group_weights(groups, 1.5)


def test_group_balance_oversamples_rare_imaging_types_on_the_real_split(dsb_root, cache_dir):
    dm = SegDataModule(DSB2018Source(dsb_root, index_dir=cache_dir), cache_dir=str(cache_dir), crop_size=64,
                       batch_size=4, num_workers=0, samples_per_epoch=4000, group_balance=0.5)
    dm.setup()
    sampler = dm.train_dataloader().sampler
    train = dm.splits["train"]
    counts = {g: sum(dm.groups[r] == g for r in train) for g in ("fluorescence", "stained", "brightfield")}
    expected = {g: n ** 0.5 / sum(m ** 0.5 for m in counts.values()) for g, n in counts.items()}
    torch.manual_seed(0)
    drawn = [dm.groups[train[i]] for i in sampler]
    assert len(drawn) == 4000
    for g, share in expected.items():  # 4000 draws: binomial sd <= 0.8 percentage points
        assert drawn.count(g) / 4000 == pytest.approx(share, abs=0.03), g
    uniform_brightfield = counts["brightfield"] / len(train)
    assert drawn.count("brightfield") / 4000 > 3 * uniform_brightfield  # ~2 % of uniform draws, ~10 % here


def test_missing_and_empty_roots_say_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"looked for the directory .*nowhere.*data-science-bowl-2018"):
        DSB2018Source(tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match="exists but holds no"):
        DSB2018Source(tmp_path)
