"""ISBI 2012 on the real slices: label convention, z-block split, TIFF-stack layout, prediction split, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from nucseg.data.datamodule import SegDataModule
from nucseg.data.isbi2012 import ISBI2012Source, block_splits
from nucseg.train import train


@pytest.fixture(scope="module")
def isbi_root(data_dir):
    root = data_dir / "isbi2012"
    if not (root / "train" / "images").is_dir():
        pytest.fail(f"test data missing: expected {root}/train/images (set NUCSEG_DATA_DIR)")
    return root


def test_records_and_block_split(isbi_root):
    records = ISBI2012Source(isbi_root).records()
    train_recs = [r for r in records if r.id.startswith("train-")]
    assert len(train_recs) == 30 and sum(r.split == "predict" for r in records) == 30
    by_split = {s: [int(r.id.split("-")[1]) for r in train_recs if r.split == s] for s in ("train", "val", "test")}
    # contiguous z blocks: neighbouring slices never straddle train and test
    assert by_split == {"train": list(range(18)), "val": list(range(18, 24)), "test": list(range(24, 30))}
    assert all(r.id.startswith("test-") for r in records if r.split == "predict")
    assert block_splits(10, 0.1, 0.2) == ["train"] * 7 + ["val"] + ["test"] * 2
    assert [r.split for r in ISBI2012Source(isbi_root, split="random").records()[:30]] == [None] * 30


def test_labels_are_cells_and_membranes_are_background(isbi_root):
    src = ISBI2012Source(isbi_root)
    image, labels = src.load("train-7")
    raw_label = np.asarray(Image.open(isbi_root / "train" / "labels" / "7.png"))
    raw_image = np.asarray(Image.open(isbi_root / "train" / "images" / "7.png"))
    assert set(np.unique(raw_label)) == {0, 255}
    assert np.array_equal(labels > 0, raw_label == 255)  # 255 = cell interior -> foreground
    assert (labels[raw_label == 0] == 0).all()  # 0 = membrane -> background
    # each instance is one 4-connected cell region, and there is one per region
    n_regions = ndimage.label(raw_label == 255)[1]
    assert labels.max() == n_regions > 50 and labels.dtype == np.int32
    assert image.shape == (512, 512, 3) and image.dtype == np.uint8
    assert np.array_equal(image[..., 0], image[..., 2])  # gray replicated
    assert np.corrcoef(image[..., 0].ravel(), raw_image.ravel())[0, 1] > 0.99  # a monotone stretch of the slice
    test_image, test_labels = src.load("test-3")
    assert test_labels is None and test_image.shape == (512, 512, 3)


def test_tiff_stacks_read_the_same_slices(isbi_root, tmp_path):
    def stack(folder, n):
        return np.stack([np.asarray(Image.open(isbi_root / folder / f"{i}.png")) for i in range(n)])

    tifffile.imwrite(tmp_path / "train-volume.tif", stack("train/images", 5))
    tifffile.imwrite(tmp_path / "train-labels.tif", stack("train/labels", 5))
    tifffile.imwrite(tmp_path / "test-volume.tif", stack("test/images", 2))
    tif, png = ISBI2012Source(tmp_path, val_fraction=0.2, test_fraction=0.2), ISBI2012Source(isbi_root)
    assert tif.layout == "tiff" and png.layout == "png"
    assert [(r.id, r.split) for r in tif.records()] == [
        ("train-0", "train"), ("train-1", "train"), ("train-2", "train"), ("train-3", "val"), ("train-4", "test"),
        ("test-0", "predict"), ("test-1", "predict")]
    for i in (0, 4):
        a, b = tif.load(f"train-{i}"), png.load(f"train-{i}")
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(tif.load("test-1")[0], png.load("test-1")[0])
    assert "train-volume.tif[slice 3]" in tif.location("train-3")
    tifffile.imwrite(tmp_path / "train-labels.tif", stack("train/labels", 6))
    with pytest.raises(ValueError, match=r"train-labels.tif: 6 label slices but .*train-volume.tif has 5"):
        ISBI2012Source(tmp_path)


def test_datamodule_serves_unlabelled_slices_for_prediction_only(isbi_root, cache_dir):
    dm = SegDataModule(ISBI2012Source(isbi_root), cache_dir=str(cache_dir), val_fraction=0.2, test_fraction=0.2,
                       crop_size=64, batch_size=2, num_workers=0)
    test_ids = [b["id"][0] for b in dm.test_dataloader()]
    assert test_ids == sorted(f"train-{i}" for i in range(24, 30))
    loader = dm.predict_dataloader()
    assert sorted(loader.dataset.ids) == sorted(f"test-{i}" for i in range(30))
    for batch, _ in zip(loader, range(2), strict=False):
        assert batch["labelled"] == [False] and batch["id"][0].startswith("test-")
        assert batch["image"].shape == (1, 3, 512, 512)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and all(batch["labelled"])
    assert ((batch["labels"] > 0).float() == batch["target"][:, 0]).all()


def test_train_on_isbi_writes_metrics(make_cfg, tmp_path):
    # whole 512x512 slices dominate on CPU: a narrow decoder, no sanity check, one val and one test slice, exact
    # AUROC (torchmetrics' 200-threshold loop over 262k pixels is slow on a busy 2-core machine), no snapshots
    metrics = train(make_cfg(["data=isbi2012", "logger=none", "trainer.limit_val_batches=1",
                              "trainer.limit_test_batches=1", "model.decoder_channels=[32,16,8]",
                              "++trainer.num_sanity_val_steps=0",
                              "callbacks.progress_snapshots=null"]))
    written = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train/loss", "val/dice", "test/dice", "test/iou"):
        assert written[key] == metrics[key]
    assert 0.0 <= written["test/dice"] <= 1.0 and written["test/iou"] <= written["test/dice"] + 1e-6
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
