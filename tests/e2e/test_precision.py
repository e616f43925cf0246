"""Mixed precision is a trainer setting: bf16-mixed runs end to end on CPU, with bf16 activations inside
autocast and float32 weights in the checkpoint."""

from __future__ import annotations

import json

import torch

import nucseg.train as train_mod
from tests.helpers.train_cli import LEAN


def test_bf16_mixed_on_cpu(make_cfg, tmp_path, monkeypatch):
    dtypes: set[torch.dtype] = set()
    build = train_mod.build_module

    def build_and_watch(cfg):
        module = build(cfg)
        module.net.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype) if m.training else None)
        return module

    monkeypatch.setattr(train_mod, "build_module", build_and_watch)
    cfg = make_cfg([*LEAN, "trainer.precision=bf16-mixed", "logger=csv", "test=false"])
    assert cfg.trainer.precision == "bf16-mixed"
    metrics = train_mod.train(cfg)

    assert dtypes == {torch.bfloat16}  # every training forward ran under bf16 autocast
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("val/dice", "val/loss", "train/loss"):
        assert data[key] == metrics[key] and data[key] is not None and data[key] == data[key], key
    assert 0.0 <= data["val/dice"] <= 1.0
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["state_dict"]["net.encoder.conv1.weight"].dtype == torch.float32  # fp32 master weights
