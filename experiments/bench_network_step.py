"""What a CPU-preset training step costs for other networks, side by side in one run, on the live loader (the
preset's own loading: main process, decoded images in memory), in float32 and, where this machine has it, bf16.

Each network is a set of `model.*` overrides on `experiment=cpu`; the first row is the preset as configured.

    NUCSEG_DATA_DIR=../shared/data python experiments/bench_network_step.py [--steps 20] \
        [--out experiments/results/bench_network_step_cpu.json]

Prints seconds per step of 16 crops of 128 px, parameters, and the speed-up over the first row. Run it on a
quiet machine (helper sessions share the cores).
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
from nucseg.models.train_precision import bf16_pays, probe_seconds, step_seconds
from nucseg.train import build_module
from nucseg.utils.atomic import atomic_write_text
from nucseg.utils.entry_config import compose_config

sys.path.insert(0, str(Path(__file__).parent))
from bench_train_step import cpu_info  # noqa: E402

# weights do not change a step's cost: rows other than the preset train from random init (no hub needed)
NETWORKS = {
    "preset": [],
    "resnet18, decoder 128-64-32-16": ["model.encoder_name=resnet18", "model.encoder_weights=null",
                                       "model.decoder_channels=[128,64,32,16]"],
    "resnet18, decoder 64-32-16-8": ["model.encoder_name=resnet18", "model.encoder_weights=null",
                                     "model.decoder_channels=[64,32,16,8]"],
    "efficientnet-lite0 (timm), decoder 128-64-32-16": ["model.encoder_name=tu-efficientnet_lite0",
                                                        "model.decoder_channels=[128,64,32,16]"],
    "efficientnet-lite0 (TF padding), decoder 64-32-16-8": ["model.encoder_name=timm-tf_efficientnet_lite0",
                                                            "model.encoder_weights=null",
                                                            "model.decoder_channels=[64,32,16,8]"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--network", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="extra row: a name and space-separated overrides (repeatable)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    networks = dict(NETWORKS)
    for spec in args.network:
        name, _, overrides = spec.partition("=")
        networks[name] = shlex.split(overrides)
    probe = {p: probe_seconds(p, torch.device("cpu")) for p in ("32", "bf16")}
    precisions = ["32", "bf16"] if bf16_pays(probe["32"], probe["bf16"]) else ["32"]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        dm = None
        for name, overrides in networks.items():
            cfg = compose_config("train", ["experiment=cpu", *overrides], Path(tmp))
            if dm is None:  # one loader for every row: the data and its loading are the preset's
                dm = hydra.utils.instantiate(cfg.data)
                dm.setup("fit")
                for rid in dm.splits["train"]:
                    dm.cached.load(rid)
            module = build_module(cfg)
            params = sum(p.numel() for p in module.net.parameters())
            for precision in precisions:
                batches = itertools.islice(dm.train_dataloader(), args.warmup + args.steps)
                s = step_seconds(copy.deepcopy(module.net), module.criterion, batches, precision, args.warmup)
                base = next((r["step_s"] for r in rows if r["precision"] == precision), s)
                rows.append({"network": name, "overrides": overrides, "params_m": round(params / 1e6, 2),
                             "precision": precision, "step_s": round(s, 4), "speedup": round(base / s, 2)})
                print(f"{name:<52} {params / 1e6:5.1f} M  {precision:>4}  {s:.3f} s/step  x{base / s:.2f}",
                      flush=True)
    if args.out:
        record = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "steps": args.steps,
                  "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), **cpu_info(),
                  "probe_s": {k: round(v, 5) for k, v in probe.items()}, "rows": rows}
        atomic_write_text(args.out, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
