"""Models that leave the framework: a nucseg checkpoint as a bioimage.io package, ONNX or TorchScript.

    import nucseg
    nucseg.export_model("runs/x/checkpoints/model.ckpt", "bioimageio", "nuclei.zip", image="img.png",
                        authors=[{"name": "Jane Doe"}])
    nucseg.export_model("model.ckpt", "onnx", "nuclei.onnx")

`python -m nucseg.export ckpt_path=... format=bioimageio|onnx|torchscript output=...` is the same from the
command line. What each format keeps:

- bioimageio: a zip for bioimage.io tools (deepImageJ, ilastik, napari, bioimageio.core) with TorchScript,
  ONNX and state-dict weights, nucseg's percentile normalisation as pre-processing, named output channels,
  test tensors from a real image, a cover and a README (post-processing settings, scores, citation). nucseg
  predicts from it like from the checkpoint (`nucseg.predict ckpt_path=<zip>`).
- onnx / torchscript: the bare network (`nucseg.export.network`): a normalised (N, 3, H, W) image in [0, 1]
  in, (N, K, H, W) probabilities out; nucseg's settings ride along as metadata (ONNX metadata property /
  TorchScript extra file `nucseg`.json). Normalisation, tiling and instance post-processing are the caller's.
All formats hold the deterministic network: MC-dropout sampling, ensembles and TTA stay in nucseg.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nucseg.data.io import read_raw
from nucseg.utils.errors import ConfigError

__all__ = ["DEFAULT_CITE", "FORMATS", "check_request", "export_model"]

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"bioimageio": (".zip",), "onnx": (".onnx",), "torchscript": (".pt", ".pth", ".torchscript")}
DEFAULT_CITE = (
    {"text": "Caicedo et al. (2019) Nucleus segmentation across imaging experiments: the 2018 Data Science "
             "Bowl. Nature Methods 16, 1247-1253", "doi": "10.1038/s41592-019-0612-7"},
    {"text": "Ronneberger, Fischer, Brox (2015) U-Net: convolutional networks for biomedical image "
             "segmentation. MICCAI", "doi": "10.1007/978-3-319-24574-4_28"},
)


def check_request(format: str, output: str | Path, overwrite: bool = False) -> Path:
    """Validate the format and the output path before any work; raise ConfigError with one clear line."""
    if format not in FORMATS:
        raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(output)
    if out.suffix.lower() not in SUFFIXES[format]:
        raise ConfigError(f"output: a {format} export is written to a {' / '.join(SUFFIXES[format])} file, got "
                          f"{str(out)!r}")
    if out.exists() and not overwrite:
        raise ConfigError(f"output: {out} exists; choose another path or pass overwrite=true")
    if out.is_dir():
        raise ConfigError(f"output: {out} is a directory")
    return out


def _image(image: np.ndarray | str | Path | None) -> np.ndarray:
    if image is None:
        raise ConfigError("image: format=bioimageio needs a real image for its test tensors and cover "
                          "(image=path/to/image.png)")
    return read_raw(image) if isinstance(image, str | Path) else np.asarray(image)


def export_model(ckpt_path: str | Path, format: str = "bioimageio", output: str | Path | None = None, *,
                 overwrite: bool = False, image: np.ndarray | str | Path | None = None, name: str | None = None,
                 description: str | None = None, authors: Sequence[dict[str, Any] | str] | None = None,
                 license: str = "MIT", cite: Sequence[dict[str, Any]] | None = None,
                 tags: Sequence[str] | None = None, training_data: str | None = None,
                 version: str = "0.1.0") -> Path:
    """Export a checkpoint written by `nucseg.train` as a bioimage.io package, ONNX or TorchScript.

    Args:
        ckpt_path: the checkpoint (e.g. `<run>/checkpoints/model.ckpt`).
        format: bioimageio, onnx or torchscript (`FORMATS`).
        output: the file to write (atomically).
        overwrite: replace an existing `output`.
        image: bioimageio only, like every argument below: an array or an image file for the test tensors and
            the cover.
        name: the model's name.
        description: one paragraph on what the model does.
        authors: dicts with name, affiliation, orcid, github_user, or plain names.
        license: an SPDX id.
        cite: dicts with text and doi or url (default: the DSB2018 and U-Net papers).
        tags: bioimage.io tags.
        training_data: free text for the package's README.
        version: the package's version.

    Returns:
        The path written.

    Raises:
        ConfigError: a bad argument, or the `export` extra (bioimageio.spec, onnx) missing.
        CheckpointError: a checkpoint that is not nucseg's or does not load.

    Example:
        >>> from nucseg import export_model
        >>> export_model("outputs/train/runs/<run>/checkpoints/model.ckpt", "onnx", "model.onnx")  # doctest: +SKIP
        PosixPath('model.onnx')
    """
    # lazy: a bad request (format, output) fails in a second, before torch and the models load
    import torch

    from nucseg.models.module import load_module

    if output is None:
        raise ConfigError("output: where to write the export (e.g. output=model.zip)")
    out = check_request(format, output, overwrite)
    module = load_module(ckpt_path)
    hp = dict(module.hparams)
    classes = int((hp.get("net") or {}).get("classes", 1))
    if format == "bioimageio":
        from nucseg.export.bioimageio import build_package, require_bioimageio  # the `export` extra's code

        require_bioimageio()
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        net = hp.get("net") or {}
        meta = {"name": name or f"nucseg {net.get('arch', 'unet')} {net.get('encoder_name', '')} nuclei".strip(),
                "description": description or (
                    "Nucleus segmentation (foreground, contour and touching-border probabilities)" if classes == 3
                    else "Nucleus segmentation (foreground probability)") + " trained with nucseg.",
                "authors": list(authors or []), "license": license,
                "cite": [dict(c) for c in (DEFAULT_CITE if cite is None else cite)],
                "tags": list(tags if tags is not None else ["nuclei", "segmentation", "fluorescence-light-microscopy",
                                                            "instance-segmentation", "2d", "pytorch", "unet"]),
                "training_data": training_data, "version": version}
        return build_package(module, out, _image(image), meta, Path(ckpt_path), ckpt)
    from nucseg.export.network import ExportNetwork, export_metadata, write_onnx, write_torchscript  # torch, as above

    net = ExportNetwork(module.net).eval()
    meta_json = export_metadata(hp, classes)
    if format == "onnx":
        return write_onnx(net, out, meta_json)
    return write_torchscript(net, out, meta_json)
