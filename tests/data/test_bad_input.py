"""Bad input: each case gets a logged, documented handling or an error that names the file and what was
expected — before training starts where possible, and still naming the file when it surfaces in a worker."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image
from torch.utils.data import DataLoader

from nucseg.data.datamodule import SegDataModule
from nucseg.data.dataset import collate
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.dsb2018_solution import DSB2018SolutionSource
from nucseg.data.folder import FolderSource
from nucseg.data.io import probe_image, read_image
from nucseg.data.isbi2012 import ISBI2012Source
from nucseg.data.rle import rle_encode
from nucseg.utils.errors import DataNotFoundError, ImageReadError


@pytest.fixture(scope="module")
def real_sample(dsb_root):
    """A real image and its instance labels, cut into small pieces by the tests."""
    rid = sorted(p.name for p in dsb_root.iterdir())[0]
    image, labels = DSB2018Source(dsb_root).load(rid)
    return image, labels


def _folder(root, real_sample, n=4, size=(48, 56)):
    image, labels = real_sample
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    h, w = size
    for k in range(n):
        y, x = 30 * k, 20 * k
        Image.fromarray(image[y:y + h, x:x + w]).save(root / "images" / f"img{k}.png")
        Image.fromarray(labels[y:y + h, x:x + w].astype(np.uint16)).save(root / "masks" / f"img{k}.png")
    return root


def _dm(source, **kw):
    args = {"val_fraction": 0.25, "test_fraction": 0.25, "crop_size": 32, "batch_size": 2, "num_workers": 0}
    return SegDataModule(source, **{**args, **kw})


# ---------------------------------------------------------------------------------------------- corrupt files
def test_corrupt_and_truncated_images_fail_setup_naming_each_file(tmp_path, real_sample):
    root = _folder(tmp_path, real_sample)
    data = (root / "images" / "img1.png").read_bytes()
    (root / "images" / "img1.png").write_bytes(data[: len(data) // 2])  # truncated
    (root / "images" / "img2.png").write_bytes(b"\x89PNG not really a png")  # corrupt
    tifffile.imwrite(root / "images" / "img3.tif", real_sample[0][:48, :56])
    (root / "images" / "img3.png").unlink()
    tif = (root / "images" / "img3.tif").read_bytes()
    (root / "images" / "img3.tif").write_bytes(tif[: len(tif) // 2])  # truncated TIFF
    dm = _dm(FolderSource(root))
    with pytest.raises(ImageReadError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "3 of 4 samples" in msg and "failed validation" in msg
    assert f"{root / 'images' / 'img1.png'}: cannot decode image (OSError: Truncated File Read)" in msg
    assert f"{root / 'images' / 'img2.png'}: cannot decode image" in msg
    assert f"{root / 'images' / 'img3.tif'}: truncated TIFF" in msg


def test_error_raised_inside_a_worker_still_names_the_file(tmp_path, real_sample):
    root = _folder(tmp_path, real_sample, n=2)
    data = (root / "images" / "img0.png").read_bytes()
    (root / "images" / "img0.png").write_bytes(data[: len(data) // 2])
    dm = _dm(FolderSource(root), validate=False, val_fraction=0.0, test_fraction=0.0)
    # a plain (non-persistent) loader over the module's dataset: shutting down a worker that raised is quick
    it = iter(DataLoader(dm.dataset("train"), batch_size=2, num_workers=1, collate_fn=collate))
    try:
        with pytest.raises(ImageReadError, match=rf"{root / 'images' / 'img0.png'}: cannot decode image"):
            next(it)
    finally:
        it._shutdown_workers()


def test_multi_page_tiff_and_jpeg_masks_are_refused(tmp_path, real_sample):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([real_sample[0][..., 0]] * 7))
    with pytest.raises(ImageReadError, match=r"stack.tif: expected a single-page 2-D image .* multi-page"):
        probe_image(tmp_path / "stack.tif")
    with pytest.raises(ImageReadError, match=r"stack.tif: expected a single-page 2-D image .* multi-page"):
        read_image(tmp_path / "stack.tif")
    root = _folder(tmp_path / "f", real_sample, n=2)
    (root / "masks" / "img0.png").rename(root / "masks" / "img0.jpg")
    with pytest.raises(ImageReadError, match=r"masks must be lossless .*\['img0.jpg'\]"):
        FolderSource(root)
    Image.fromarray(real_sample[0][:10, :10]).save(root / "images" / "img1.tif")
    with pytest.raises(ImageReadError, match="two image files share the stem 'img1': img1.png and img1.tif"):
        FolderSource(root)


# ---------------------------------------------------------------------------------------------- masks
def test_empty_masks_folder(tmp_path, real_sample, dsb_root):
    root = _folder(tmp_path / "folder", real_sample, n=2)
    for p in (root / "masks").iterdir():
        p.unlink()
    with pytest.raises(DataNotFoundError, match=r"masks is empty: no mask for \['img0.png', 'img1.png'\]"):
        FolderSource(root)
    # Kaggle layout: a sample whose masks/ folder is empty fails setup, naming that folder
    kaggle = tmp_path / "kaggle"
    ids = sorted(p.name for p in dsb_root.iterdir())[:4]
    for rid in ids:
        (kaggle / rid / "masks").mkdir(parents=True)
        (kaggle / rid / "images").symlink_to(dsb_root / rid / "images")
        if rid != ids[1]:
            for m in sorted((dsb_root / rid / "masks").iterdir())[:3]:
                (kaggle / rid / "masks" / m.name).symlink_to(m)
    with pytest.raises(ImageReadError, match=rf"{kaggle / ids[1] / 'masks'}: expected one PNG per nucleus, found none"):
        _dm(DSB2018Source(kaggle)).setup("fit")


def test_mask_size_differs_from_image(tmp_path, real_sample):
    root = _folder(tmp_path, real_sample, n=3)
    Image.fromarray(real_sample[1][:40, :56].astype(np.uint16)).save(root / "masks" / "img2.png")
    with pytest.raises(ImageReadError, match=rf"{root / 'masks' / 'img2.png'}: mask is 40x56 but its image "
                                             rf"{root / 'images' / 'img2.png'} is 48x56; expected the same size"):
        _dm(FolderSource(root)).setup("fit")
    with pytest.raises(ImageReadError, match=r"img2.png: mask is 40x56 but its image"):
        FolderSource(root).load("img2")  # the same message when validation is skipped


def test_isbi_label_size_differs(tmp_path, real_sample):
    for d in ("train/images", "train/labels"):
        (tmp_path / d).mkdir(parents=True)
    gray = real_sample[0][..., 0]
    for i in range(3):
        Image.fromarray(gray[:64, :64]).save(tmp_path / "train" / "images" / f"{i}.png")
        Image.fromarray(((real_sample[1][:64, :64] > 0) * 255).astype(np.uint8)).save(
            tmp_path / "train" / "labels" / f"{i}.png")
    Image.fromarray(np.zeros((60, 64), np.uint8)).save(tmp_path / "train" / "labels" / "2.png")
    with pytest.raises(ImageReadError, match=r"labels/2.png: label image is 60x64 but its slice .*images/2.png is "
                                             r"64x64; expected the same size"):
        _dm(ISBI2012Source(tmp_path)).setup("fit")


def test_overlapping_nucleus_masks_keep_the_later_one_and_are_logged(tmp_path, real_sample, caplog):
    image = real_sample[0][:40, :40]
    d = tmp_path / "kaggle" / "abc"
    (d / "images").mkdir(parents=True)
    (d / "masks").mkdir()
    Image.fromarray(image).save(d / "images" / "abc.png")
    a = np.zeros((40, 40), bool)
    b = np.zeros((40, 40), bool)
    a[5:15, 5:15] = True
    b[10:20, 10:20] = True  # 25 pixels shared with a
    Image.fromarray((a * 255).astype(np.uint8)).save(d / "masks" / "a.png")
    Image.fromarray((b * 255).astype(np.uint8)).save(d / "masks" / "b.png")
    with caplog.at_level(logging.WARNING):
        _, labels = DSB2018Source(tmp_path / "kaggle").load("abc")
    assert f"{d / 'masks'}: 25 pixels belong to more than one nucleus mask; kept the later mask" in caplog.text
    assert (labels[10:15, 10:15] == 2).all() and (labels == 1).sum() == 75 and (labels == 2).sum() == 100
    # the same overlap in a solution CSV: later row wins, logged with the CSV and the ImageId
    csv_path = tmp_path / "sol.csv"
    csv_path.write_text(f"ImageId,EncodedPixels,Height,Width,Usage\nabc,{rle_encode(a)},40,40,Public\n"
                        f"abc,{rle_encode(b)},40,40,Public\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, labels_csv = DSB2018SolutionSource(tmp_path / "kaggle", csv_path).load("abc")
    assert "ImageId abc: 25 pixels belong to more than one nucleus; kept the later row" in caplog.text
    assert np.array_equal(labels_csv, labels)


# ---------------------------------------------------------------------------------------------- stray files
def test_stray_non_image_files_are_ignored_and_logged(tmp_path, real_sample, dsb_root, caplog):
    root = _folder(tmp_path / "folder", real_sample, n=2)
    (root / "images" / "README.txt").write_text("notes")
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    (root / "masks" / "labels.csv").write_text("id,count")
    with caplog.at_level(logging.WARNING):
        src = FolderSource(root)
    assert [r.id for r in src.records()] == ["img0", "img1"]
    assert "ignored 1 file(s) that are not images" in caplog.text and "README.txt" in caplog.text
    assert "labels.csv" in caplog.text
    kaggle = tmp_path / "kaggle"
    rid = sorted(p.name for p in dsb_root.iterdir())[0]
    (kaggle / rid / "masks").mkdir(parents=True)
    (kaggle / rid / "images").symlink_to(dsb_root / rid / "images")
    masks = sorted((dsb_root / rid / "masks").iterdir())
    for m in masks:
        (kaggle / rid / "masks" / m.name).symlink_to(m)
    (kaggle / rid / "masks" / "Thumbs.db").write_bytes(b"\0")
    (kaggle / "stage1_train_labels.csv").write_text("ImageId,EncodedPixels\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        src = DSB2018Source(kaggle)
        _, labels = src.load(rid)
        src.load(rid)
    assert labels.max() == len(masks)  # the stray file is not read as a mask
    assert caplog.text.count("Thumbs.db") == 1  # logged once per folder, not on every load
    assert "stage1_train_labels.csv" in caplog.text


# ---------------------------------------------------------------------------------------------- sizes
def test_images_smaller_than_the_crop_are_reflect_padded_and_logged(tmp_path, real_sample, caplog):
    root = _folder(tmp_path, real_sample, n=4, size=(20, 30))
    dm = _dm(FolderSource(root), crop_size=64, val_fraction=0.0, test_fraction=0.0)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "4 training image(s) are smaller than data.crop_size=64 and are reflect-padded" in caplog.text
    assert f"{root / 'images' / 'img0.png'} (20x30)" in caplog.text
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["labels"].shape == (2, 64, 64)
    for i, rid in enumerate(batch["id"]):
        original = set(np.unique(FolderSource(root).load(rid)[1]).tolist())
        assert set(batch["labels"][i].unique().tolist()) <= original


def test_very_large_images_are_logged_by_name_and_not_loaded_up_front(tmp_path, real_sample, caplog):
    root = _folder(tmp_path, real_sample, n=4)
    big = np.zeros((4200, 4000), np.uint8)  # 16.8 megapixels, above the default 16
    big[::50] = 255
    Image.fromarray(big).save(root / "images" / "huge.png", compress_level=1)
    Image.fromarray(np.zeros((4200, 4000), np.uint8)).save(root / "masks" / "huge.png", compress_level=1)
    src = FolderSource(root)
    calls = []
    original_load = src.load
    src.load = lambda rid: calls.append(rid) or original_load(rid)
    with caplog.at_level(logging.WARNING):
        _dm(src).setup("fit")
    assert f"{root / 'images' / 'huge.png'} is 4200x4000 (16.8 megapixels, above data.large_image_mp=16)" in caplog.text
    assert "validation/test/prediction run on the whole image" in caplog.text
    assert calls == []  # validation read headers only
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _dm(FolderSource(root), large_image_mp=20.0).setup("fit")
    assert "megapixels" not in caplog.text


# ---------------------------------------------------------------------------------------------- empty roots
def test_roots_that_exist_but_are_empty(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataNotFoundError, match=rf"data.root: {empty} has no 'images/' folder"):
        FolderSource(empty)
    (empty / "images").mkdir()
    with pytest.raises(DataNotFoundError, match=rf"{empty / 'images'} holds no image files"):
        FolderSource(empty)
    with pytest.raises(DataNotFoundError, match=rf"ISBI 2012 data root {tmp_path / 'empty'} exists but holds "
                                                r"neither train/images/\*.png nor train-volume.tif"):
        ISBI2012Source(empty)
    csv_path = tmp_path / "sol.csv"
    csv_path.write_text("ImageId,EncodedPixels,Height,Width,Usage\nabc,1 1,4,4,Public\n")
    with pytest.raises(DataNotFoundError, match=rf"1 ImageId\(s\) of {csv_path} have no image under {empty}"):
        DSB2018SolutionSource(empty, csv_path)
