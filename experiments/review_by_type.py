"""How many test images the review flag (`needs_review`) sends to an expert, per imaging type, for
leave-one-type-out runs: does the certainty notice the type the model never saw?

    NUCSEG_DATA_DIR=../shared/data python experiments/review_by_type.py stained=<run> brightfield=<run> \
        [--out experiments/results/leave_one_type_out_cpu/review_by_type.json]

Reads each run's `uncertainty/test_images.csv`; imaging types from the images (nucseg.data.acquisitions).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path

from nucseg.data.acquisitions import imaging_type
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.io import read_raw, to_rgb
from nucseg.utils.atomic import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="HELD_OUT_TYPE=RUN_DIR")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = Path(os.environ.get("NUCSEG_DATA_DIR", "../shared/data")) / "dsb2018" / "stage1_train"
    src = DSB2018Source(root)
    result = {}
    for spec in args.runs:
        held_out, run = spec.split("=", 1)
        counts: dict[str, list[int]] = {}
        for r in csv.DictReader((Path(run) / "uncertainty" / "test_images.csv").open()):
            t = imaging_type(to_rgb(read_raw(src.image_path(r["id"]))))
            c = counts.setdefault(t, [0, 0])
            c[0] += r["needs_review"] == "True"
            c[1] += 1
        result[held_out] = {t: {"flagged": f, "images": n} for t, (f, n) in counts.items()}
        print(f"{held_out} held out: " + ", ".join(f"{t} {f}/{n} flagged" for t, (f, n) in sorted(counts.items())))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
