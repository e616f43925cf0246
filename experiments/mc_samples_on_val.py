"""How many MC dropout samples the uncertainty metrics need, judged on the validation split over seeds: each
run's `model.ckpt` evaluated on its own validation images (`nucseg.evaluate split=val`) with
`uncertainty.samples=T` for each T, then one seed table per metric (mean ± sd over the runs, one arm per T) and
the verdict of `seed_table.py`: a smaller T is harmless when no metric moves by more than the seed spread.

    NUCSEG_DATA_DIR=../shared/data python experiments/mc_samples_on_val.py \
        seed42=../fresh/outputs/cpu/runs/2026-12-07_16-44-03 seed1=../fresh/outputs/preset_slow/seed1 \
        seed2=../fresh/outputs/preset_slow/seed2 --samples 20 10 5 --work outputs/mc_samples \
        --out experiments/results/mc_samples_on_val

Each evaluation writes `<work>/T<T>/<label>/metrics.json` (kept: a rerun skips finished ones). The review
threshold, temperatures and OOD density are the checkpoint's (chosen by its run's calibrate stage), so only
the samples change. No timing is reported: an MC test costs T forward passes per image.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_run import machine_words  # noqa: E402
from seed_table import markdown, summarise, verdict  # noqa: E402

from nucseg.utils.atomic import atomic_write_text  # noqa: E402

METRICS = ["test/certainty_spearman", "test/failure_auroc", "test/review_fraction", "test/ece",
           "test/ece_calibrated", "test/dice_mc", "test/certainty_mean"]


def evaluate(ckpt: Path, samples: int, out: Path, limit: int | None) -> float:
    """Run `nucseg.evaluate` on the validation split with `samples` MC passes into `out`; its seconds."""
    if (out / "metrics.json").is_file():
        return float(json.loads((out / "metrics.json").read_text()).get("seconds", "nan"))
    cmd = [sys.executable, "-m", "nucseg.evaluate", f"ckpt_path={ckpt}", "split=val",
           f"uncertainty.samples={samples}", f"hydra.run.dir={out}", "logger=csv", "overlays.max_images=0"]
    if limit:
        cmd.append(f"trainer.limit_test_batches={limit}")  # the first `limit` validation images
    print("+", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, "NUCSEG_FULL_ERROR": "1"})
    seconds = time.perf_counter() - t
    metrics = json.loads((out / "metrics.json").read_text())
    atomic_write_text(out / "metrics.json", json.dumps({**metrics, "seconds": round(seconds, 1)}, indent=2) + "\n")
    return seconds


def _numbers(metrics: dict) -> dict:
    """None (e.g. a failure AUROC on images without a failure) as NaN, which the seed table skips."""
    return {k: math.nan if v is None else v for k, v in metrics.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, a training run holding checkpoints/model.ckpt")
    ap.add_argument("--samples", nargs="+", type=int, default=[20, 10, 5])
    ap.add_argument("--work", type=Path, default=Path("outputs/mc_samples"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=None, help="score only the first N validation images")
    args = ap.parse_args()
    runs = dict(spec.split("=", 1) for spec in args.runs)
    for label, run in runs.items():
        ckpt = Path(run) / "checkpoints" / "model.ckpt"
        if not ckpt.is_file():
            raise SystemExit(f"error: {label}={run}: expected a run directory with checkpoints/model.ckpt")
    for samples in args.samples:
        for label, run in runs.items():
            evaluate(Path(run).resolve() / "checkpoints" / "model.ckpt", samples, args.work / f"T{samples}" / label,
                     args.limit)
    rows = [(f"T={t}", label, _numbers(json.loads((args.work / f"T{t}" / label / "metrics.json").read_text())))
            for t in args.samples for label in runs]
    table = summarise(rows, METRICS)
    text = markdown(table, METRICS)
    ref = f"T={args.samples[0]}"
    lines = [text, "", f"Against {ref} (a gap larger than the larger sd is a verdict):"]
    for t in args.samples[1:]:
        for metric in METRICS:
            pair = {k: v for k, v in table.items() if k in (ref, f"T={t}")}
            lines.append(f"- T={t}, {metric}: {verdict(pair, metric)}")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        record = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "machine": machine_words(),
                  "runs": runs, "samples": args.samples, "limit": args.limit, "table": table}
        atomic_write_text(args.out / "seed_table.md", report)
        atomic_write_text(args.out / "seed_table.json", json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
