"""Framework overhead: training steps through `nucseg.train` vs a hand-written PyTorch loop, side by side.

Both train the same network (built from the same config), with the same loss, optimiser, batch size, crop,
precision and DataLoader, for the same number of steps. Only the steady state is timed: from the end of
warm-up step `--warmup` to the end of the last step, which for `nucseg.train` includes everything Lightning
and the nucseg callbacks/loggers do per step (progress bar, logging, checkpoint timers). Validation and test
are off (timed elsewhere). Two data variants separate data waits from framework costs:

- `loader`: both read the real DataLoader (decode cache, crops, augmentation, workers);
- `memory`: both iterate the same pre-loaded list of batches (no data time at all).

Paths run interleaved, `--repeats` times each; the best run of each path gives the ratio (least disturbed
by other work on the machine), the median is printed too. Goal: nucseg >= 0.95 of the plain loop.

    NUCSEG_DATA_DIR=/work/shared/data .venv/bin/python experiments/bench_overhead.py
    NUCSEG_DATA_DIR=/work/shared/data .venv/bin/python experiments/bench_overhead.py --steps 50 \
        --precision bf16-mixed trainer.accelerator=gpu

Any train-config override can follow. Results are printed and written to
experiments/results/bench_overhead_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from contextlib import nullcontext
from pathlib import Path
from unittest import mock

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.overrides import TorchFunctionMode

import nucseg.train as nucseg_train
import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.data.datamodule import SegDataModule
from nucseg.utils.entry_config import compose_config

ROOT = Path(__file__).resolve().parents[1]


def compose_train_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python -m nucseg.train <overrides>` would run, writing into `output_dir`."""
    return compose_config("train", overrides, output_dir)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock(L.Callback):
    """Wall time at the end of warm-up step `warmup` and of the last step (syncing the GPU only there)."""

    def __init__(self, warmup: int, last: int):
        self.warmup, self.last = warmup, last
        self.t0 = self.t1 = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            sync(pl_module.device)
            self.t0 = time.perf_counter()
        elif batch_idx == self.last - 1:
            sync(pl_module.device)
            self.t1 = time.perf_counter()


class Batches:
    """A fixed list of batches served as one iterable (Lightning would take a bare list for several loaders)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def first_batches(cfg: DictConfig, n: int) -> list:
    """The first `n` training batches under the run's seed: what both paths see (and a warm decode cache)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    loader = instantiate(cfg.data).train_dataloader()
    batches = [b for _, b in zip(range(n), loader, strict=False)]
    if len(batches) < n:
        sys.exit(f"the train split gives {len(batches)} batches; --warmup + --steps must be <= that")
    return batches


class HostReads(TorchFunctionMode):
    """Counts reads of tensor values on the host (`.item()`, `bool(t)`, `.tolist()`, `.cpu()`, ...) while `on`.

    On a GPU each is a sync that empties the launch queue; on a CPU they cost nothing, so counting them is
    how a CPU run shows what would stall a GPU. The optimizer's own reads of its CPU step counters are left
    out (same in both paths, and not syncs on a GPU).
    """

    NAMES = frozenset({"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"})

    def __init__(self) -> None:
        super().__init__()
        self.on, self.sites = False, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if self.on and getattr(func, "__name__", "") in self.NAMES:
            stack = traceback.extract_stack()[:-1]
            if "torch/optim" not in stack[-1].filename:
                ours = [f for f in stack if "site-packages/torch/" not in f.filename
                        and "lightning_utilities" not in f.filename][-3:]
                self.sites[" <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in ours)] += 1
        return func(*args, **(kwargs or {}))


class HostReadGate(StepClock):
    def __init__(self, mode: HostReads, warmup: int, last: int):
        super().__init__(warmup, last)
        self.mode = mode

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mode.on = self.warmup - 1 <= batch_idx < self.last - 1


def run_nucseg(cfg: DictConfig, warmup: int, steps: int, batches: list | None,
               clock: StepClock | None = None) -> float:
    """Seconds for `steps` steady-state steps through nucseg.train.train(cfg)."""
    clock = clock or StepClock(warmup, warmup + steps)
    make_callbacks = nucseg_train.instantiate_callbacks
    patches = [mock.patch.object(nucseg_train, "instantiate_callbacks",
                                 lambda *a, **k: [*make_callbacks(*a, **k), clock])]
    if batches is not None:
        patches.append(mock.patch.object(SegDataModule, "train_dataloader", lambda self: Batches(batches)))
    with patches[0], (patches[1] if len(patches) > 1 else nullcontext()):
        nucseg_train.train(cfg)
    return clock.t1 - clock.t0


def run_plain(cfg: DictConfig, warmup: int, steps: int, batches: list | None, device: torch.device,
              reads: HostReads | None = None) -> float:
    """Seconds for `steps` steady-state steps of a hand-written loop over the same pieces."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    net = instantiate(cfg.model).to(device).train()
    criterion = instantiate(cfg.loss).to(device)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())
    data = batches if batches is not None else instantiate(cfg.data).train_dataloader()
    precision = str(cfg.trainer.precision)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if "bf16" in precision else torch.float16)
                if "mixed" in precision else nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed" and device.type == "cuda")
    t0 = t1 = 0.0
    for i, batch in enumerate(data):
        image = batch["image"].to(device, non_blocking=True)
        target = batch["target"].to(device, non_blocking=True)
        with autocast:
            loss = criterion(net(image), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if reads is not None:
            reads.on = warmup - 1 <= i < warmup + steps - 1
        if i == warmup - 1:
            sync(device)
            t0 = time.perf_counter()
        elif i == warmup + steps - 1:
            sync(device)
            t1 = time.perf_counter()
            break
    return t1 - t0


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed | 16-mixed (GPU)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each path per variant (default 2)")
    parser.add_argument("--variants", default="loader,memory", help="loader, memory or both (default)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    args, overrides = parser.parse_known_args(argv)

    n = args.warmup + args.steps
    overrides = [
        "model=unet", "model.encoder_name=resnet18", f"data.batch_size={args.batch_size}",
        f"data.crop_size={args.crop}", f"trainer.precision={args.precision}", "trainer.max_epochs=1",
        f"trainer.limit_train_batches={n}", "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "test=false", "callbacks.early_stopping=null", "seed=0", *overrides,
    ]
    tmp = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    cfg = compose_train_cfg(overrides, tmp / "run")
    accel = str(cfg.trainer.accelerator)
    device = torch.device("cuda" if accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
                          else "cpu")

    results: dict = {"device": device.type, "device_name": torch.cuda.get_device_name(device)
                     if device.type == "cuda" else platform.processor() or platform.machine(),
                     "torch_threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
                     "batch_size": args.batch_size, "crop": args.crop, "precision": args.precision,
                     "num_workers": int(cfg.data.num_workers), "overrides": overrides, "variants": {}}
    preloaded = first_batches(cfg, n)  # also fills the decode cache, so no timed run decodes files
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if variant not in ("loader", "memory"):
            sys.exit(f"--variants: expected loader and/or memory, got {variant!r}")
        batches = preloaded if variant == "memory" else None
        times: dict[str, list[float]] = {"plain": [], "nucseg": []}
        for r in range(args.repeats):
            for path in ("plain", "nucseg") if r % 2 == 0 else ("nucseg", "plain"):
                run_cfg = compose_train_cfg(overrides, tmp / f"{variant}_{path}_{r}")
                sec = (run_plain(run_cfg, args.warmup, args.steps, batches, device) if path == "plain"
                       else run_nucseg(run_cfg, args.warmup, args.steps, batches))
                times[path].append(sec)
                print(f"[{variant}] {path:6s} run {r}: {args.steps * args.batch_size / sec:7.2f} images/s",
                      flush=True)
        best = {p: args.steps * args.batch_size / min(t) for p, t in times.items()}
        median = {p: args.steps * args.batch_size / statistics.median(t) for p, t in times.items()}
        results["variants"][variant] = {
            "seconds": times, "images_per_s_best": best, "images_per_s_median": median,
            "ratio_best": best["nucseg"] / best["plain"], "ratio_median": median["nucseg"] / median["plain"],
        }

    # host reads (GPU syncs) per training step, counted in one untimed run of each path
    reads = {}
    for path in ("plain", "nucseg"):
        mode = HostReads()
        run_cfg = compose_train_cfg(overrides, tmp / f"reads_{path}")
        with mode:
            if path == "plain":
                run_plain(run_cfg, args.warmup, args.steps, preloaded, device, reads=mode)
            else:
                run_nucseg(run_cfg, args.warmup, args.steps, preloaded,
                           clock=HostReadGate(mode, args.warmup, args.warmup + args.steps))
        reads[path] = {"per_step": sum(mode.sites.values()) / args.steps,
                       "sites": {k: v / args.steps for k, v in mode.sites.most_common(10)}}
    results["host_reads_per_step"] = reads

    print(f"\nU-Net resnet18, batch {args.batch_size}, crop {args.crop}, {args.precision}, {args.steps} steps "
          f"after {args.warmup} warm-up, {results['device_name']} ({device.type}), "
          f"{results['num_workers']} loader workers")
    print(f"{'variant':8s} {'plain img/s':>12s} {'nucseg img/s':>13s} {'ratio':>7s}   (median: plain, nucseg, ratio)")
    for variant, r in results["variants"].items():
        b, m = r["images_per_s_best"], r["images_per_s_median"]
        print(f"{variant:8s} {b['plain']:12.2f} {b['nucseg']:13.2f} {r['ratio_best']:7.3f}   "
              f"({m['plain']:.2f}, {m['nucseg']:.2f}, {r['ratio_median']:.3f})")
    print(f"host reads (GPU syncs) per step: plain {reads['plain']['per_step']:.2f}, "
          f"nucseg {reads['nucseg']['per_step']:.2f}")
    for site, n in reads["nucseg"]["sites"].items():
        print(f"  {n:5.2f}/step  {site}")
    out = args.out or ROOT / "experiments" / "results" / f"bench_overhead_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    from nucseg.utils.atomic import atomic_write_text

    results = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), **results}
    atomic_write_text(out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
