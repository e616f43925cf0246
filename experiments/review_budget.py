"""What would the budget review rule have flagged in a finished Bayesian run? Re-derives the threshold from
the run's own validation certainties (`uncertainty/val_images.csv`) and applies it to its test images
(`uncertainty/test_images.csv`), without sampling again.

    python experiments/review_budget.py outputs/cpu/runs/<run> [--budget 0.1] [--failure-dice 0.7]
    python experiments/review_budget.py experiments/results/<record>
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from nucseg.uncertainty.scores import budget_threshold


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--budget", type=float, default=0.1)
    ap.add_argument("--failure-dice", type=float, default=0.7)
    args = ap.parse_args()
    unc = args.run_dir / "uncertainty"
    if not unc.is_dir():  # a record under experiments/results/ keeps the files flat
        unc = args.run_dir
    for name in ("val_images.csv", "test_images.csv"):
        if not (unc / name).is_file():
            raise SystemExit(f"{unc / name}: missing; is {args.run_dir} a finished run with uncertainty?")
    val = list(csv.DictReader((unc / "val_images.csv").open()))
    test = list(csv.DictReader((unc / "test_images.csv").open()))
    t = budget_threshold([float(r["certainty"]) for r in val], args.budget)
    c = np.array([float(r["certainty"]) for r in test])
    d = np.array([float(r["dice_mc"]) for r in test])
    flag, fail = c < t, d < args.failure_dice
    kept = f"{d[~flag].mean():.3f}" if (~flag).any() else "-"
    print(f"{args.run_dir}: budget {args.budget:g} -> threshold {t:.4f} from {len(val)} validation images; "
          f"test flagged {flag.mean():.3f} ({flag.sum()}/{len(c)}); failures (Dice < {args.failure_dice:g}) "
          f"{fail.sum()}, flagged {(flag & fail).sum()}; mean Dice flagged "
          f"{d[flag].mean() if flag.any() else float('nan'):.3f} vs kept {kept}")


if __name__ == "__main__":
    main()
