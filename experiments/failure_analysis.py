"""Where does a trained model fail? Rank the images of a run by Dice and group them by imaging type,
size and crowding (nuclei per image, touching nuclei), from its `per_image.csv`.

Choices are made on validation, so score the validation split with `nucseg.evaluate split=val` and analyse
that folder (a training run's own `figures/per_image.csv` is its test split: read it once, to report):

    python -m nucseg.evaluate ckpt_path=<run>/checkpoints/<best>.ckpt split=val paths.output_dir=<run>/val_eval
    NUCSEG_DATA_DIR=../shared/data python experiments/failure_analysis.py <run>/val_eval

Prints a Markdown report (and writes it with --out).
"""

from __future__ import annotations

import argparse
import csv
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

from nucseg.data.acquisitions import imaging_type
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.io import read_raw, to_rgb
from nucseg.utils.atomic import atomic_write_text


def touching_fraction(labels: np.ndarray) -> float:
    """Fraction of nuclei that touch another nucleus (8-neighbourhood): what merges under plain thresholding."""
    n = int(labels.max())
    if n == 0:
        return 0.0
    grown = ndimage.grey_dilation(labels, size=3)
    touching = np.unique(labels[(grown != labels) & (labels > 0) & (grown > 0)])
    return len(touching) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--root", type=Path,
                    default=Path(os.environ.get("NUCSEG_DATA_DIR", "data")) / "dsb2018" / "stage1_train")
    ap.add_argument("--fail-dice", type=float, default=0.7)
    ap.add_argument("--worst", type=int, default=10, help="also list the N lowest-Dice images (failing or not)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    # a training run's figures/per_image.csv has size, Dice and IoU; the run folder's per_image.csv (a training
    # run's or nucseg.evaluate's) the instance and uncertainty columns: joined by image id
    tables = [t for t in (args.run_dir / "figures" / "per_image.csv", args.run_dir / "per_image.csv") if t.is_file()]
    if not tables:
        raise SystemExit(f"error: {args.run_dir}: no per_image.csv (nor figures/per_image.csv)")
    table = tables[0]
    by_id: dict[str, dict] = {}
    for t in tables:
        for r in csv.DictReader(t.open()):
            by_id.setdefault(r["id"], {}).update({k: v for k, v in r.items() if v != "" or k not in by_id[r["id"]]})
    rows = list(by_id.values())
    review: dict[str, str] = {}  # Bayesian runs: which test images the certainty sends to an expert
    unc = args.run_dir / "uncertainty" / "test_images.csv"
    if "needs_review" in rows[0]:
        review = {r["id"]: r["needs_review"] for r in rows}
    elif unc.is_file():
        review = {r["id"]: r["needs_review"] for r in csv.DictReader(unc.open())}
    # nucseg.evaluate's table has the instance metrics per image too
    extra = [c for c in ("dsb_score", "ap50", "count_error") if c in rows[0] and all(r[c] != "" for r in rows)]
    src = DSB2018Source(args.root)
    for r in rows:
        image, labels = src.load(r["id"])
        r["group"] = imaging_type(to_rgb(read_raw(src.image_path(r["id"]))))
        r["n_nuclei"] = int(labels.max())
        r["touching"] = touching_fraction(labels)
        r["dice"] = float(r["dice"])
        r["iou"] = float(r["iou"])

    lines = [f"# Failure analysis of {args.run_dir}", "",
             f"{len(rows)} images ({table}); failure = Dice < {args.fail_dice}.", "",
             "| imaging type | images | mean Dice | mean IoU | " + "".join(f"mean {c} | " for c in extra)
             + "failures |", "|---|---|---|---|" + "---|" * len(extra) + "---|"]
    by_group = defaultdict(list)
    for r in rows:
        by_group[r["group"]].append(r)
    for g, rs in sorted(by_group.items(), key=lambda kv: -len(kv[1])):
        d = np.array([r["dice"] for r in rs])
        cells = "".join(f"{np.mean([float(r[c]) for r in rs]):.3f} | " for c in extra)
        lines.append(f"| {g} | {len(rs)} | {d.mean():.3f} | {np.mean([r['iou'] for r in rs]):.3f} | {cells}"
                     f"{int((d < args.fail_dice).sum())} |")
    fails = sorted((r for r in rows if r["dice"] < args.fail_dice), key=lambda r: r["dice"])
    ok = [r for r in rows if r["dice"] >= args.fail_dice]

    def summary(rs):
        if not rs:
            return "-"
        return (f"median size {int(np.median([int(r['height']) * int(r['width']) for r in rs]) / 1e3):.0f} kpx, "
                f"median nuclei {np.median([r['n_nuclei'] for r in rs]):.0f}, "
                f"touching {np.mean([r['touching'] for r in rs]):.0%}")

    worst = sorted(rows, key=lambda r: r["dice"])[:max(args.worst, len(fails))]
    has_cert = bool(rows) and rows[0].get("certainty") not in (None, "")
    extra = " certainty | review |" if has_cert else ""
    lines += ["", f"- failed images: {summary(fails)}", f"- other images: {summary(ok)}", "",
              f"The {len(worst)} lowest-Dice images:", "",
              "| rank | image | type | size | nuclei | touching | Dice | IoU |" + extra,
              "|---|---|---|---|---|---|---|---|" + ("---|---|" if has_cert else "")]
    for i, r in enumerate(worst, 1):
        cert = (f" {float(r['certainty']):.3f} | {'yes' if review.get(r['id']) == 'True' else 'no'} |"
                if has_cert else "")
        lines.append(f"| {i} | {r['id'][:12]} | {r['group']} | {r['height']}x{r['width']} | {r['n_nuclei']} | "
                     f"{r['touching']:.0%} | {r['dice']:.3f} | {r['iou']:.3f} |" + cert)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
