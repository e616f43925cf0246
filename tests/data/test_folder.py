"""`data=folder` on real DSB2018 images re-saved in the formats users bring: 16-bit TIFF, JPEG, RGBA/gray PNG,
binary and instance masks."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from nucseg.data.datamodule import SegDataModule
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.folder import FolderSource
from nucseg.data.io import read_image
from nucseg.train import train
from nucseg.utils.errors import ConfigError

# e2e runs: whole-image evaluation dominates on CPU, so keep the decoder narrow, skip the sanity check, use
# the exact AUROC (torchmetrics' 200-threshold loop over >50k-pixel images is slow on a busy 2-core machine), and
# no end-of-training snapshot predictions
FAST_EVAL = ["model.decoder_channels=[32,16,8]", "++trainer.num_sanity_val_steps=0", "logger=none",
             "callbacks.progress_snapshots=null"]


def _gray(rgba: np.ndarray) -> np.ndarray:
    return rgba[..., :3].mean(-1)


@pytest.fixture(scope="module")
def user_folder(dsb_root, tmp_path_factory):
    """Six real samples as a user's images/ + masks/ folder, one format per sample."""
    root = tmp_path_factory.mktemp("user_folder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    src = DSB2018Source(dsb_root)
    ids = sorted(p.name for p in dsb_root.iterdir())[:6]
    info = {}
    for k, rid in enumerate(ids):
        raw = np.asarray(Image.open(dsb_root / rid / "images" / f"{rid}.png"))
        labels = relabel_sequential(src.load(rid)[1])[0]
        stem = f"s{k}"
        if k == 0:  # dim 16-bit fluorescence: values 100..~1100 of 65535
            tifffile.imwrite(root / "images" / f"{stem}.tif", (_gray(raw) * 4 + 100).astype(np.uint16))
            tifffile.imwrite(root / "masks" / f"{stem}.tif", labels.astype(np.uint16))  # 16-bit instance mask
            kind = "instance"
        elif k == 1:  # JPEG RGB, binary 0/255 PNG mask
            Image.fromarray(raw[..., :3]).save(root / "images" / f"{stem}.jpg", quality=95)
            Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
            kind = "binary"
        elif k == 2:  # RGBA PNG as released, 8-bit instance PNG
            Image.fromarray(raw).save(root / "images" / f"{stem}.png")
            Image.fromarray(labels.astype(np.uint8)).save(root / "masks" / f"{stem}.png")
            kind = "instance"
        elif k == 3:  # 8-bit gray PNG, binary 0/1 TIFF mask
            Image.fromarray(_gray(raw).astype(np.uint8)).save(root / "images" / f"{stem}.png")
            tifffile.imwrite(root / "masks" / f"{stem}.tiff", (labels > 0).astype(np.uint8))
            kind = "binary"
        else:  # 3-channel 16-bit TIFF, instance PNG (16-bit)
            tifffile.imwrite(root / "images" / f"{stem}.tif", raw[..., :3].astype(np.uint16) * 257)
            Image.fromarray(labels.astype(np.uint16)).save(root / "masks" / f"{stem}.png")
            kind = "instance"
        info[stem] = (rid, kind, labels)
    (root / "images" / "notes.txt").write_text("acquired on the old scope")
    return root, info


def test_every_format_loads_as_rgb_uint8_with_instances(user_folder, dsb_root, caplog):
    root, info = user_folder
    with caplog.at_level(logging.WARNING):
        src = FolderSource(root)
    assert "notes.txt" in caplog.text and "not images" in caplog.text  # stray file: logged, not silent
    assert [r.id for r in src.records()] == sorted(info) and all(r.split is None for r in src.records())
    for stem, (_, kind, labels) in info.items():
        image, got = src.load(stem)
        assert image.dtype == np.uint8 and image.shape == labels.shape + (3,), stem
        assert got.dtype == np.int32 and got.shape == labels.shape
        if kind == "instance":
            assert np.array_equal(got, labels), stem
        else:  # binary masks are split into 4-connected components
            comps, n = ndimage.label(labels > 0)
            assert np.array_equal(got > 0, labels > 0) and got.max() == n, stem
        assert src.check(stem) == labels.shape


def test_sixteen_bit_fluorescence_is_stretched_by_percentiles(user_folder, dsb_root):
    root, info = user_folder
    rid = info["s0"][0]
    image = read_image(root / "images" / "s0.tif")
    raw = tifffile.imread(root / "images" / "s0.tif")
    assert raw.dtype == np.uint16 and raw.max() < 1200  # dim: a plain /65535 would give an almost black image
    assert image.max() == 255 and image.min() == 0
    assert (image[..., 0] == 255).mean() < 0.01  # only the top 0.2 percentile saturates
    ref = read_image(dsb_root / rid / "images" / f"{rid}.png")  # the same scene from the 8-bit original
    assert np.corrcoef(image[..., 0].ravel().astype(float), ref[..., 0].ravel().astype(float))[0, 1] > 0.98


def test_mask_suffix_and_unlabelled_images(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img = (np.arange(32 * 40).reshape(32, 40) % 251).astype(np.uint8)
    mask = np.zeros((32, 40), np.uint8)
    mask[4:10, 4:12] = 1
    mask[20:28, 20:30] = 2
    for stem in ("a", "b", "c"):
        Image.fromarray(img).save(tmp_path / "images" / f"{stem}.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "a_mask.png")
    Image.fromarray(mask).save(tmp_path / "masks" / "b_mask.png")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images have no mask .*\['c.png'\].*unlabelled=predict"):
        FolderSource(tmp_path, mask_suffix="_mask")
    with caplog.at_level(logging.WARNING):
        src = FolderSource(tmp_path, mask_suffix="_mask", unlabelled="predict")
    assert "used for prediction only" in caplog.text and "c.png" in caplog.text
    assert [(r.id, r.split) for r in src.records()] == [("a", None), ("b", None), ("c", "predict")]
    assert src.load("c")[1] is None and src.load("a")[1].max() == 2
    dm = SegDataModule(src, val_fraction=0.0, test_fraction=0.0, crop_size=16, batch_size=2, num_workers=0)
    assert [b["id"][0] for b in dm.predict_dataloader()] == ["c"]


def test_folder_root_is_mandatory(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^data.root: missing; .*pass data.root=\.\.\."):
        train(make_cfg(["data=folder"]))
    with pytest.raises(Exception, match=r"data.root: .*nowhere is not a directory.*images/"):  # wrapped by Hydra
        train(make_cfg(["data=folder", f"data.root={tmp_path / 'nowhere'}"]))


def test_train_and_test_on_a_user_folder(user_folder, make_cfg, tmp_path):
    root, _ = user_folder
    metrics = train(make_cfg(["data=folder", f"data.root={root}", "data.val_fraction=0.2",
                              "data.test_fraction=0.2"] + FAST_EVAL))
    written = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train/loss", "val/dice", "test/dice", "test/iou"):
        assert written[key] == metrics[key]
    assert 0.0 <= written["test/dice"] <= 1.0 and (tmp_path / "checkpoints" / "last.ckpt").is_file()
