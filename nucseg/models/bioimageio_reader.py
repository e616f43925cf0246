"""Read a bioimage.io package written by nucseg back into a nucseg module: `python -m nucseg.predict
ckpt_path=<zip>` and `Predictor.from_checkpoint(<zip>)` then predict exactly as from the checkpoint.

Needs neither bioimageio.spec nor the network code from the zip: the network is rebuilt from the
hyper-parameters kept under `config.nucseg` and the state-dict weights are loaded strictly, with
`weights_only=True`.
"""

from __future__ import annotations

import inspect
import io
import zipfile
from pathlib import Path
from typing import Any

import torch

from nucseg.models.module import SegmentationModule
from nucseg.utils.errors import CheckpointError

__all__ = ["is_package", "load_package_module", "read_rdf"]

RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def is_package(path: str | Path) -> bool:
    """A zip file (by content) with a bioimage.io description at its root."""
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    return any(n in names for n in RDF_NAMES) or any(n.endswith(".bioimageio.yaml") for n in names)


def read_rdf(path: str | Path) -> dict[str, Any]:
    """The package's description (rdf.yaml) as a dict."""
    import yaml

    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        name = next((n for n in names if n in RDF_NAMES or n.endswith(".bioimageio.yaml")), None)
        if name is None:
            raise CheckpointError(f"{path}: a zip without rdf.yaml / bioimageio.yaml, not a bioimage.io package")
        return yaml.safe_load(z.read(name))


def load_package_module(path: str | Path) -> SegmentationModule:
    """The nucseg module of a package exported by nucseg (see `nucseg.export`); CheckpointError otherwise."""
    path = Path(path)
    rdf = read_rdf(path)
    hp = ((rdf.get("config") or {}).get("nucseg") or {}).get("hyper_parameters")
    weights = ((rdf.get("weights") or {}).get("pytorch_state_dict") or {}).get("source")
    if not isinstance(hp, dict) or "net" not in hp or not weights:
        raise CheckpointError(f"{path}: a bioimage.io package not exported by nucseg (no config.nucseg."
                              "hyper_parameters or no pytorch_state_dict weights); nucseg predicts only from its "
                              "own packages")
    with zipfile.ZipFile(path) as z:
        try:
            state = torch.load(io.BytesIO(z.read(str(weights))), map_location="cpu", weights_only=True)
        except Exception as exc:  # a missing member, or a file torch cannot read
            raise CheckpointError(f"{path}: cannot read its state-dict weights {weights!r} ({exc})") from exc
    accepted = set(inspect.signature(SegmentationModule.__init__).parameters) - {"self"}
    module = SegmentationModule(**{k: v for k, v in hp.items() if k in accepted})
    net_state = {k.removeprefix("net."): v for k, v in state.items()}
    try:
        module.net.load_state_dict(net_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not fit the network its config describes ({exc})"[:600]
                              ) from exc
    return module.eval()
