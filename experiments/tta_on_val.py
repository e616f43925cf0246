"""Test-time augmentation for instances, judged on the validation split over seeds: for each run's model.ckpt,
the DSB score, AP@0.5 and Dice of the validation images (the split the run was trained beside, from its own
config) predicted by `nucseg.Predictor` three ways:

- `single`: one deterministic pass (MC dropout off), what `test/dsb_score` of a run measures;
- `flips`: the mean probability of the flipped passes (`tta=flips`), then the watershed;
- `mc`: the model's own uncertainty method (MC dropout, its `samples`), the mean probability, then the
  watershed: what `nucseg.predict` gives a Bayesian model by default.

Dice here is that of the instance masks (after the post-processing's minimum sizes). All three use the
checkpoint's tuned post-processing (tuned on part of this split, on single passes: if
anything, that favours `single`). Prints one row per run and arm and the seed table (mean, sd) per arm.

    NUCSEG_DATA_DIR=../shared/data python experiments/tta_on_val.py outputs/ablate_preset/fast/seed* \
        --out experiments/results/tta_on_val
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf

import nucseg.utils  # noqa: F401  (registers the config resolvers the run's config uses)
from nucseg import Predictor
from nucseg.data.io import read_raw
from nucseg.metrics.dsb_score import instance_scores
from nucseg.metrics.pixel import dice_score
from nucseg.utils.tables import write_csv

ARMS = {"single": {"tta": False, "uncertainty": {"method": "none"}},
        "flips": {"tta": "flips", "uncertainty": {"method": "none"}},
        "mc": {"tta": False, "uncertainty": None}}


def val_images(run: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(id, image file, ground-truth labels) of the run's validation split, from its composed config."""
    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    return [(rid, dm.source.image_path(rid), dm.cached.load(rid)[1]) for rid in dm.splits["val"]]


def score_run(run: Path) -> list[dict]:
    images = val_images(run)
    rows = []
    for arm, kwargs in ARMS.items():
        predictor = Predictor.from_checkpoint(run / "checkpoints" / "model.ckpt", **kwargs)
        t, scores = time.perf_counter(), []
        for _rid, path, truth in images:
            pred = predictor.predict(read_raw(path))
            s = instance_scores(truth, pred.labels)
            s["dice"] = float(dice_score(torch.from_numpy(pred.labels > 0), torch.from_numpy(truth > 0)))
            scores.append(s)
        row = {"run": str(run), "arm": arm, "images": len(images), "seconds": round(time.perf_counter() - t, 1)}
        row.update({k: float(np.mean([s[k] for s in scores])) for k in ("dsb_score", "ap50", "dice")})
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    rows = [r for run in args.runs for r in score_run(run)]
    table = []
    for arm in ARMS:
        vals = {k: [r[k] for r in rows if r["arm"] == arm] for k in ("dsb_score", "ap50", "dice", "seconds")}
        table.append({"arm": arm, "seeds": len(vals["dsb_score"]),
                      **{f"{k}_mean": statistics.mean(v) for k, v in vals.items()},
                      **{f"{k}_sd": statistics.stdev(v) if len(v) > 1 else float("nan") for k, v in vals.items()}})
    for row in table:
        print(f"{row['arm']:>6}: val DSB {row['dsb_score_mean']:.4f} ± {row['dsb_score_sd']:.4f}, AP50 "
              f"{row['ap50_mean']:.4f} ± {row['ap50_sd']:.4f}, Dice {row['dice_mean']:.4f} ± {row['dice_sd']:.4f}, "
              f"{row['seconds_mean']:.0f} s per split ({row['seeds']} seeds)")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(args.out / "runs.csv", list(rows[0]), rows)
        write_csv(args.out / "arms.csv", list(table[0]), table)


if __name__ == "__main__":
    main()
