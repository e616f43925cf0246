"""A bioimage.io model package (a zip) from a nucseg checkpoint, built with `bioimageio.spec`.

The package holds the network three times (TorchScript, ONNX, and the state dict with `nucseg.export.network.
build_export_network` as its architecture), nucseg's percentile normalisation as bioimage.io pre-processing,
one output per channel name, test tensors from a real image (input: the raw image; output: what nucseg's own
`Predictor` computes for it), a cover image and a README (`nucseg.export.docs`). nucseg's settings
(hyper-parameters: post-processing, uncertainty, ...) are kept under `config.nucseg`, so that
`nucseg.models.bioimageio_reader.load_package_module` rebuilds the same module from the zip.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nucseg.data.io import to_rgb
from nucseg.export import docs
from nucseg.export import network as xnet
from nucseg.inference.predictor import Predictor
from nucseg.models.module import SegmentationModule
from nucseg.utils.atomic import atomic_write_bytes
from nucseg.utils.errors import ConfigError

__all__ = ["build_package", "require_bioimageio"]

TEST_SIZE = 256


def require_bioimageio() -> None:
    """Raise ConfigError (one line, exit 2 from the command line) with the install command when the `export`
    extra is missing."""
    try:
        import bioimageio.spec  # noqa: F401
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"format=bioimageio needs bioimageio.spec and onnx ({exc}); install them with "
                          "pip install -c requirements/constraints.txt -e '.[export]'") from exc


def _test_image(image: np.ndarray, multiple: int) -> np.ndarray:
    """The top-left crop of a real image, sides multiples of `multiple`, at most TEST_SIZE pixels."""
    rgb = to_rgb(np.asarray(image))
    h, w = (min(TEST_SIZE, s) // multiple * multiple for s in rgb.shape[:2])
    if h < multiple or w < multiple:
        raise ConfigError(f"example image: {rgb.shape[:2]} is smaller than {multiple}x{multiple} pixels")
    return rgb[:h, :w]


def _test_tensors(module: SegmentationModule, raw: np.ndarray, tmp: Path) -> tuple[Path, Path, np.ndarray,
                                                                                    np.ndarray]:
    """input.npy (1, 3, H, W) float32 raw intensities; output.npy (1, K, H, W) float32 probabilities as
    nucseg's Predictor computes them (its own uint8 normalisation, its own padding); sample_*.tif likewise."""
    predictor = Predictor(module, device="cpu", tile=max(raw.shape[:2]), uncertainty={"method": "none"})
    prepared = predictor.prepare(raw)
    probs, _ = predictor.probabilities(prepared)
    x = raw.astype(np.float32).transpose(2, 0, 1)[None]
    y = probs.float().numpy()
    np.save(tmp / "input.npy", x)
    np.save(tmp / "output.npy", y)
    import tifffile  # sample tensors: the same arrays as (C, Y, X) TIFFs, for viewers

    tifffile.imwrite(tmp / "sample_input.tif", x[0])
    tifffile.imwrite(tmp / "sample_output.tif", y[0])
    return tmp / "input.npy", tmp / "output.npy", prepared, y[0]


def _authors(entries: Any) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    out = [bio.Author(**({"name": e} if isinstance(e, str) else dict(e))) for e in (entries or [])]
    if not out:
        raise ConfigError("authors: a bioimage.io package needs at least one author, e.g. "
                          "authors='[{name: Jane Doe, affiliation: Lab}]'")
    return out


def _cite(entries: Any) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    return [bio.CiteEntry(**dict(e)) for e in (entries or [])]


def _axes(module: SegmentationModule, names: list[str]) -> tuple[list[Any], list[Any]]:
    from bioimageio.spec.model import v0_5 as bio

    m = int(module.pad_multiple)
    size = bio.ParameterizedSize(min=max(64, m), step=m)
    space_in = [bio.SpaceInputAxis(id=bio.AxisId(a), size=size) for a in ("y", "x")]
    space_out = [bio.SpaceOutputAxis(id=bio.AxisId(a), size=bio.SizeReference(tensor_id=bio.TensorId("raw"),
                                                                              axis_id=bio.AxisId(a)))
                 for a in ("y", "x")]
    rgb = [bio.Identifier(c) for c in ("red", "green", "blue")]
    return ([bio.BatchAxis(), bio.ChannelAxis(channel_names=rgb), *space_in],
            [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in names]), *space_out])


def build_package(module: SegmentationModule, output: Path, image: np.ndarray, meta: dict[str, Any],
                  ckpt_path: Path, ckpt: dict[str, Any]) -> Path:
    """Write the bioimage.io package of `module` to `output` (a .zip); `image` is a real image for the test
    tensors and the cover; `meta` holds name, description, authors, license, cite, tags, training_data."""
    require_bioimageio()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    hp = xnet.jsonable(dict(module.hparams))
    if hp.get("clahe"):
        raise ConfigError(f"{ckpt_path}: the model was trained with CLAHE (clahe=true), which bioimage.io "
                          "pre-processing cannot express; export format=onnx or format=torchscript and apply "
                          "CLAHE (nucseg.data.transforms.preprocessing) before the network")
    classes = int(hp["net"].get("classes", 1))
    names = xnet.channel_names(hp, classes)
    norm = {"low": 0.5, "high": 99.8, **(hp.get("normalization") or {})}
    net = xnet.ExportNetwork(module.net).eval()
    metadata = xnet.export_metadata(hp, classes)
    version = bio.Version(torch.__version__.split("+")[0])
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        raw = _test_image(image, int(module.pad_multiple))
        x_path, y_path, prepared, probs = _test_tensors(module, raw, tmp)
        xnet.write_torchscript(net, tmp / "weights_torchscript.pt", metadata)
        xnet.write_onnx(net, tmp / "weights.onnx", metadata)
        torch.save(net.state_dict(), tmp / "weights_state_dict.pt")
        docs.write_cover(tmp / "cover.png", prepared, probs, hp)
        (tmp / "README.md").write_text(docs.readme(hp, names, meta, ckpt_path, ckpt), encoding="utf-8")
        (tmp / "environment.yaml").write_text(docs.environment_yaml(version), encoding="utf-8")
        in_axes, out_axes = _axes(module, names)
        pre = [bio.ScaleRangeDescr(kwargs=bio.ScaleRangeKwargs(axes=["channel", "y", "x"],
                                                               min_percentile=norm["low"],
                                                               max_percentile=norm["high"])),
               bio.ClipDescr(kwargs=bio.ClipKwargs(min=0.0, max=1.0))]
        inp = bio.InputTensorDescr(
            id=bio.TensorId("raw"), axes=in_axes, test_tensor=bio.FileDescr(source=x_path), preprocessing=pre,
            sample_tensor=bio.FileDescr(source=tmp / "sample_input.tif"),
            description="image, RGB (replicate a gray image to 3 channels), any intensity range",
            data=bio.IntervalOrRatioDataDescr(type="float32"))
        out = bio.OutputTensorDescr(
            id=bio.TensorId("probabilities"), axes=out_axes, test_tensor=bio.FileDescr(source=y_path),
            sample_tensor=bio.FileDescr(source=tmp / "sample_output.tif"),
            description="sigmoid probabilities: " + ", ".join(names),
            data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))
        # the weights come from the state dict: building the network must not download pretrained ones
        arch_net = {**hp["net"], **({"encoder_weights": None} if "encoder_weights" in hp["net"] else {})}
        arch = bio.ArchitectureFromLibraryDescr(callable="build_export_network", import_from="nucseg.export.network",
                                                kwargs={"net": arch_net, "quantize": True})
        weights = bio.WeightsDescr(
            pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
                source=tmp / "weights_state_dict.pt", architecture=arch, pytorch_version=version,
                dependencies=bio.FileDescr(source=tmp / "environment.yaml"),
                comment="needs nucseg installed (the architecture is nucseg.export.network.build_export_network)"),
            torchscript=bio.TorchscriptWeightsDescr(source=tmp / "weights_torchscript.pt", pytorch_version=version,
                                                    parent="pytorch_state_dict", comment="traced"),
            onnx=bio.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=xnet.ONNX_OPSET,
                                      parent="pytorch_state_dict", comment="TorchScript-based torch.onnx exporter"))
        descr = bio.ModelDescr(
            name=meta["name"], description=meta["description"], authors=_authors(meta.get("authors")),
            cite=_cite(meta.get("cite")), license=meta.get("license") or "MIT", tags=list(meta.get("tags") or []),
            covers=[bio.FileDescr(source=tmp / "cover.png")], documentation=bio.FileDescr(source=tmp / "README.md"),
            inputs=[inp], outputs=[out], weights=weights, version=meta.get("version") or "0.1.0",
            config={"nucseg": {"hyper_parameters": hp, "export": metadata["input"]}})
        tmp_zip = tmp / "package.zip"
        save_bioimageio_package(descr, output_path=tmp_zip)
        atomic_write_bytes(output, tmp_zip.read_bytes())
    return output
