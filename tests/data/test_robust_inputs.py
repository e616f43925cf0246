"""Inputs that are silently wrong elsewhere: NaN / inf pixels must not spread through the percentile
normalisation (they are ignored, set to 0 and counted), and a constant image is flagged instead of being
predicted with full certainty. Real DSB2018 images, as float TIFFs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage as ndi

from nucseg.data.io import read_image
from nucseg.data.normalize import normalize, normalize_checked, percentiles_from_counts
from nucseg.inference.predictor import Predictor
from nucseg.predict import run_predict
from tests.helpers.checkpoints import train_tiny_checkpoint
from tests.helpers.config import compose_cfg

PATCH = (slice(60, 100), slice(80, 150))  # 40 x 70 = 2800 pixels


def stretch(values: np.ndarray, arr: np.ndarray, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """The reference: percentiles of `values`, applied to `arr`, into uint8."""
    lo, hi = np.percentile(values.astype(np.float32), [low, high])
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)  # only finite ones are compared
    return (np.clip((arr.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def real_gray(dsb_root) -> np.ndarray:
    """A real 256 x 256 DSB image, first channel, as float32."""
    for d in sorted(p for p in dsb_root.iterdir() if p.is_dir()):
        img = np.asarray(Image.open(d / "images" / f"{d.name}.png"))
        if img.shape[:2] == (256, 256):
            return img[..., 0].astype(np.float32)
    pytest.fail("no 256x256 image in the data")


def test_finite_images_are_normalised_exactly_as_before(real_gray):
    sixteen = (real_gray * 200 + 1000).astype(np.uint16)
    out, check = normalize_checked(sixteen)
    assert np.array_equal(out, stretch(sixteen, sixteen)) and check.clean


def test_8_and_16_bit_images_take_the_histogram_path_with_identical_results(real_gray):
    """uint8 / uint16 go through a histogram and a lookup table; float32 copies of the same values through
    np.percentile and float arithmetic: the outputs must be the same bytes."""
    rng = np.random.default_rng(0)
    images = [real_gray.astype(np.uint8), (real_gray * 200 + 1000).astype(np.uint16),
              np.repeat(real_gray[..., None], 3, -1).astype(np.uint8)]
    for _ in range(300):  # odd sizes, narrow ranges (nearly constant), constant images, full ranges
        dtype = rng.choice([np.uint8, np.uint16])
        top = int(rng.choice([1, 2, 7, 255] + ([4095, 65535] if dtype == np.uint16 else [])))
        shape = tuple(int(v) for v in rng.integers(1, 30, size=int(rng.integers(2, 4))))
        images.append(rng.integers(0, top + 1, size=shape).astype(dtype))
    images.append(np.full((5, 7), 9, np.uint16))
    for img in images:
        fast, check_fast = normalize_checked(img)
        slow, check_slow = normalize_checked(img.astype(np.float32))
        assert fast.dtype == np.uint8 and np.array_equal(fast, slow), (img.dtype, img.shape)
        assert check_fast == check_slow
    assert normalize_checked(images[-1])[1].warning == "constant image"


def test_percentiles_from_a_histogram_equal_numpys():
    rng = np.random.default_rng(1)
    for n in (1, 2, 3, 10, 999):
        values = rng.integers(0, 50, n)
        q = [0.0, 0.5, 37.3, 50.0, 99.8, 100.0]
        got = percentiles_from_counts(np.bincount(values, minlength=50), q)
        assert got == list(np.percentile(values.astype(np.float32), q))


def test_nan_and_inf_are_ignored_by_the_percentiles_set_to_zero_and_counted(real_gray):
    rgb = np.repeat(real_gray[..., None], 3, -1)
    rgb[PATCH] = np.nan
    rgb[0, 0, 1] = np.inf  # one channel of one pixel: one pixel
    rgb[1, 1] = -np.inf
    out, check = normalize_checked(rgb)
    finite = np.isfinite(rgb)
    assert check.nonfinite_pixels == 40 * 70 + 2 and check.warning is None
    assert np.array_equal(out[finite], stretch(rgb[finite], rgb)[finite])
    assert (out[~finite] == 0).all()
    assert out[finite].max() == 255  # the stretch still spans the range


def test_constant_and_nearly_constant_images_are_flagged():
    assert normalize_checked(np.full((32, 32), 7.0))[1].warning == "constant image"
    assert not normalize_checked(np.full((32, 32), 7.0))[0].any()
    almost = np.zeros((100, 100), np.uint16)
    almost[0, :3] = 100  # 3 bright pixels: both percentiles are 0, stretched between min and max instead
    out, check = normalize_checked(almost)
    assert check.warning == "nearly constant image" and out[0, 0] == 255
    assert normalize_checked(np.full((8, 8), np.nan))[1] == type(check)(64, "no finite pixels")


def test_files_read_for_training_log_their_nonfinite_pixels(tmp_path, real_gray, caplog):
    img = real_gray.copy()
    img[PATCH] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", img)
    with caplog.at_level(logging.WARNING, logger="nucseg.data.io"):
        out = read_image(tmp_path / "nan.tif")
    assert (out[PATCH] == 0).all() and (out == normalize(img)[..., None]).all()
    assert f"{tmp_path / 'nan.tif'}: 2800 non-finite pixels (NaN / inf) set to 0" in caplog.text


# ------------------------------------------------------------------ end to end, with a trained checkpoint
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir, cache_dir) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-checkpoint", data_dir, cache_dir)


def read_rows(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def test_a_nan_patch_changes_the_prediction_only_near_the_patch(ckpt, real_gray, tmp_path, data_dir, cache_dir):
    src = tmp_path / "in"
    src.mkdir()
    nan = real_gray.copy()
    nan[PATCH] = np.nan
    tifffile.imwrite(src / "clean.tif", real_gray)
    tifffile.imwrite(src / "nan.tif", nan)
    tifffile.imwrite(src / "blank.tif", np.full((64, 64), 5.0, np.float32))
    out = tmp_path / "out"
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"input={src}", f"output={out}", "progress=false", "device=cpu"], out,
                      config_name="predict", data_dir=data_dir, cache_dir=cache_dir)
    run_predict(cfg)
    rows = read_rows(out / "summary.csv")
    assert rows["nan"]["nonfinite_pixels"] == "2800" and rows["nan"]["warning"] == ""
    assert rows["clean"]["nonfinite_pixels"] == "0" and rows["clean"]["warning"] == ""
    assert rows["blank"]["warning"] == "constant image" and rows["blank"]["needs_review"] == "True"

    # what the network saw: the same image outside the patch (the percentiles move a little), 0 inside
    predictor = Predictor.from_checkpoint(ckpt)
    seen_clean, seen_nan = predictor.prepare(real_gray), predictor.prepare(nan)
    outside = np.ones(real_gray.shape, bool)
    outside[PATCH] = False
    diff = np.abs(seen_clean.astype(int) - seen_nan.astype(int))[outside]
    assert np.percentile(diff, 99) <= 3 and (seen_nan[PATCH] == 0).all()

    # the prediction: identical away from the patch (the network's receptive field reaches a little beyond)
    far = ~ndi.binary_dilation(~outside, iterations=16)
    prob_clean, prob_nan = (tifffile.imread(out / f"{s}_prob.tif") for s in ("clean", "nan"))
    assert prob_clean.std() > 0.01  # a real probability map, not a constant
    assert np.abs(prob_clean - prob_nan)[far].mean() < 0.02
    fg_clean, fg_nan = (tifffile.imread(out / f"{s}_labels.tif") > 0 for s in ("clean", "nan"))
    assert (fg_clean == fg_nan)[far].mean() > 0.97
