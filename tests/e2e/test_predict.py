"""Prediction on new images: a folder of real DSB2018 images in mixed sizes and formats (one > 2000x2000,
a 16-bit TIFF, a grayscale PNG) plus a corrupt file and a stray text file, with a checkpoint from a short run."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from nucseg.data.io import read_image
from nucseg.data.rle import rle_decode
from nucseg.inference.inputs import list_inputs, unique_stems
from nucseg.inference.predictor import Predictor
from nucseg.inference.tta import tta_mean
from nucseg.models.module import load_module
from nucseg.models.padding import pad_to_multiple
from nucseg.predict import run_predict
from nucseg.uncertainty.sampling import sample_probs
from nucseg.utils.errors import ConfigError
from tests.helpers.checkpoints import train_tiny_checkpoint
from tests.helpers.config import compose_cfg
from tests.helpers.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir, cache_dir) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-checkpoint", data_dir, cache_dir)


def dsb_image(dsb_root: Path, image_id: str) -> np.ndarray:
    return np.asarray(Image.open(dsb_root / image_id / "images" / f"{image_id}.png"))


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory, dsb_root) -> Path:
    """Real images: RGB(A) PNG as released, a grayscale PNG, a 16-bit TIFF, a 2048x2048 mosaic of nine real
    256x256 images; plus a corrupt PNG and a text file."""
    d = tmp_path_factory.mktemp("predict-in")
    ids = sorted(p.name for p in dsb_root.iterdir() if p.is_dir())[:60]
    small = [i for i in ids if dsb_image(dsb_root, i).shape[:2] == (256, 256)]
    other = next(i for i in ids if dsb_image(dsb_root, i).shape[:2] not in ((256, 256),))
    (d / f"{small[0]}.png").write_bytes((dsb_root / small[0] / "images" / f"{small[0]}.png").read_bytes())
    Image.fromarray(dsb_image(dsb_root, small[1])[..., 0]).save(d / "gray.png")
    raw = dsb_image(dsb_root, other)[..., 0].astype(np.uint16)
    tifffile.imwrite(d / "sixteen.tif", raw * 200 + 1000)  # 16-bit counts, offset like a camera
    tiles = [dsb_image(dsb_root, i)[..., :3] for i in small[2:11]]
    rows = [np.concatenate([tiles[(r + c) % 9] for c in range(8)], 1) for r in range(8)]
    Image.fromarray(np.concatenate(rows, 0)).save(d / "mosaic.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image at all")
    (d / "notes.txt").write_text("acquisition notes\n")
    return d


csv.field_size_limit(sys.maxsize)  # a submission row of a large nucleus can exceed the default limit


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def predicted(ckpt, input_dir, tmp_path_factory, data_dir, cache_dir):
    out = tmp_path_factory.mktemp("predict-out")
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"input={input_dir}", f"output={out}", "tile=544", "overlap=0.06",
                       "rle=true", "progress=false", "device=cpu"], out, config_name="predict",
                      data_dir=data_dir, cache_dir=cache_dir)
    report = run_predict(cfg)
    return out, report


EXPECTED = ("gray", "sixteen", "mosaic")  # and the released PNG under its image id


def test_every_image_gets_labels_probability_and_overlay(predicted, input_dir):
    out, report = predicted
    summary = {r["image"]: r for r in read_csv(out / "summary.csv")}
    assert len(summary) == 4 and set(EXPECTED) < set(summary)
    assert list(read_csv(out / "summary.csv")[0]) == ["image", "file", "height", "width", "nucleus_count",
                                                       "mean_area", "certainty", "ood_score", "unlike_training",
                                                       "needs_review", "review_reason", "nonfinite_pixels",
                                                       "warning"]
    for stem, row in summary.items():
        src = Path(row["file"])
        h, w = read_image(src).shape[:2]
        assert (int(row["height"]), int(row["width"])) == (h, w)
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        prob = tifffile.imread(out / f"{stem}_prob.tif")
        overlay = np.asarray(Image.open(out / f"{stem}_overlay.png"))
        assert labels.shape == (h, w) and labels.dtype == np.uint16
        assert prob.shape == (h, w) and prob.dtype == np.float32 and 0.0 <= prob.min() <= prob.max() <= 1.0
        assert overlay.shape == (h, w, 3) and overlay.dtype == np.uint8
        ids = np.unique(labels[labels > 0])
        assert int(row["nucleus_count"]) == ids.size and np.array_equal(ids, np.arange(1, ids.size + 1))
        if ids.size:  # nuclei come from the thresholded probability, and are outlined in the overlay
            assert prob[labels > 0].mean() > 0.5
            assert float(row["mean_area"]) == pytest.approx((labels > 0).sum() / ids.size, rel=1e-5)
        assert row["certainty"] == "" and row["needs_review"] == ""  # the model has no uncertainty method
        assert row["ood_score"] == "" and row["review_reason"] == ""  # nor an OOD density
        assert row["nonfinite_pixels"] == "0" and row["warning"] == ""  # real images: finite, not constant
        assert not (out / f"{stem}_uncertainty.tif").exists()
    assert (summary["mosaic"]["height"], summary["mosaic"]["width"]) == ("2048", "2048")
    assert int(summary["mosaic"]["nucleus_count"]) > 20
    assert len(report.summary) == 4


def test_nuclei_table_matches_the_label_images(predicted):
    out, _ = predicted
    nuclei = read_csv(out / "nuclei.csv")
    assert list(nuclei[0]) == ["image", "nucleus_id", "area", "centroid_y", "centroid_x", "equivalent_diameter",
                               "eccentricity", "mean_intensity"]
    for row in read_csv(out / "summary.csv"):
        labels = tifffile.imread(out / f"{row['image']}_labels.tif")
        mine = [n for n in nuclei if n["image"] == row["image"]]
        assert len(mine) == int(row["nucleus_count"])
        areas = np.bincount(labels.ravel())[1:]
        assert [int(n["area"]) for n in mine] == areas.tolist()
        for n in mine[:5]:
            ys, xs = np.nonzero(labels == int(n["nucleus_id"]))
            assert float(n["centroid_y"]) == pytest.approx(ys.mean(), abs=1e-3)
            assert float(n["centroid_x"]) == pytest.approx(xs.mean(), abs=1e-3)
    # mean_intensity is in the file's own units: 16-bit counts for the TIFF (>= its offset of 1000)
    sixteen = [float(n["mean_intensity"]) for n in nuclei if n["image"] == "sixteen"]
    assert sixteen and min(sixteen) >= 1000


def test_submission_rle_decodes_to_the_labels(predicted):
    out, _ = predicted
    rows = read_csv(out / "submission.csv")
    assert list(rows[0]) == ["ImageId", "EncodedPixels"]
    for s in read_csv(out / "summary.csv"):
        labels = tifffile.imread(out / f"{s['image']}_labels.tif")
        mine = [r["EncodedPixels"] for r in rows if r["ImageId"] == s["image"]]
        assert len(mine) == max(int(s["nucleus_count"]), 1)
        if int(s["nucleus_count"]) == 0:
            assert mine == [""]
            continue
        for k, rle in enumerate(mine[:10], start=1):
            assert np.array_equal(rle_decode(rle, labels.shape), labels == k)


def test_bad_and_stray_files_are_reported_by_name(predicted, input_dir):
    out, report = predicted
    errors = read_csv(out / "errors.csv")
    assert [Path(e["file"]).name for e in errors] == ["corrupt.png"]
    assert "corrupt.png" in errors[0]["error"] and "decode" in errors[0]["error"]
    assert report.skipped == [str(input_dir / "notes.txt")]
    assert not list(out.glob("corrupt*")) and not list(out.glob("notes*"))


def test_list_inputs_and_unique_stems(tmp_path):
    for name in ("a.png", "a.tif", "b.TIFF", "c.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    images, skipped = list_inputs(tmp_path)
    assert [p.name for p in images] == ["a.png", "a.tif", "b.TIFF"] and [p.name for p in skipped] == ["c.txt"]
    assert unique_stems(images) == ["a", "a_tif", "b"]
    with pytest.raises(FileNotFoundError, match="input"):
        list_inputs(tmp_path / "missing")


def test_cli_exits_nonzero_when_nothing_could_be_processed(ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.tif").write_bytes(b"II*\x00garbage")
    (src / "readme.md").write_text("not an image")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "nucseg.predict", f"ckpt_path={ckpt}", f"input={src}",
                           f"output={tmp_path / 'out'}", "progress=false"], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "broken.tif" in proc.stdout + proc.stderr
    assert "skipped" in proc.stdout + proc.stderr and "readme.md" in proc.stdout + proc.stderr
    assert [Path(e["file"]).name for e in read_csv(tmp_path / "out" / "errors.csv")] == ["broken.tif"]
    assert read_csv(tmp_path / "out" / "summary.csv") == []


# ------------------------------------------------------------------ inference options on one real image
@pytest.fixture(scope="module")
def module_and_image(ckpt, dsb_root):
    module = load_module(ckpt)
    image_id = sorted(p.name for p in dsb_root.iterdir())[0]
    # an odd-sized crop: padding to the network's stride and tile edges are exercised
    return module, np.ascontiguousarray(read_image(dsb_root / image_id / "images" / f"{image_id}.png")[:200, :232])


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.transpose(2, 0, 1).copy()).float().div(255)[None]


def test_tta_and_single_tile_match_whole_image_passes(module_and_image):
    module, image = module_and_image
    x = _tensor(image)

    def fn(t):
        return torch.sigmoid(module.predict_logits(t))

    with torch.no_grad():
        plain, _ = Predictor(module, tile=512).probabilities(image)
        torch.testing.assert_close(plain, fn(x), rtol=0, atol=1e-6)
        flips, _ = Predictor(module, tile=512, tta="flips").probabilities(image)
        # TTA runs on the tile, i.e. on the image reflect-padded to the stride
        ref = tta_mean(fn, pad_to_multiple(x, 32)[0], "flips")[..., :200, :232]
        torch.testing.assert_close(flips, ref, rtol=0, atol=1e-6)
        assert not torch.allclose(flips, plain, atol=1e-3)
        tiled, _ = Predictor(module, tile=128, overlap=0.25).probabilities(image)
    assert tiled.shape == plain.shape
    # tiles see less context than the whole image, but agree on most pixels after thresholding
    assert ((tiled[0, 0] > 0.5) == (plain[0, 0] > 0.5)).float().mean() > 0.9
    with pytest.raises(ValueError, match="tta"):
        Predictor(module, tta="rotations")


def test_uncertainty_branch_writes_maps_and_certainty(module_and_image, tmp_path):
    """TTA as the uncertainty method (works for any checkpoint): samples per tile are blended like channels."""
    from nucseg.inference.writers import write_image_outputs

    module, image = module_and_image
    pred = Predictor(module, tile=512, uncertainty={"method": "tta", "tta_ops": "flips",
                                                    "review_threshold": 0.99})
    assert pred.method == "tta" and pred.review_threshold() == 0.99
    probs, samples = pred.probabilities(image)
    assert samples.shape == (3, 1, 3, *image.shape[:2])
    ref = sample_probs(module.net, _tensor(image), "tta", tta_ops="flips")
    torch.testing.assert_close(samples, ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(probs, ref.mean(0), rtol=0, atol=1e-6)
    result = pred.predict(image)
    assert 0.0 <= result.certainty <= 1.0 and result.needs_review == (result.certainty < 0.99)
    assert set(result.uncertainty) == {"entropy", "mutual_info", "variance"}
    write_image_outputs(tmp_path, "x", result)
    stack = tifffile.imread(tmp_path / "x_uncertainty.tif")
    assert stack.shape == (3, *image.shape[:2]) and stack.dtype == np.float32
    assert np.allclose(stack[0], result.uncertainty["entropy"]) and stack[0].max() <= 1.0 + 1e-6
    tiled = Predictor(module, tile=128, overlap=0.25, uncertainty={"method": "tta", "tta_ops": "flips"})
    t_probs, t_samples = tiled.probabilities(image)
    assert t_samples.shape == samples.shape and torch.allclose(t_probs, t_samples.mean(0))


def test_mc_dropout_is_seeded_and_switchable(ckpt, module_and_image):
    from nucseg.models.mc_dropout import add_mc_dropout

    _, image = module_and_image
    bayes = load_module(ckpt)
    add_mc_dropout(bayes.net, rate=0.3)
    a = Predictor(bayes, tile=128, overlap=0.25, uncertainty={"method": "mc_dropout", "samples": 4, "seed": 0})
    _, s1 = a.probabilities(image)
    _, s2 = a.probabilities(image)
    assert s1.shape[0] == 4 and torch.equal(s1, s2)  # same seed, same masks
    assert s1.var(0).max() > 0  # the samples differ from each other
    off = Predictor(bayes, tile=128, overlap=0.25, uncertainty={"method": "none"})
    assert off.method == "none"
    p1, none1 = off.probabilities(image)
    p2, _ = off.probabilities(image)
    assert none1 is None and torch.equal(p1, p2)  # dropout switched off: deterministic


def test_stack_writes_the_probabilities_of_isbi_slices_in_slice_order(ckpt, tmp_path, data_dir):
    """ISBI 2012's results format: one float32 stack; slice 2 before slice 10 although "10.png" sorts first."""
    src = tmp_path / "slices"
    src.mkdir()
    for name in ("10.png", "2.png", "1.png"):
        (src / name).write_bytes((data_dir / "isbi2012" / "test" / "images" / name).read_bytes())
    out = tmp_path / "out"
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"input={src}", f"output={out}", "stack=true", "overlay=false",
                       "progress=false", "device=cpu"], out, config_name="predict", data_dir=data_dir)
    report = run_predict(cfg)
    assert report.errors == []
    stack = tifffile.imread(out / "probabilities.tif")
    assert stack.shape == (3, 512, 512) and stack.dtype == np.float32
    for z, stem in enumerate(("1", "2", "10")):
        np.testing.assert_array_equal(stack[z], tifffile.imread(out / f"{stem}_prob.tif"))
    # an image of another size cannot join the stack: an error row names it, no stack is written
    Image.fromarray(np.zeros((64, 64), np.uint8) + 100).save(src / "3.png")
    out2 = tmp_path / "out2"
    cfg2 = compose_cfg([f"ckpt_path={ckpt}", f"input={src}", f"output={out2}", "stack=true", "overlay=false",
                        "progress=false", "device=cpu"], out2, config_name="predict", data_dir=data_dir)
    report2 = run_predict(cfg2)
    assert not (out2 / "probabilities.tif").exists()
    assert any("3_prob.tif" in e["error"] and "one size" in e["error"] for e in report2.errors)
    assert "probabilities.tif" in read_csv(out2 / "errors.csv")[0]["file"]
    with pytest.raises(ConfigError, match="stack=true with shard"):
        run_predict(compose_cfg([f"ckpt_path={ckpt}", f"input={src}", f"output={out2}", "stack=true",
                                 "shard=0/2"], out2, config_name="predict", data_dir=data_dir))
