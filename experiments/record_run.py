"""Copy what a finished training run wrote into `experiments/results/<name>/`, so a results-table row has its
evidence in the repository: the command (overrides), the machine, the wall time from the run's own log, the
metrics, the per-image tables and the figures the run drew (a PNG over 500 kB as a 256-colour palette PNG).

    python experiments/record_run.py outputs/cpu/runs/<timestamp> cpu_preset_cpu [--note "..."]

Writes `record.json` (command, machine, start/end, wall minutes, the table's metrics) beside the copies; the
prose README of a record is written by hand from these files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
from datetime import datetime
from pathlib import Path

import yaml

from nucseg.utils.atomic import atomic_write_text
from nucseg.viz.report import histories_from_csv, save_figure, training_curves_figure

FILES = [
    "metrics.json", ".hydra/overrides.yaml", "figures/per_image.csv", "figures/best_worst.png",
    "figures/training_curves.png", "figures/certainty_vs_dice.png", "progress/progress_grid.png",
    "uncertainty/test_images.csv", "uncertainty/val_images.csv", "uncertainty/reliability.png",
    "uncertainty/review_threshold.json",
    "csv/metrics.csv", "figures/confusion_matrix.png", "budget.json", "postprocess_tuning.json",
]
# run-level files whose names clash with a copy above: (path in the run, name in the record)
RENAMED = [("per_image.csv", "per_image_test.csv")]
TABLE = ["test/dice", "test/iou", "test/auroc", "test/dsb_score", "test/dsb_score_cc", "test/ap50",
         "test/count_error", "test/dice_mc", "test/dice_deterministic", "test/certainty_spearman",
         "test/failure_auroc", "test/ece", "test/ece_deterministic", "test/review_fraction",
         "test/pixel_error", "test/rand_f", "test/rand_split", "test/rand_merge", "test/info_f", "test/vi_split",
         "test/vi_merge", "test/confusion/tn", "test/confusion/fp", "test/confusion/fn", "test/confusion/tp",
         "tune/val_dsb_score", "tune/val_rand_f", "tune/val_rand_f_base", "tune/threshold", "tune/min_size"]
STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]")


def log_span(run_dir: Path) -> tuple[datetime, datetime]:
    """First and last time stamps of the run's Hydra log (`<task>.log`)."""
    stamps = []
    for log in sorted(run_dir.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            m = STAMP.match(line)
            if m:
                stamps.append(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
    if not stamps:
        raise SystemExit(f"{run_dir}: no time-stamped log (*.log) to take the wall time from")
    return min(stamps), max(stamps)


def shrink_png(path: Path, limit: int = 500_000) -> bool:
    """Keep the repository small: a PNG over `limit` bytes is rewritten with a 256-colour palette (figures, not
    data: the colours of overlays and plots survive). True when the file was rewritten."""
    from PIL import Image

    if path.stat().st_size <= limit:
        return False
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    tmp = path.with_suffix(".tmp.png")
    small.save(tmp, optimize=True)
    os.replace(tmp, path)
    return True


def machine_words() -> str:
    """This host in words, with the CPU model and whether it has AVX512-BF16 (the fast kind) or not."""
    model, bf16 = platform.machine(), False
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), model)
        bf16 = "avx512_bf16" in info
    except OSError:
        pass
    kind = "with avx512_bf16 (the bf16 kind)" if bf16 else "without avx512_bf16 (the slow kind)"
    return f"{platform.node()}: {os.cpu_count()} CPU cores, {model}, {kind}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("name", help="folder under experiments/results/")
    ap.add_argument("--machine", default=None, help="words for the machine (default: from this host)")
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    run = args.run_dir
    if not (run / "metrics.json").is_file():
        raise SystemExit(f"{run}: no metrics.json; is this a finished run directory?")
    dest = Path(__file__).parent / "results" / args.name
    dest.mkdir(parents=True, exist_ok=True)
    redraw = (run / "csv" / "metrics.csv").is_file()  # curves from the CSV log: every epoch's train loss
    for rel, name in [(f, Path(f).name) for f in FILES] + RENAMED:
        if redraw and rel.endswith("training_curves.png"):
            continue
        src = run / rel
        if src.is_file():
            target = dest / name
            shutil.copyfile(src, target.with_suffix(target.suffix + ".tmp"))
            os.replace(target.with_suffix(target.suffix + ".tmp"), target)
    if redraw:
        save_figure(training_curves_figure(*histories_from_csv(run / "csv" / "metrics.csv")),
                    dest / "training_curves.png")
    reduced = [p.name for p in sorted(dest.glob("*.png")) if shrink_png(p)]
    metrics = json.loads((run / "metrics.json").read_text())
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) or []
    start, end = log_span(run)
    machine = args.machine or machine_words()
    record = {
        "command": "python -m nucseg.train " + " ".join(overrides),
        "run_dir": str(run),
        "machine": machine,
        "start": start.isoformat(sep=" "), "end": end.isoformat(sep=" "),
        "wall_min_from_log": round((end - start).total_seconds() / 60, 1),
        "metrics": {k: metrics[k] for k in TABLE if k in metrics},
        "note": args.note,
        "figures_reduced_to_256_colours": reduced,
    }
    atomic_write_text(dest / "record.json", json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
