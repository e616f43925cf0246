"""module.train_precision (32 / bf16 / auto) and module.channels_last: the choice rule on given timings, and real
short runs whose checkpoints record what was trained."""

from __future__ import annotations

import pytest
import torch

import nucseg.models.train_precision as tp
from nucseg.models.module import SegmentationModule, load_module
from nucseg.train import build_module, train
from nucseg.utils.errors import ConfigError
from tests.helpers.train_cli import LEAN


class _Module:
    """What settle_train_precision reads of a module."""

    def __init__(self, precision: str = "auto"):
        self.net, self.criterion = torch.nn.Conv2d(3, 1, 1), torch.nn.BCEWithLogitsLoss()
        self.train_precision = precision

    def set_train_precision(self, precision: str) -> None:
        self.train_precision = precision


class _Data:
    def train_dataloader(self):
        return [{"image": torch.rand(4, 3, 8, 8), "target": torch.rand(4, 1, 8, 8), "id": ["a"] * 4}] * 6


def _fake_timings(monkeypatch, full: dict[str, float], probe: dict[str, float]) -> list[str]:
    """step_seconds answers from `full`, probe_seconds from `probe`; returns the precisions steps were timed at."""
    calls = []

    def fake_steps(net, criterion, batches, precision, warmup):
        calls.append(precision)
        return full[precision]

    monkeypatch.setattr(tp, "step_seconds", fake_steps)
    monkeypatch.setattr(tp, "probe_seconds", lambda precision, device: probe[precision])
    return calls


@pytest.mark.parametrize(("full", "probe", "chosen", "bf16_timed"), [
    ({"32": 0.63, "bf16": 0.24}, {"32": 0.01, "bf16": 0.006}, "bf16", True),  # a CPU with bf16 instructions
    ({"32": 0.63, "bf16": 0.60}, {"32": 0.01, "bf16": 0.008}, "32", True),  # bf16 not faster enough: float32
    ({"32": 0.63, "bf16": 30.0}, {"32": 0.01, "bf16": 0.5}, "32", False),  # no bf16 unit: the probe stops it
])
def test_auto_keeps_bf16_only_where_it_is_measured_faster(monkeypatch, full, probe, chosen, bf16_timed):
    calls = _fake_timings(monkeypatch, full, probe)
    module = _Module("auto")
    step_s, times = tp.settle_train_precision(module, _Data(), steps=3, warmup=1)
    assert module.train_precision == chosen and step_s == full[chosen]
    assert calls == (["32", "bf16"] if bf16_timed else ["32"])
    assert set(times) == ({"32", "bf16"} if bf16_timed else {"32"})


def test_a_fixed_precision_is_timed_as_it_is(monkeypatch):
    calls = _fake_timings(monkeypatch, {"32": 0.5, "bf16": 0.2}, {"32": 0.01, "bf16": 0.005})
    module = _Module("32")
    assert tp.settle_train_precision(module, _Data()) == (0.5, {"32": 0.5})
    assert calls == ["32"] and module.train_precision == "32"


def test_the_probe_times_both_precisions():
    device = torch.device("cpu")
    assert 0 < tp.probe_seconds("32", device) < 5 and 0 < tp.probe_seconds("bf16", device) < 60


def test_step_seconds_trains_under_the_asked_precision():
    seen = []
    net = torch.nn.Conv2d(3, 1, 1)
    net.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    batches = _Data().train_dataloader()[:3]
    assert tp.step_seconds(net, torch.nn.BCEWithLogitsLoss(), batches, "bf16", warmup=1) > 0
    assert seen == [torch.bfloat16] * 3
    seen.clear()
    tp.step_seconds(net, torch.nn.BCEWithLogitsLoss(), batches, "32", warmup=1)
    assert seen == [torch.float32] * 3


def test_a_bad_precision_names_the_key():
    with pytest.raises(ConfigError, match=r"module.train_precision='fp8': expected one of 32, bf16, auto"):
        SegmentationModule(net={"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 1,
                                "kernel_size": 1}, train_precision="fp8")


def test_bf16_trains_float32_evaluates_and_channels_last_weights_reload(make_cfg, tmp_path, monkeypatch):
    """bf16 autocast in training steps only; validation runs float32; the checkpoint holds float32 NHWC
    weights that load_module restores NHWC and that predict what a plain-layout copy predicts."""
    import nucseg.train as train_mod

    seen: dict[bool, set] = {True: set(), False: set()}

    def build_and_watch(cfg):
        module = build_module(cfg)
        module.net.register_forward_hook(lambda m, i, out: seen[m.training].add(out.dtype))
        return module

    monkeypatch.setattr(train_mod, "build_module", build_and_watch)
    train(make_cfg([*LEAN, "module.train_precision=bf16", "module.channels_last=true", "logger=none",
                    "test=false"]))
    assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    module = load_module(ckpt)
    weight = module.net.encoder.conv1.weight
    assert weight.dtype == torch.float32 and weight.is_contiguous(memory_format=torch.channels_last)
    assert module.hparams["train_precision"] == "bf16"
    plain = load_module(ckpt)
    plain.net.to(memory_format=torch.contiguous_format)
    assert plain.net.encoder.conv1.weight.is_contiguous()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(module.predict_logits(x), plain.predict_logits(x), rtol=1e-4, atol=1e-4)


def test_auto_is_settled_before_training_and_stored(make_cfg, tmp_path):
    train(make_cfg([*LEAN, "module.train_precision=auto", "logger=none", "test=false"]))
    hp = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert hp["train_precision"] in ("32", "bf16")  # what this machine measured faster, never "auto"
