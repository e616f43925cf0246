"""Mixed precision is a trainer setting: bf16-mixed trains on CPU, with bf16 activations inside autocast and
float32 weights in the checkpoint. (Without validation: bf16 convolutions on a CPU without bf16 instructions
are ~50x slower, and one full-size validation image took minutes of the suite.)"""

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
    cfg = make_cfg([*LEAN, "trainer.precision=bf16-mixed", "logger=csv", "test=false", "trainer.limit_val_batches=0"])
    assert cfg.trainer.precision == "bf16-mixed"
    metrics = train_mod.train(cfg)

    assert dtypes == {torch.bfloat16}  # every training forward ran under bf16 autocast
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert data["train/loss"] == metrics["train/loss"] and 0.0 < data["train/loss"] < 10.0  # finite, not NaN
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["state_dict"]["net.encoder.conv1.weight"].dtype == torch.float32  # fp32 master weights
