"""Time the DSB2018 score on all 664 ground-truth label maps, and compare it with a per-nucleus loop.

    NUCSEG_DATA_DIR=../shared/data python experiments/bench_dsb_score.py [--every 8] [--cache-dir DIR]

Prints the decode time (not part of scoring), the time to score every image against itself and against a
copy shifted by 2 px, and, on every `--every`-th image, the same shifted scores from a per-nucleus mask loop
with the speed-up measured side by side.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.source import CachedSource
from nucseg.metrics.dsb_score import DSB_THRESHOLDS, dsb_score_image, instance_scores


def per_nucleus_score(true: np.ndarray, pred: np.ndarray) -> float:
    """The straightforward version: one full-image mask per true nucleus, IoU with each prediction it hits."""
    t_ids = [i for i in np.unique(true) if i]
    p_ids = [j for j in np.unique(pred) if j]
    ious = []
    for i in t_ids:
        m = true == i
        for j in np.unique(pred[m]):
            if j:
                pm = pred == j
                ious.append(np.sum(m & pm) / np.sum(m | pm))
    if not t_ids and not p_ids:
        return 1.0
    ious = np.asarray(ious)
    tp = np.array([(ious > t + 1e-12).sum() for t in DSB_THRESHOLDS])
    return float(np.mean(tp / (len(t_ids) + len(p_ids) - tp)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("NUCSEG_DATA_DIR", "../shared/data"))
    ap.add_argument("--cache-dir", default=os.environ.get("NUCSEG_CACHE_DIR"))
    ap.add_argument("--every", type=int, default=8, help="compare with the per-nucleus loop on every n-th image")
    args = ap.parse_args()
    source = DSB2018Source(Path(args.data_dir) / "dsb2018" / "stage1_train")
    cached = CachedSource(source, args.cache_dir)
    ids = [r.id for r in source.records()]

    t0 = time.perf_counter()
    maps = [cached.load(rid)[1] for rid in ids]
    t_load = time.perf_counter() - t0
    shifted = [np.roll(m, 2, axis=1) for m in maps]
    n_nuclei = sum(len(np.unique(m)) - 1 for m in maps)
    n_pixels = sum(m.size for m in maps)
    print(f"{len(maps)} images, {n_nuclei} nuclei, {n_pixels / 1e6:.1f} Mpx; decode {t_load:.1f} s")

    t0 = time.perf_counter()
    selfs = [instance_scores(m, m)["dsb_score"] for m in maps]
    t_self = time.perf_counter() - t0
    t0 = time.perf_counter()
    vec = [dsb_score_image(m, s) for m, s in zip(maps, shifted, strict=True)]
    t_shift = time.perf_counter() - t0
    print(f"joint histogram: self {t_self:.2f} s (mean {np.mean(selfs):.4f}), shifted 2 px {t_shift:.2f} s "
          f"(mean {np.mean(vec):.4f}); {1e3 * t_shift / len(maps):.1f} ms per image")

    sub = range(0, len(maps), args.every)
    t0 = time.perf_counter()
    fast = [dsb_score_image(maps[i], shifted[i]) for i in sub]
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = [per_nucleus_score(maps[i], shifted[i]) for i in sub]
    t_slow = time.perf_counter() - t0
    n_sub = sum(len(np.unique(maps[i])) - 1 for i in sub)
    print(f"every {args.every}th image ({len(fast)} images, {n_sub} nuclei): joint histogram {t_fast:.2f} s, "
          f"per-nucleus loop {t_slow:.2f} s, speed-up x{t_slow / t_fast:.0f}, "
          f"max |difference| {np.max(np.abs(np.subtract(fast, slow))):.1e}")


if __name__ == "__main__":
    main()
