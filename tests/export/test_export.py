"""Models that leave nucseg: ONNX / TorchScript equal torch on a real image, the bioimage.io package validates
and passes bioimageio.core's model test offline, nucseg predicts the checkpoint's labels from the package, and
bad requests fail in one line with exit status 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import nucseg
from nucseg.export.network import read_torchscript_metadata
from nucseg.models.module import load_module
from nucseg.utils.errors import CheckpointError, ConfigError
from tests.helpers.checkpoints import train_tiny_checkpoint
from tests.helpers.cli import run_module

NEEDS_EXTRA = "needs the `export` extra: pip install -c requirements/constraints.txt -e '.[export]'"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, data_dir, cache_dir) -> Path:
    return train_tiny_checkpoint(tmp_path_factory.getbasetemp() / "tiny-checkpoint", data_dir, cache_dir)


@pytest.fixture(scope="module")
def image_file(dsb_root) -> Path:
    """A real stage1_train image that is not square (the exports must keep height and width apart)."""
    for d in sorted(p for p in dsb_root.iterdir() if p.is_dir()):
        f = d / "images" / f"{d.name}.png"
        with Image.open(f) as im:
            if im.size[0] != im.size[1]:
                return f
    pytest.fail("no non-square image in stage1_train")


@pytest.fixture(scope="module")
def torch_probs(ckpt, image_file) -> tuple[np.ndarray, np.ndarray]:
    """(x, probs): the image as nucseg prepares it, cropped to multiples of 32, as (1, 3, H, W) in [0, 1];
    and the probabilities of the checkpoint's network for it."""
    predictor = nucseg.Predictor.from_checkpoint(ckpt)
    prepared = predictor.prepare(np.asarray(Image.open(image_file)))
    h, w = (s // 32 * 32 for s in prepared.shape[:2])
    x = torch.from_numpy(prepared[:h, :w].transpose(2, 0, 1).copy()).float().div(255.0)[None]
    with torch.no_grad():
        probs = torch.sigmoid(predictor.module.predict_logits(x))
    assert h != w and probs.shape == (1, 3, h, w) and float(probs.std()) > 1e-3
    return x.numpy(), probs.numpy()


def test_onnx_equals_torch_on_a_real_image(ckpt, torch_probs, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason=NEEDS_EXTRA)
    pytest.importorskip("onnx", reason=NEEDS_EXTRA)
    out = nucseg.export_model(ckpt, "onnx", tmp_path / "m.onnx")
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]  # written atomically: no temporary left
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, ref = torch_probs
    (got,) = session.run(None, {"input": x})
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-4
    shape = session.get_inputs()[0].shape
    assert shape[0] == "batch" and shape[2:] == ["height", "width"]  # dynamic, not the 64x64 of the export
    meta = json.loads(session.get_modelmeta().custom_metadata_map["nucseg"])
    assert meta["output"]["channels"] == ["foreground", "contour", "touching"]
    assert meta["input"]["normalization"]["percentiles"] == {"low": 0.5, "high": 99.8}
    assert meta["postprocess"]["method"] == load_module(ckpt).hparams["postprocess"]["method"]


def test_torchscript_equals_torch_on_a_real_image(ckpt, torch_probs, tmp_path):
    out = nucseg.export_model(ckpt, "torchscript", tmp_path / "m.pt")
    x, ref = torch_probs
    with torch.no_grad():
        got = torch.jit.load(str(out), map_location="cpu")(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape
    assert float(np.abs(got - ref).max()) < 1e-4
    meta = read_torchscript_metadata(out)
    assert meta["output"]["channels"] == ["foreground", "contour", "touching"]
    assert meta["hyper_parameters"]["net"] == json.loads(json.dumps(load_module(ckpt).hparams["net"]))


@pytest.fixture(scope="module")
def package(ckpt, image_file, tmp_path_factory) -> Path:
    pytest.importorskip("bioimageio.spec", reason=NEEDS_EXTRA)
    pytest.importorskip("onnx", reason=NEEDS_EXTRA)
    out = tmp_path_factory.mktemp("package") / "nuclei.zip"
    return nucseg.export_model(ckpt, "bioimageio", out, image=image_file, authors=[{"name": "Test Author"}],
                               training_data="DSB2018 stage1_train, tiny test run")


@pytest.fixture
def offline(monkeypatch):
    """Any network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_package_validates_and_passes_the_bioimageio_model_test_offline(package, ckpt, image_file, offline):
    pytest.importorskip("bioimageio.core", reason=NEEDS_EXTRA)
    pytest.importorskip("onnxruntime", reason=NEEDS_EXTRA)
    from bioimageio.core import test_model
    from bioimageio.spec import InvalidDescr, load_model_description

    descr = load_model_description(package, perform_io_checks=True)
    assert not isinstance(descr, InvalidDescr), descr.validation_summary.format_md()
    summary = test_model(package)  # every weight format: reproduces the test output from the test input
    assert summary.status == "passed", summary.format_md()
    tested = {d.name for d in summary.details if d.status == "passed"}
    for fmt in ("onnx", "torchscript", "pytorch_state_dict"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in tested

    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
        readme = z.read("README.md").decode()
        x = np.load(z.open("input.npy"))
        y = np.load(z.open("output.npy"))
    out_axes = {a["type"]: a for a in rdf["outputs"][0]["axes"]}
    assert out_axes["channel"]["channel_names"] == ["foreground", "contour", "touching"]
    steps = {p["id"]: p.get("kwargs") for p in rdf["inputs"][0]["preprocessing"]}
    scale = {"kwargs": steps["scale_range"]}
    assert scale["kwargs"]["min_percentile"] == 0.5 and steps["clip"] == {"min": 0.0, "max": 1.0}
    assert scale["kwargs"]["max_percentile"] == 99.8 and set(scale["kwargs"]["axes"]) == {"channel", "y", "x"}
    # the test input is the raw image (not normalised); the test output is what nucseg's Predictor computes
    raw = np.asarray(Image.open(image_file))[..., :3].astype(np.float32)
    assert np.array_equal(x[0].transpose(1, 2, 0), raw[: x.shape[2], : x.shape[3]])
    crop = raw[: x.shape[2], : x.shape[3]]
    expected = nucseg.Predictor.from_checkpoint(ckpt).predict(crop.astype(np.uint8)).probs
    assert np.abs(y[0] - expected).max() < 1e-5
    post = load_module(ckpt).hparams["postprocess"]
    assert f"`contour_threshold` | `{post['contour_threshold']}`" in readme
    assert "## Validation" in readme and "val/dice (best checkpoint)" in readme
    run_dice = json.loads((ckpt.parent.parent / "metrics.json").read_text())["val/dice"]  # the run's metrics.json
    assert f"| `val/dice` | `{round(run_dice, 4)}` |" in readme
    assert "DSB2018 stage1_train, tiny test run" in readme
    assert rdf["authors"] == [{"name": "Test Author"}]


def test_nucseg_predicts_the_checkpoint_labels_from_the_package(package, ckpt, image_file, tmp_path):
    image = np.asarray(Image.open(image_file))
    from_ckpt = nucseg.Predictor.from_checkpoint(ckpt).predict(image)
    from_zip = nucseg.Predictor.from_checkpoint(package).predict(image)
    assert from_ckpt.labels.max() > 0
    assert np.array_equal(from_zip.labels, from_ckpt.labels)
    assert np.array_equal(from_zip.probs, from_ckpt.probs)


def test_a_model_trained_with_clahe_is_refused(ckpt, image_file, tmp_path):
    pytest.importorskip("bioimageio.spec", reason=NEEDS_EXTRA)
    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data["hyper_parameters"]["clahe"] = True
    torch.save(data, tmp_path / "clahe.ckpt")
    with pytest.raises(ConfigError, match="trained with CLAHE"):
        nucseg.export_model(tmp_path / "clahe.ckpt", "bioimageio", tmp_path / "m.zip", image=image_file,
                            authors=["x"])
    assert not (tmp_path / "m.zip").exists()


def run_export_cli(*args: str, log_dir: Path) -> subprocess.CompletedProcess:
    return run_module("nucseg.export", f"hydra.run.dir={log_dir}", *args)


def test_cli_exports_and_bad_requests_are_refused_in_one_line(ckpt, tmp_path):
    logs = tmp_path / "logs"
    out = tmp_path / "m.pt"
    proc = run_export_cli(f"ckpt_path={ckpt}", "format=torchscript", f"output={out}", log_dir=logs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file() and "exported" in proc.stdout
    before = out.read_bytes()
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.ckpt")
    # the refusals in-process (the command line's one-line exit 2 for a bad checkpoint is checked for predict in
    # tests/models/test_checkpoint_safety.py: each case there is a new interpreter)
    with pytest.raises(ConfigError, match="exists; choose another path or pass overwrite=true"):
        nucseg.export_model(ckpt, "torchscript", out)
    with pytest.raises(ConfigError, match="format: expected one of bioimageio, onnx, torchscript, got 'keras'"):
        nucseg.export_model(ckpt, "keras", tmp_path / "m.h5")
    with pytest.raises(CheckpointError, match="other.ckpt: not a nucseg checkpoint"):
        nucseg.export_model(tmp_path / "other.ckpt", "torchscript", tmp_path / "n.pt")
    assert out.read_bytes() == before and not (tmp_path / "n.pt").exists()
    nucseg.export_model(ckpt, "torchscript", out, overwrite=True)  # overwrite=true replaces it
    assert out.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["logs", "m.pt", "other.ckpt"]


def test_a_bayesian_model_exports_its_deterministic_pass(ckpt, torch_probs, tmp_path):
    from nucseg.export.docs import readme
    from nucseg.models.mc_dropout import has_mc_dropout

    data = torch.load(ckpt, map_location="cpu", weights_only=True)
    data["hyper_parameters"]["net"]["mc_dropout"] = {"rate": 0.5, "where": "decoder"}
    torch.save(data, tmp_path / "bayes.ckpt")
    module = load_module(tmp_path / "bayes.ckpt")
    assert has_mc_dropout(module.net)
    out = nucseg.export_model(tmp_path / "bayes.ckpt", "torchscript", tmp_path / "bayes.pt")
    x, ref = torch_probs  # the deterministic pass: dropout off, the same weights as the plain checkpoint
    net = torch.jit.load(str(out), map_location="cpu")
    with torch.no_grad():
        a, b = net(torch.from_numpy(x)).numpy(), net(torch.from_numpy(x)).numpy()
        sampled = torch.sigmoid(module.net(torch.from_numpy(x))).numpy()  # MC dropout on: a random draw
    assert np.array_equal(a, b) and float(np.abs(a - ref).max()) < 1e-4
    assert float(np.abs(sampled - ref).max()) > 1e-3
    meta = {"name": "n", "description": "d", "cite": []}
    text = readme(dict(module.hparams), ["foreground", "contour", "touching"], meta, tmp_path / "bayes.ckpt", data)
    assert "Monte-Carlo dropout" in text and "deterministic pass" in text
