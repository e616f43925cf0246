"""Checkpoints from elsewhere: code named by a `_target_`, pickled code, weights that do not fit, files that are
not checkpoints. Each is refused with one CheckpointError line (library) or one line and exit 2 (CLI), and no
code from the file runs. The checkpoints are crafted (`tests.helpers.checkpoints.save_checkpoint`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from nucseg.models.allowlist import disallowed_entries, find_targets, is_allowed_target
from nucseg.models.module import load_module
from nucseg.utils.errors import CheckpointError
from tests.helpers.checkpoints import CONV_NET as CONV
from tests.helpers.checkpoints import save_checkpoint
from tests.helpers.cli import run_module


class RunsCode:
    """Pickled with a reduce hook that would create a file when unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.mknod, (str(self.path),)


@pytest.fixture
def marker(tmp_path) -> Path:
    """A file the crafted checkpoints try to create: it must not exist afterwards."""
    return tmp_path / "code-ran"


def bad_checkpoints(d: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, text the one-line error must contain)."""
    touch = f"touch {marker}"
    return {
        "os.system": (save_checkpoint(d / "system.ckpt", {"_target_": "os.system", "command": touch}),
                      "refused: hyper_parameters.net._target_='os.system' is not an allowed target"),
        "builtins.eval": (save_checkpoint(d / "eval.ckpt", CONV, loss={
            "_target_": "builtins.eval", "_args_": [f"open({str(marker)!r}, 'w')"]}),
            "hyper_parameters.loss._target_='builtins.eval'"),
        # not on Hydra's own block-list: these ran before nucseg had its allow-list
        "builtins.open": (save_checkpoint(d / "open.ckpt", CONV, loss={
            "_target_": "builtins.open", "_args_": [str(marker), "w"]}),
            "hyper_parameters.loss._target_='builtins.open' is not an allowed target"),
        "shutil.copy": (save_checkpoint(d / "copy.ckpt", CONV, loss={
            "_target_": "shutil.copy", "_args_": [__file__, str(marker)]}),
            "hyper_parameters.loss._target_='shutil.copy' is not an allowed target"),
        "nested": (save_checkpoint(d / "nested.ckpt", {**CONV, "padding_mode": {
            "_target_": "subprocess.run", "args": ["touch", str(marker)]}}),
            "hyper_parameters.net.padding_mode._target_='subprocess.run'"),
        "alias": (save_checkpoint(d / "alias.ckpt", {"_target_": "torch.nn.parallel.distributed.os.system",
                                                     "command": touch}),
                  "_target_='torch.nn.parallel.distributed.os.system' is not an allowed target"),
        "interpolation": (save_checkpoint(d / "interp.ckpt", {**CONV, "padding_mode": "${oc.env:HOME}"}),
                          "hyper_parameters.net.padding_mode='${oc.env:HOME}' is an interpolation"),
        "reduce hook": (save_checkpoint(d / "hook.ckpt", RunsCode(marker)),
                        "hook.ckpt: cannot be read as a checkpoint (Trying to load unsupported GLOBAL posix.mknod"),
        "text file": (d / "notes.ckpt", "notes.ckpt: cannot be read as a checkpoint"),
        "image": (d / "image.png", "image.png: cannot be read as a checkpoint"),
        "weights": (save_checkpoint(d / "weights.ckpt", state_dict={"net.weight": torch.zeros(1, 3, 1, 1)}),
                    "1 missing key (net.bias); 0 unexpected keys"),
    }


@pytest.fixture
def crafted(tmp_path, marker) -> dict[str, tuple[Path, str]]:
    (tmp_path / "notes.ckpt").write_text("model trained on 2024-01-01, ask Ann\n")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "image.png")
    return bad_checkpoints(tmp_path, marker)


def test_allow_list_accepts_nucseg_smp_and_torch_nn_classes_only():
    for ok in ("nucseg.models.factory.build_model", "nucseg.losses.BCEDiceLoss", "segmentation_models_pytorch.Unet",
               "torch.nn.Conv2d", "torch.nn.modules.conv.Conv2d"):
        assert is_allowed_target(ok), ok
    for bad in ("os.system", "builtins.eval", "torch.nn.functional.relu", "torch.load",
                "segmentation_models_pytorch.create_model", "torch.nn.parallel.distributed.os.system",
                "nucseg.models.factory.os", "torch.nn.NoSuchLayer", None, 3):
        assert not is_allowed_target(bad), bad
    cfg = {"net": {"_target_": "a", "aux": [{"_target_": "b"}]}, "loss": None}
    assert list(find_targets(cfg)) == [("net", "a"), ("net.aux[0]", "b")]
    assert len(disallowed_entries(cfg)) == 2


def test_valid_crafted_checkpoint_loads(tmp_path):
    module = load_module(save_checkpoint(tmp_path / "ok.ckpt"))
    assert isinstance(module.net, nn.Conv2d) and not module.training


@pytest.mark.parametrize("case", ["os.system", "builtins.eval", "builtins.open", "shutil.copy", "nested", "alias",
                                  "interpolation", "reduce hook", "text file", "image", "weights"])
def test_bad_checkpoints_raise_one_line_and_run_no_code(crafted, marker, case):
    path, expected = crafted[case]
    with pytest.raises(CheckpointError) as info:
        load_module(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(str(path)) and expected in msg, msg
    assert not marker.exists()


def test_cli_refuses_bad_checkpoints_with_exit_2_and_one_line(crafted, marker, tmp_path, dsb_root):
    image = next(p for p in sorted(dsb_root.iterdir()) if p.is_dir()) / "images"
    image = next(image.iterdir())
    # every case is refused in-process above; from the command line, one of code and one of weights (each a
    # new interpreter: seconds on 2 cores)
    for case in ("reduce hook", "weights"):
        path, expected = crafted[case]
        out = tmp_path / f"out-{case.replace(' ', '-')}"
        proc = run_module("nucseg.predict", f"ckpt_path={path}", f"input={image}", f"output={out}",
                          "progress=false", "device=cpu")
        text = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in text, f"{case}: {text[-2000:]}"
        assert len([ln for ln in text.splitlines() if expected in ln]) == 1, f"{case}: {text[-2000:]}"
        assert not (out / "summary.csv").exists() and not marker.exists()
