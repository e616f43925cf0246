"""What the out-of-distribution score adds to prediction time: `Predictor.predict` with the checkpoint's OOD
density against the same predictor with `ood_threshold="off"`, measured side by side in one run.

    NUCSEG_DATA_DIR=../shared/data python experiments/bench_ood.py CKPT [--images 24] [--repeats 2] \
        [--out experiments/results/bench_ood_cpu.json]

CKPT: a checkpoint whose test run fitted an OOD density (e.g. a run of experiments/trust_protocol.py). Images:
every k-th stage1_train image (sorted ids), so every size and imaging type. Two settings: MC dropout at the
default T=20 samples (the review pass users run) and `uncertainty.method=none` (one deterministic
pass: where the OOD score costs the most, relatively). Per setting and repeat the two predictors run in
alternating order (ABBA), so drift and warm-up fall on both; the ratio is (with OOD) / (without). The
score itself (the k-NN distance) is also timed alone, and the density's size in the checkpoint recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NUCSEG_DATA_DIR", ROOT.parent / "shared" / "data"))


def images(n: int) -> list[np.ndarray]:
    from nucseg.data.io import read_raw

    dirs = sorted((DATA / "dsb2018" / "stage1_train").iterdir())
    step = max(1, len(dirs) // n)
    return [read_raw(d / "images" / f"{d.name}.png") for d in dirs[::step][:n]]


def timed(predictor, imgs: list[np.ndarray]) -> float:
    start = time.perf_counter()
    for img in imgs:
        predictor.predict(img)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from nucseg import Predictor
    from nucseg.utils.atomic import atomic_write_text

    torch.set_num_threads(os.cpu_count() or 1)
    imgs = images(args.images)
    result: dict = {"ckpt": str(args.ckpt), "images": len(imgs), "repeats": args.repeats,
                    "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    for name, unc in (("mc_dropout_T20", {"samples": 20}), ("deterministic", {"method": "none"})):
        on = Predictor.from_checkpoint(args.ckpt, uncertainty=unc)
        off = Predictor.from_checkpoint(args.ckpt, uncertainty=unc, ood_threshold="off")
        if on.density is None:
            raise SystemExit(f"{args.ckpt}: holds no OOD density (ood.density); use a checkpoint of a test run")
        timed(on, imgs[:2])
        timed(off, imgs[:2])  # warm-up
        t_on, t_off = 0.0, 0.0
        for r in range(args.repeats):
            pair = [(on, True), (off, False)] if r % 2 == 0 else [(off, False), (on, True)]
            for p, is_on in pair:
                t = timed(p, imgs)
                t_on, t_off = (t_on + t, t_off) if is_on else (t_on, t_off + t)
        n = len(imgs) * args.repeats
        result[name] = {"s_per_image_with_ood": t_on / n, "s_per_image_without": t_off / n,
                        "ratio": t_on / t_off, "extra_percent": 100 * (t_on / t_off - 1)}
        print(f"{name}: {t_off / n:.3f} s/image without OOD, {t_on / n:.3f} with: ratio {t_on / t_off:.3f} "
              f"({100 * (t_on / t_off - 1):+.1f} %)", flush=True)
    density = on.density
    # what the density costs in the checkpoint: its pickled size (torch.save pickles the hyper-parameters)
    import pickle

    stored = torch.load(args.ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["ood"]
    result["density_kB"] = len(pickle.dumps(stored)) / 1024
    result["checkpoint_MB"] = args.ckpt.stat().st_size / 2**20
    print(f"the density: {result['density_kB']:.1f} kB of the {result['checkpoint_MB']:.1f} MB checkpoint", flush=True)
    feats = np.abs(np.random.default_rng(0).standard_normal((1, density.mean.size)))
    start = time.perf_counter()
    for _ in range(200):
        density.score(feats)
    result["score_alone_ms"] = 1000 * (time.perf_counter() - start) / 200
    print(f"the k-NN score alone: {result['score_alone_ms']:.3f} ms per image", flush=True)
    if args.out:
        result = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), **result}
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
