"""`nucseg.Predictor` as a library, on real DSB2018 images and the checkpoint of a short real run: the same
labels as `python -m nucseg.predict`, overrides of the checkpoint's settings, strict checkpoint loading, and
per-file errors from `predict_files`."""

from __future__ import annotations

import csv
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import nucseg
from nucseg.instances.watershed import probs_to_instances
from nucseg.models.module import load_module
from nucseg.utils.errors import CheckpointError, ConfigError, ImageReadError
from tests.helpers.checkpoints import train_tiny_checkpoint
from tests.helpers.cli import run_module
from tests.helpers.paths import PROJECT_ROOT


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir, cache_dir) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-checkpoint", data_dir, cache_dir)


@pytest.fixture(scope="module")
def image_files(dsb_root) -> list[Path]:
    """Two real stage1_train images as released (RGBA PNG), read in place."""
    ids = sorted(p.name for p in dsb_root.iterdir() if p.is_dir())[:2]
    return [dsb_root / i / "images" / f"{i}.png" for i in ids]


@pytest.fixture(scope="module")
def predictor(ckpt) -> nucseg.Predictor:
    return nucseg.Predictor.from_checkpoint(ckpt)


def run_predict_cli(*args: str) -> subprocess.CompletedProcess:
    return run_module("nucseg.predict", "progress=false", *args)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def rewrite_checkpoint(src: Path, dst: Path, edit) -> Path:
    """A copy of the checkpoint `src` after `edit(ckpt_dict)`."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_library_matches_the_cli_on_a_real_image(ckpt, image_files, predictor, tmp_path):
    src = image_files[0]
    proc = run_predict_cli(f"ckpt_path={ckpt}", f"input={src}", f"output={tmp_path}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    stem = src.stem

    r = predictor.predict(np.asarray(Image.open(src)))  # as a notebook reads it: RGBA uint8
    cli_labels = tifffile.imread(tmp_path / f"{stem}_labels.tif")
    assert r.labels.shape == cli_labels.shape == np.asarray(Image.open(src)).shape[:2]
    assert np.array_equal(r.labels, cli_labels)
    assert np.array_equal(r.probability, tifffile.imread(tmp_path / f"{stem}_prob.tif"))
    (row,) = read_csv(tmp_path / "summary.csv")
    assert int(row["nucleus_count"]) == len(r.nuclei) == int(r.labels.max()) > 0
    assert float(row["mean_area"]) == pytest.approx(r.summary()["mean_area"], abs=1e-5)
    cli_nuclei = read_csv(tmp_path / "nuclei.csv")
    assert [int(n["area"]) for n in cli_nuclei] == [n["area"] for n in r.nuclei]
    assert [float(n["mean_intensity"]) for n in cli_nuclei] == pytest.approx(
        [n["mean_intensity"] for n in r.nuclei], abs=1e-5)
    # the shapes and types the docstrings promise
    assert r.labels.dtype == np.int32 and r.probs.dtype == np.float32 and r.probs.shape[1:] == r.labels.shape
    assert r.image.dtype == np.uint8 and r.image.shape == (*r.labels.shape, 3)
    assert r.certainty is None and r.needs_review is None and r.uncertainty == {}
    assert set(r.nuclei[0]) == {"nucleus_id", "area", "centroid_y", "centroid_x", "equivalent_diameter",
                                "eccentricity", "mean_intensity"}


def test_arguments_override_the_checkpoint_settings(ckpt, image_files, predictor):
    image = np.asarray(Image.open(image_files[0]))
    stored = dict(load_module(ckpt).hparams["postprocess"])
    assert predictor.postprocess == stored and stored["method"] == "watershed"
    base = predictor.predict(image)
    areas = sorted(n["area"] for n in base.nuclei)
    min_size = areas[len(areas) // 2] + 1  # drops at least half of the nuclei

    bigger = nucseg.Predictor.from_checkpoint(ckpt, postprocess={"min_size": min_size, "threshold": None})
    # merged key by key: the other stored settings (watershed, thresholds) stay, None keeps the stored value
    assert bigger.postprocess == {**stored, "min_size": min_size}
    r = bigger.predict(image)
    assert np.array_equal(r.probs, base.probs)
    assert 0 < len(r.nuclei) <= len(base.nuclei) // 2 + 1 and min(n["area"] for n in r.nuclei) >= min_size
    assert np.array_equal(r.labels, probs_to_instances(base.probs, **{**stored, "min_size": min_size}))

    unsure = nucseg.Predictor.from_checkpoint(ckpt, uncertainty={"method": "tta", "tta_ops": "flips",
                                                                 "review_threshold": 0.99})
    u = unsure.predict(image)
    assert set(u.uncertainty) == {"entropy", "mutual_info", "variance"}
    assert 0.0 <= u.certainty <= 1.0 and u.needs_review == (u.certainty < 0.99) and u.review_threshold == 0.99


def test_predict_files_reports_a_bad_file_and_goes_on(predictor, image_files, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image at all")
    paths = [image_files[0], corrupt, image_files[1], tmp_path / "missing.tif"]
    results = list(predictor.predict_files(paths))
    assert [p for p, _ in results] == paths
    for (path, result), ok in zip(results, (True, False, True, False), strict=True):
        if ok:
            assert isinstance(result, nucseg.Prediction)
            assert np.array_equal(result.labels, predictor.predict(np.asarray(Image.open(path))).labels)
        else:
            assert isinstance(result, ImageReadError) and path.name in str(result)


def test_to_dataframe_or_a_clear_import_error(predictor, image_files):
    r = predictor.predict(np.asarray(Image.open(image_files[0]))[..., 0])  # grayscale works too
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="Prediction.nuclei"):
            r.to_dataframe()
    else:
        df = r.to_dataframe()
        assert len(df) == len(r.nuclei) and df["area"].tolist() == [n["area"] for n in r.nuclei]


# ------------------------------------------------------------------ strict checkpoints
def test_renamed_weights_raise_an_error_naming_the_keys(ckpt, tmp_path, image_files):
    decoder = [k for k in load_module(ckpt).state_dict() if k.startswith("net.decoder.")]

    def rename(c: dict) -> None:
        c["state_dict"] = {k.replace("net.decoder.", "net.dec."): v for k, v in c["state_dict"].items()}

    bad = rewrite_checkpoint(ckpt, tmp_path / "renamed.ckpt", rename)
    with pytest.raises(CheckpointError) as info:
        nucseg.Predictor.from_checkpoint(bad)
    msg = str(info.value)
    assert isinstance(info.value, ValueError) and "\n" not in msg
    assert str(bad) in msg and f"{len(decoder)} missing keys ({decoder[0]}, " in msg
    assert f"{len(decoder)} unexpected keys (net.dec." in msg

    out = tmp_path / "out"
    proc = run_predict_cli(f"ckpt_path={bad}", f"input={image_files[0]}", f"output={out}")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-2000:]
    assert "Traceback" not in text
    (line,) = [line for line in text.splitlines() if "do not fit" in line]  # one line, naming file and key
    assert str(bad) in line and decoder[0] in line
    assert not (out / "summary.csv").exists()


class RunsCode:
    """Pickled with a reduce hook that would create a folder when unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (str(self.path),)


def test_other_bad_checkpoints_raise_a_checkpoint_error(ckpt, tmp_path, image_files):
    key = "net.segmentation_head.0.weight"

    def reshape(c: dict) -> None:
        c["state_dict"][key] = c["state_dict"][key][:1]

    with pytest.raises(CheckpointError, match=rf"size mismatch for {key}"):
        load_module(rewrite_checkpoint(ckpt, tmp_path / "shape.ckpt", reshape))
    with pytest.raises(CheckpointError, match="cannot be read as a checkpoint"):
        load_module(image_files[0])
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {}, "hyper_parameters": {"net": RunsCode(marker)}}, tmp_path / "hook.ckpt")
    with pytest.raises(CheckpointError, match=r"hook.ckpt: cannot be read as a checkpoint \(.*GLOBAL posix.mkdir"):
        load_module(tmp_path / "hook.ckpt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_module(tmp_path / "missing.ckpt")


def test_bad_arguments_raise_one_config_error_before_the_checkpoint_is_read(ckpt, image_files, tmp_path):
    not_a_ckpt = image_files[0]  # read first, this would raise a CheckpointError instead
    for kwargs, expected in ((dict(tile=100), "tile=100: expected a positive multiple of 32"),
                             (dict(overlap=1.5), "overlap=1.5: expected a fraction of a tile"),
                             (dict(device="gpu"), "device='gpu': expected auto, cpu, cuda"),
                             (dict(tile_batch_size=0), "tile_batch_size=0: expected an integer >= 1"),
                             (dict(postprocess={"threshold": 1.0}), "postprocess.threshold=1.0: expected a number"),
                             (dict(uncertainty={"samples": 0}), "uncertainty.samples=0: expected an integer >= 1")):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            nucseg.Predictor.from_checkpoint(not_a_ckpt, **kwargs)
    with pytest.raises(ConfigError, match="ckpt_path=.*missing.ckpt.*: expected an existing checkpoint file"):
        nucseg.Predictor.from_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="overlap=-0.1"):  # the constructor checks too
        nucseg.Predictor(load_module(ckpt), overlap=-0.1)


def test_a_checkpoint_without_its_tuned_settings_is_named(ckpt, tmp_path, caplog):
    """last.ckpt of a postprocess=auto run holds `tune: true` but no tuned values: say so, and which file to use."""
    def untuned(c: dict) -> None:
        c["hyper_parameters"]["postprocess"] = {"method": "auto", "threshold": 0.5, "tune": True}

    path = rewrite_checkpoint(ckpt, tmp_path / "last.ckpt", untuned)
    with caplog.at_level("WARNING"):
        nucseg.Predictor.from_checkpoint(path)
    assert "holds no tuned values" in caplog.text and "checkpoints/model.ckpt" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        nucseg.Predictor.from_checkpoint(path, postprocess={"threshold": 0.6})  # the user chose: no warning
    assert "tuned" not in caplog.text


def test_import_nucseg_is_light_and_exports_the_api():
    assert nucseg.__all__ == ["Prediction", "Predictor", "__version__", "export_model"]
    assert nucseg.__version__ == importlib.metadata.version("nucseg")
    code = "import sys, nucseg; assert 'torch' not in sys.modules; nucseg.Predictor; assert 'torch' in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_checkpoints_ood_density_and_temperature_flag_and_calibrate(ckpt, image_files, dsb_root, tmp_path):
    from nucseg.metrics.calibration import apply_temperature
    from nucseg.uncertainty.ood import FeatureDensity, encoder_features

    base = nucseg.Predictor.from_checkpoint(ckpt)
    others = sorted(p.name for p in dsb_root.iterdir() if p.is_dir())[2:8]

    def features(path: Path) -> torch.Tensor:
        prepared = base.prepare(np.asarray(Image.open(path)))
        return encoder_features(base.module.net, torch.from_numpy(prepared).permute(2, 0, 1)[None].float() / 255)

    density = FeatureDensity.fit(torch.cat([features(dsb_root / i / "images" / f"{i}.png") for i in others]), 3, 2)
    scores = density.score(torch.cat([features(p) for p in image_files]))
    threshold = float(scores.mean())  # one image of the two above, one below
    assert scores.min() < threshold < scores.max()

    def edit(c: dict) -> None:
        c["hyper_parameters"]["ood"] = {"density": density.to_dict(), "threshold": threshold}
        c["hyper_parameters"]["calibration"] = {"temperature": 2.0, "temperature_unlike": 3.0}

    trusted = rewrite_checkpoint(ckpt, tmp_path / "trusted.ckpt", edit)
    p = nucseg.Predictor.from_checkpoint(trusted)
    results = [p.predict(np.asarray(Image.open(f))) for f in image_files]
    for r, s in zip(results, scores, strict=True):
        # the features read off the prediction's own pass are those the density was fitted on
        assert r.ood_score == pytest.approx(float(s), rel=1e-4)
        assert r.unlike_training == (s > threshold) == r.needs_review  # no uncertainty method: OOD alone flags
        assert r.review_reason == ("unlike the training data" if s > threshold else "")
        assert r.ood_threshold == pytest.approx(threshold) and r.review_threshold is None
    # the temperature calibrates the probability written out (an image unlike the training data gets the
    # perturbed copies' temperature); masks come from the uncalibrated probabilities
    for r, f in zip(results, image_files, strict=True):
        plain = base.predict(np.asarray(Image.open(f)))
        assert np.array_equal(r.labels, plain.labels) and np.array_equal(r.probs, plain.probs)
        assert r.temperature == (3.0 if r.unlike_training else 2.0)
        expected = apply_temperature(torch.from_numpy(plain.probs[0]), r.temperature).numpy()
        assert np.allclose(r.probability, expected, atol=1e-6)
        assert not np.allclose(r.probability, plain.probability, atol=1e-3)

    off = nucseg.Predictor.from_checkpoint(trusted, ood_threshold="off").predict(np.asarray(Image.open(image_files[0])))
    assert off.ood_score is None and off.needs_review is None
    with pytest.raises(ConfigError, match="ood_threshold"):
        nucseg.Predictor.from_checkpoint(trusted, ood_threshold=-1)
    broken = rewrite_checkpoint(trusted, tmp_path / "broken.ckpt",
                                lambda c: c["hyper_parameters"]["ood"]["density"].pop("components"))
    with pytest.raises(CheckpointError, match="ood.density"):
        nucseg.Predictor.from_checkpoint(broken)

    # the CLI: the reason in summary.csv, and a review figure for the flagged image only
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for f in image_files:
        shutil.copy(f, inputs / f.name)
    proc = run_predict_cli(f"ckpt_path={trusted}", f"input={inputs}", f"output={out}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["image"]: r for r in read_csv(out / "summary.csv")}
    for f, s in zip(image_files, scores, strict=True):
        row = rows[f.stem]
        assert float(row["ood_score"]) == pytest.approx(float(s), rel=1e-4)
        assert row["needs_review"] == str(bool(s > threshold)) and row["unlike_training"] == str(bool(s > threshold))
        assert (out / f"{f.stem}_review.png").is_file() == bool(s > threshold)
