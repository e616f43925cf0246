"""`module.train_precision`: float32 (`32`), bf16 autocast (`bf16`), or `auto`: bf16 where this machine runs
it faster.

bf16 convolutions ran 2.6x faster than float32 (with channels-last weights) on one 2-core CPU with AVX512-BF16
and 8-50x slower on ones without (experiments/bench_train_step.py), and machines of one kind differ, so `auto`
measures instead of assuming: a one-convolution probe first (a machine without bf16 loses seconds, not
minutes), then real training steps in both precisions. Only training steps use it: validation, test, evaluate and
predict run float32, so a run's test metrics are what `evaluate` and `predict` compute from its checkpoint.
"""

from __future__ import annotations

import copy
import itertools
import logging
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from nucseg.utils.errors import ConfigError

__all__ = ["PRECISIONS", "bf16_pays", "check_train_precision", "probe_seconds", "settle_train_precision",
           "step_seconds", "train_autocast"]

log = logging.getLogger(__name__)

PRECISIONS = ("32", "bf16", "auto")
# bf16 is chosen only when at least this much faster: its rounding is a (small) cost, a few % of speed is not
MIN_SPEEDUP = 1.15


def bf16_pays(seconds_32: float, seconds_bf16: float) -> bool:
    """Whether bf16 is worth choosing: at least MIN_SPEEDUP times faster than float32."""
    return seconds_32 / seconds_bf16 >= MIN_SPEEDUP


def check_train_precision(value: Any) -> str:
    """'32', 'bf16' or 'auto' (YAML's 32 reads as an int)."""
    text = str(value)
    if text not in PRECISIONS:
        raise ConfigError(f"module.train_precision={value!r}: expected one of 32, bf16, auto")
    return text


def train_autocast(x: Tensor, precision: str) -> AbstractContextManager:
    """The context of a training forward at `precision`: bf16 autocast for 'bf16', else nothing (not a disabled
    autocast, which would switch off the trainer's own, e.g. trainer.precision=bf16-mixed)."""
    if precision == "bf16":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return nullcontext()


def step_seconds(net: torch.nn.Module, criterion: torch.nn.Module, batches: Iterable[dict], precision: str,
                 warmup: int) -> float:
    """Mean seconds per optimizer step (forward, loss, backward, AMSGrad step) over `batches` after the first
    `warmup`. `net` is trained by it: pass a copy."""
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, amsgrad=True)
    start, n = time.perf_counter(), 0
    for i, batch in enumerate(batches):
        if i == warmup:
            start, n = time.perf_counter(), 0
        with train_autocast(batch["image"], precision):
            logits = net(batch["image"])
        loss = criterion(logits.float(), batch["target"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += 1
    return (time.perf_counter() - start) / max(n, 1)


def probe_seconds(precision: str, device: torch.device, repeats: int = 3) -> float:
    """Best-of-`repeats` seconds of one 3x3 convolution's forward and backward (4 x 64 x 64 x 64, NHWC) at
    `precision`: tens of milliseconds, and only seconds where bf16 is emulated. (A network step on two crops
    is no probe: at that size per-operator overhead hides a 2x bf16 gain.)"""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).to(device).to(memory_format=torch.channels_last)
    x = torch.rand(4, 64, 64, 64, device=device).to(memory_format=torch.channels_last).requires_grad_()
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up
        start = time.perf_counter()
        with train_autocast(x, precision):
            y = conv(x)
        y.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def settle_train_precision(module: Any, datamodule: Any, steps: int = 3, warmup: int = 1) -> tuple[float, dict]:
    """Time training steps of a copy of `module.net` on the live training loader (its loading competes for
    the cores as it will in training) and, where `module.train_precision` is 'auto', set it to the faster
    precision. Returns (seconds per step at the precision the module now trains with, {precision: seconds
    per step measured}); the module's weights are untouched."""

    def timed(precision: str) -> float:
        batches = itertools.islice(datamodule.train_dataloader(), warmup + steps)
        return step_seconds(copy.deepcopy(module.net), module.criterion, batches, precision, warmup)

    wanted = check_train_precision(module.train_precision)
    if wanted != "auto":
        s = timed(wanted)
        return s, {wanted: s}
    times = {"32": timed("32")}
    device = next(module.net.parameters()).device
    probe_32, probe_bf16 = probe_seconds("32", device), probe_seconds("bf16", device)
    if bf16_pays(probe_32, probe_bf16):
        times["bf16"] = timed("bf16")
    chosen = "bf16" if bf16_pays(times["32"], times.get("bf16", float("inf"))) else "32"
    module.set_train_precision(chosen)
    log.info("module.train_precision=auto: %s (s/step float32 %.3f, bf16 %s; convolution probe %.4f / %.4f s)",
             chosen, times["32"], f"{times['bf16']:.3f}" if "bf16" in times else "not timed", probe_32, probe_bf16)
    return times[chosen], times
