"""How much did the old image-level split leak? Groups DSB2018 stage1_train into acquisitions
(`nucseg.data.acquisitions`), then counts, for the image split and for the acquisition split (same fractions,
same seed), the test images that have (a) another image of their acquisition in training and (b) a near-copy in
training (difference hash within `--hamming` bits). Writes a montage of a few groups, so one can see that the
groups are acquisitions, and a JSON record.

    NUCSEG_DATA_DIR=../shared/data python experiments/split_leakage.py --out experiments/results/split_leakage
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from nucseg.data.acquisitions import dhash
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.io import read_raw, to_rgb
from nucseg.data.splits import split_records
from nucseg.utils.atomic import atomic_write_text


def leakage(split: dict[str, list[str]], acq: dict[str, str], hashes: dict[str, int], hamming: int) -> dict:
    train_acq = {acq[i] for i in split["train"]}
    train_hashes = np.array([hashes[i] for i in split["train"]], dtype=np.uint64)
    same_acq = [i for i in split["test"] if acq[i] in train_acq]
    near = []
    for i in split["test"]:
        dist = [bin(int(h) ^ hashes[i]).count("1") for h in train_hashes]
        if min(dist) <= hamming:
            near.append(i)
    return {"n_test": len(split["test"]), "test_with_acquisition_in_train": len(same_acq),
            "test_with_near_copy_in_train": len(near), "near_copy_ids": near}


def montage(root: DSB2018Source, groups: dict[str, list[str]], out: Path, n_groups: int, per_group: int,
            seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nucseg.viz.report import save_figure

    rng = np.random.default_rng(seed)
    big = sorted((g for g in groups if len(groups[g]) >= per_group), key=lambda g: -len(groups[g]))
    chosen = list(rng.choice(big, size=min(n_groups, len(big)), replace=False))
    fig, axes = plt.subplots(len(chosen), per_group, figsize=(1.6 * per_group, 1.7 * len(chosen)), squeeze=False)
    for r, g in enumerate(sorted(chosen)):
        for c, rid in enumerate(rng.choice(groups[g], size=per_group, replace=False)):
            ax = axes[r, c]
            ax.imshow(to_rgb(read_raw(root.image_path(str(rid)))))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{g}\n({len(groups[g])} img)", fontsize=7)
    fig.suptitle("DSB2018 stage1_train: random images of randomly chosen acquisition groups (one row each)",
                 fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "acquisition_groups.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path,
                    default=Path(os.environ.get("NUCSEG_DATA_DIR", "data")) / "dsb2018" / "stage1_train")
    ap.add_argument("--index-dir", type=Path, default=Path(os.environ.get("NUCSEG_CACHE_DIR", ".cache")))
    ap.add_argument("--seed", type=int, default=42, help="data.split_seed")
    ap.add_argument("--hamming", type=int, default=6, help="near-copy: difference hashes within this many bits")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    src = DSB2018Source(args.root, index_dir=args.index_dir)
    records = src.records()
    acq = {r.id: str(r.acquisition) for r in records}
    kind = {r.id: r.group for r in records}
    groups: dict[str, list[str]] = defaultdict(list)
    for r in records:
        groups[acq[r.id]].append(r.id)
    hashes = {r.id: dhash(to_rgb(read_raw(src.image_path(r.id)))) for r in records}
    result: dict = {"n_images": len(records), "n_acquisitions": len(groups),
                    "largest_groups": sorted((len(v) for v in groups.values()), reverse=True)[:10],
                    "acquisitions_per_type": dict(Counter(Counter(kind[v[0]] for v in groups.values()))),
                    "hamming": args.hamming, "split_seed": args.seed}
    for by in ("image", "acquisition"):
        split = split_records(records, 0.1, 0.1, args.seed, by)
        result[f"split_by_{by}"] = {
            **leakage(split, acq, hashes, args.hamming),
            "sizes": {k: len(v) for k, v in split.items()},
            "test_types": dict(Counter(kind[i] for i in split["test"])),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "split_leakage.json", text + "\n")
        montage(src, groups, args.out, n_groups=8, per_group=6, seed=args.seed)


if __name__ == "__main__":
    main()
