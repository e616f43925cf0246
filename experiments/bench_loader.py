"""Data loading speed: is the training loader fast enough to feed a training step, and what does the cache buy?

Measured side by side in one run, on the real data:
1. setup (listing, imaging-type index, header validation): first run vs second run;
2. one pass over the training split with an empty decode cache (decoding + mask merging + writing .npz) vs
   the same pass again (reading the cache), through the real DataLoader with `--workers` workers;
3. images/s the warm training loader delivers vs images/s one training step consumes (forward, loss,
   backward, optimizer step of the configured model on the same crops, on this machine's device).

    NUCSEG_DATA_DIR=/work/shared/data .venv/bin/python experiments/bench_loader.py data=dsb2018
    NUCSEG_DATA_DIR=/work/shared/data .venv/bin/python experiments/bench_loader.py data=isbi2012 --steps 5

Any train-config override can follow (model.encoder_name=resnet18, data.crop_size=128, ...). Results are
printed and written to experiments/results/bench_loader_<data>_<device>.json (see experiments/README.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict

import nucseg.utils  # noqa: F401  (registers config resolvers)

ROOT = Path(__file__).resolve().parents[1]


def _pass(loader, max_batches: int | None = None) -> tuple[int, float, float]:
    """Iterate the loader; return (images, seconds in all, seconds after the first batch).

    The first batch carries the worker start-up; the rest is the steady rate a long epoch sees.
    """
    t0, n, first = time.perf_counter(), 0, 0.0
    for i, batch in enumerate(loader):
        n += batch["image"].shape[0]
        if i == 0:
            first, n_first = time.perf_counter() - t0, n
        if max_batches is not None and i + 1 >= max_batches:
            break
    total = time.perf_counter() - t0
    return n, total, (n - n_first) / max(total - first, 1e-9)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (after 2 warm-up steps)")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop the cold/warm passes after this many batches (default: the whole train split)")
    parser.add_argument("--throughput-images", type=int, default=512,
                        help="crops drawn (warm cache) to measure the loader's images/s (default 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("overrides", nargs="*", help="train-config overrides, e.g. data=isbi2012")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(args.overrides))
    cache = Path(tempfile.mkdtemp(prefix="nucseg-bench-cache-"))
    with open_dict(cfg):
        cfg.paths.output_dir = str(cache / "run")
        cfg.paths.cache_dir = str(cache)  # empty: the first pass really builds the cache
        cfg.data.num_workers = args.workers
        cfg.data.samples_per_epoch = None  # one pass = every training image once
    try:
        res = run(cfg, args, device)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    res["command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    res["config"] = {"overrides": list(args.overrides), "workers": args.workers, "device": str(device),
                     "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
                     "python": sys.version.split()[0]}
    _report(res)
    data = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data=")), "dsb2018")
    name = f"bench_loader_{data}_{device.type}.json"
    out = ROOT / "experiments" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return res


def run(cfg, args, device: torch.device) -> dict:
    from nucseg.train import build_module

    res: dict = {}
    for attempt in ("first", "second"):  # setup cost, cold index vs warm index
        t0 = time.perf_counter()
        dm = instantiate(cfg.data)
        dm.setup("fit")
        res[f"setup_{attempt}_s"] = time.perf_counter() - t0
    res["n_train_images"] = len(dm.splits["train"])
    res["batch_size"], res["crop_size"] = int(cfg.data.batch_size), int(cfg.data.crop_size)

    # cold vs warm cache: the same pass through the real loader twice
    for attempt in ("first", "second"):
        loader = dm.train_dataloader()  # fresh workers each time
        n, secs, _ = _pass(loader, args.max_batches)
        res[f"pass_{attempt}_s"], res[f"pass_{attempt}_images"] = secs, n
        del loader
    # loader throughput with a warm cache over enough crops to see the steady rate
    dm.samples_per_epoch = max(args.throughput_images, res["n_train_images"])
    n, secs, steady = _pass(dm.train_dataloader())
    res["loader_images"], res["loader_img_per_s"], res["loader_steady_img_per_s"] = n, n / secs, steady

    # training-step throughput on the same crops (the loader is out of the picture)
    batch = next(iter(dm.train_dataloader()))
    module = build_module(cfg).to(device)
    module.train()
    optimizer = instantiate(cfg.optimizer)(params=module.parameters())
    image, target = batch["image"].to(device), batch["target"].to(device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module.criterion(module.net(image), target)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    res["step_s"] = secs / args.steps
    res["step_img_per_s"] = image.shape[0] * args.steps / secs
    res["loader_over_step"] = res["loader_steady_img_per_s"] / res["step_img_per_s"]
    res["cache_speedup"] = res["pass_first_s"] / res["pass_second_s"]
    return res


def _report(r: dict) -> None:
    c = r["config"]
    print(f"\nloader benchmark: {' '.join(c['overrides']) or '(defaults)'} | {c['workers']} workers | "
          f"device {c['device']} | torch threads {c['torch_threads']}")
    print(f"  train split: {r['n_train_images']} images, crops {r['crop_size']}, batch {r['batch_size']}")
    print(f"  setup (list, index, validate)   first {r['setup_first_s']:8.2f} s   second {r['setup_second_s']:8.2f} s")
    print(f"  train pass, cache cold vs warm  first {r['pass_first_s']:8.2f} s   second {r['pass_second_s']:8.2f} s"
          f"   ({r['cache_speedup']:.1f}x faster with the cache)")
    print(f"  train pass images/s             first {r['pass_first_images'] / r['pass_first_s']:8.1f}     second "
          f"{r['pass_second_images'] / r['pass_second_s']:8.1f}   (worker start-up included)")
    print(f"  warm loader, {r['loader_images']} crops        {r['loader_img_per_s']:8.1f} images/s "
          f"({r['loader_steady_img_per_s']:.1f} after the first batch)")
    print(f"  training step                   {r['step_s'] * 1000:8.1f} ms/step = {r['step_img_per_s']:.1f} images/s")
    verdict = "keeps up" if r["loader_over_step"] >= 1 else "is the BOTTLENECK"
    print(f"  warm loader / step consumption  {r['loader_over_step']:8.2f}x  -> the loader {verdict}\n")


if __name__ == "__main__":
    main()
