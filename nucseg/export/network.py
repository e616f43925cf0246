"""The network as it leaves nucseg: a normalised image in, per-channel probabilities out.

`ExportNetwork` wraps a trained network so that it runs alone, without nucseg's Python code around it:

    input  (N, 3, H, W) float32, the image percentile-normalised and clipped to [0, 1] (H, W multiples of 32)
    output (N, K, H, W) float32 probabilities: foreground (K = 1), or foreground, contour, touching (K = 3)

It first rounds the input to the 256 levels of nucseg's uint8 normalisation (a no-op for `Predictor.prepare(
image) / 255`), so that a float normalisation outside nucseg (bioimage.io's `scale_range`) gives the values
the network was trained on. The sigmoid is inside; MC dropout is off (the deterministic pass).

`write_torchscript` and `write_onnx` store nucseg's settings (normalisation, channel names, post-processing)
with the weights: TorchScript as the extra file `nucseg.json`, ONNX as the metadata property `nucseg`.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from nucseg.models.mc_dropout import set_mc_dropout
from nucseg.utils.atomic import atomic_write_bytes
from nucseg.utils.errors import ConfigError

__all__ = ["ONNX_OPSET", "ExportNetwork", "build_export_network", "channel_names", "export_metadata", "jsonable",
           "read_torchscript_metadata", "write_onnx", "write_torchscript"]

# opset 17: supported by onnxruntime >= 1.11 and by torch's TorchScript-based exporter
ONNX_OPSET = 17
INSTANCE_CHANNELS = ("foreground", "contour", "touching")
# the targets each data.targets trains (nucseg.instances.targets)
TARGET_CHANNELS = {"instance": INSTANCE_CHANNELS, "instance_distance": (*INSTANCE_CHANNELS, "distance")}


class ExportNetwork(nn.Module):
    """normalised image in [0, 1] -> probabilities; see the module docstring."""

    def __init__(self, net: nn.Module, quantize: bool = True):
        super().__init__()
        self.net = net
        self.quantize = quantize
        set_mc_dropout(self.net, False)

    def forward(self, x: Tensor) -> Tensor:
        if self.quantize:
            x = torch.floor(x * 255.0 + 0.5) / 255.0
        return torch.sigmoid(self.net(x))


def build_export_network(net: dict[str, Any], quantize: bool = True) -> ExportNetwork:
    """The architecture callable of a bioimage.io `pytorch_state_dict` entry: `net` is the checkpoint's network
    config (`hyper_parameters.net`, a dict with `_target_`)."""
    import hydra

    return ExportNetwork(hydra.utils.instantiate(dict(net)), quantize=quantize).eval()


def channel_names(hparams: dict[str, Any], classes: int) -> list[str]:
    """Output channel names: foreground / contour / touching (/ distance) for instance models."""
    named = TARGET_CHANNELS.get(str(hparams.get("targets")))
    if named is not None and classes == len(named):
        return list(named)
    return ["foreground"] if classes == 1 else ["foreground", *(f"channel{i}" for i in range(1, classes))]


def export_metadata(hparams: dict[str, Any], classes: int) -> dict[str, Any]:
    """What a user of the bare network needs to reproduce nucseg's prediction (JSON-serialisable)."""
    return jsonable({
        "format": "nucseg-export/1",
        "input": {"axes": "bcyx", "channels": ["red", "green", "blue"], "dtype": "float32",
                  "normalization": {"percentiles": dict(hparams.get("normalization") or {"low": 0.5,
                                                                                          "high": 99.8}),
                                    "joint_over_channels": True, "clip": [0.0, 1.0]},
                  "size_multiple": int(hparams.get("pad_multiple", 32))},
        "output": {"axes": "bcyx", "channels": channel_names(hparams, classes), "activation": "sigmoid"},
        "postprocess": dict(hparams.get("postprocess") or {}),
        "threshold": hparams.get("threshold", 0.5),
        "targets": hparams.get("targets", "binary"),
        "hyper_parameters": dict(hparams),
    })


def jsonable(value: Any) -> Any:
    """Plain JSON / YAML values: dicts, lists, str, numbers, bool, None (tensors and numpy scalars as numbers,
    anything else as its string)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without torch.jit's deprecation warnings (TorchScript is what bioimage.io and many tools read)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _example(module: ExportNetwork, size: int = 64) -> Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def trace(module: ExportNetwork, size: int = 64) -> torch.jit.ScriptModule:
    """TorchScript by tracing (smp networks do not script); the graph is shape-generic for a U-Net."""
    with torch.no_grad(), _quiet():
        return torch.jit.trace(module.eval(), _example(module, size), check_trace=False)


def write_torchscript(module: ExportNetwork, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Trace `module` and write it to `path` atomically, with `metadata` as the extra file nucseg.json."""
    traced = trace(module)
    buf = io.BytesIO()
    with _quiet():
        torch.jit.save(traced, buf, _extra_files={"nucseg.json": json.dumps(metadata)})
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_torchscript_metadata(path: str | Path) -> dict[str, Any]:
    """The nucseg.json stored by `write_torchscript`."""
    extra = {"nucseg.json": ""}
    with _quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra["nucseg.json"])


def write_onnx(module: ExportNetwork, path: str | Path, metadata: dict[str, Any], opset: int = ONNX_OPSET) -> Path:
    """Export `module` to ONNX with dynamic batch, height and width; write it to `path` atomically."""
    try:
        import onnx
    except ImportError as exc:  # the exporter itself needs the onnx package
        raise ConfigError("format=onnx needs the onnx package: pip install -c requirements/constraints.txt "
                          "-e '.[export]'") from exc
    axes = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated (no onnxscript needed)
        tmp_path = Path(tmp) / "model.onnx"
        torch.onnx.export(module.eval(), (_example(module),), str(tmp_path), input_names=["input"],
                          output_names=["probabilities"], dynamic_axes={"input": axes, "probabilities": axes},
                          opset_version=opset, dynamo=False)
        model = onnx.load(str(tmp_path))
    onnx.checker.check_model(model)
    entry = model.metadata_props.add()
    entry.key, entry.value = "nucseg", json.dumps(metadata)
    atomic_write_bytes(path, model.SerializeToString())
    return Path(path)
