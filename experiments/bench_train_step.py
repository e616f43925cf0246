"""What a CPU-preset training step costs, side by side in one run, on the live loader (its work competes
for the cores as in training): the preset as it was (float32, NCHW weights, one loader worker reading the
.npz cache), then each change the preset makes, added one at a time:

1. `module.channels_last=true` (NHWC weights);
2. loading in the main process from decoded images kept in memory (`data.num_workers=0`,
   `data.memory_cache_mb=2048`): float32, the preset on a machine where `train_precision=auto` keeps float32;
3. bf16 autocast of the training step (`module.train_precision=bf16`): the preset where `auto` picks it. Where
   the one-convolution probe shows bf16 slower than float32 (no bf16 instructions) this row times only
   `--slow-steps` steps (such steps take seconds each).

    NUCSEG_DATA_DIR=../shared/data python experiments/bench_train_step.py [--steps 30] \
        [--out experiments/results/bench_train_step_cpu.json]

Prints seconds per step of 16 crops of 128 px and the speed-up over the first row. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import hydra
import torch

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.models.train_precision import MIN_SPEEDUP, bf16_pays, probe_seconds, step_seconds
from nucseg.train import build_module
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.entry_config import compose_config

CASES = [
    ("as before: float32, NCHW, 1 worker, .npz per crop",
     ["module.channels_last=false", "data.num_workers=1", "data.memory_cache_mb=0"], "32"),
    ("+ NHWC weights", ["module.channels_last=true", "data.num_workers=1", "data.memory_cache_mb=0"], "32"),
    ("+ main-process loading from memory (float32)",
     ["module.channels_last=true", "data.num_workers=0", "data.memory_cache_mb=2048"], "32"),
    ("+ bf16 training step", ["module.channels_last=true", "data.num_workers=0", "data.memory_cache_mb=2048"],
     "bf16"),
]


def cpu_info() -> dict:
    """The CPU's model name and whether it has bf16 instructions (Linux), for the record."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    return {"cpu_model": model, "avx512_bf16": "avx512_bf16" in text, "amx_bf16": "amx_bf16" in text}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--slow-steps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    probe = {p: round(probe_seconds(p, torch.device("cpu")), 5) for p in ("32", "bf16")}
    auto = "bf16" if bf16_pays(probe["32"], probe["bf16"]) else "32"
    print(f"convolution probe: float32 {probe['32']:.4f} s, bf16 {probe['bf16']:.4f} s "
          f"(train_precision=auto goes on to time both only if bf16 is {MIN_SPEEDUP}x faster: {auto})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides, precision in CASES:
            cfg = compose_config("train", ["experiment=cpu", *overrides], Path(tmp))
            dm = hydra.utils.instantiate(cfg.data)
            dm.setup("fit")
            for rid in dm.splits["train"]:  # decoded and (where asked) held in memory, as the budget does
                dm.cached.load(rid)
            module = build_module(cfg)
            steps, warmup = ((args.slow_steps, 1) if precision == "bf16" and probe["bf16"] > probe["32"]
                             else (args.steps, args.warmup))
            batches = itertools.islice(dm.train_dataloader(), warmup + steps)
            s = step_seconds(copy.deepcopy(module.net), module.criterion, batches, precision, warmup)
            rows.append({"case": name, "overrides": overrides, "precision": precision, "steps": steps,
                         "step_s": round(s, 4),
                         "speedup": round(rows[0]["step_s"] / s, 2) if rows else 1.0})
            print(f"{name:<55} {s:.3f} s/step  x{rows[-1]['speedup']:.2f}", flush=True)
    if args.out:
        record = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), **cpu_info(),
                  "rows": rows,
                  "probe_s": probe, "auto_after_probe": auto}
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
