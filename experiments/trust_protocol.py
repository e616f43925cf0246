"""The trust protocol: does the image-level warning hold on images from new experiments? Trains the arms,
then tabulates every candidate certainty score, the out-of-distribution (OOD) score and the calibration.

Arms (each with >= 3 seeds): `grouped` (the acquisition-grouped split: test images come from acquisitions
never trained on), `stained` and `brightfield` (leave one imaging type out: trained and validated without it,
tested on all of it plus the grouped test images of the other types).

    NUCSEG_DATA_DIR=../shared/data python experiments/trust_protocol.py run --out outputs/trust_protocol \\
        [--seeds 1 2 3] [--arms grouped stained brightfield] [--experiment trust_cpu] [-- more overrides]
    NUCSEG_DATA_DIR=../shared/data python experiments/trust_protocol.py table outputs/trust_protocol \\
        --out experiments/results/trust_protocol_cpu

`run` skips runs whose metrics.json exists. `table` reads each run's per_image.csv and metrics.json, copies
them (and uncertainty/trust.json) to OUT/runs/<run>/ (so `table OUT/runs --out OUT` redoes it) and writes
table.json / table.md: per score and arm, mean +- sd over seeds of Spearman with Dice and with the DSB score,
failure AUROC (Dice < 0.8, DSB < 0.3), mean Dice of kept vs flagged images at a 10 % and 25 % review budget;
per arm the AUROC of the OOD score for "image of the unseen type", the share of flagged images by reason, what
the combined review flag keeps and catches, and pixel ECE before / after temperature scaling (validation's
temperature for all images, the pooled one, and shift calibration's rule).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from nucseg.settings import CertaintyScore

ARMS = {"grouped": [], "stained": ["data.holdout_types=[stained]"],
        "brightfield": ["data.holdout_types=[brightfield]"]}
SCORES = CertaintyScore.values()  # the candidate image certainties
BUDGETS = (0.10, 0.25)
REVIEW_SCORES = ("fg_entropy", "dice_agreement")  # the default, and the one these runs were made with


def run_arms(args: argparse.Namespace) -> None:
    for seed in args.seeds:  # seed by seed: every arm has a first result early
        for arm in args.arms:
            run_dir = Path(args.out) / f"{arm}_seed{seed}"
            if (run_dir / "metrics.json").is_file():
                print(f"{run_dir}: done before, skipped", flush=True)
                continue
            cmd = [sys.executable, "-m", "nucseg.train", f"experiment={args.experiment}", f"seed={seed}",
                   *ARMS[arm], f"hydra.run.dir={run_dir}", "logger=csv", *args.overrides]
            started = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            (run_dir).mkdir(parents=True, exist_ok=True)
            (run_dir / "train.log").write_text(proc.stdout + proc.stderr)
            print(f"{run_dir}: exit {proc.returncode} after {(time.monotonic() - started) / 60:.1f} min", flush=True)
            if proc.returncode:
                print((proc.stdout + proc.stderr)[-3000:], file=sys.stderr)


# --------------------------------------------------------------------------- the table
def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def image_types() -> dict[str, str]:
    """DSB2018 image id -> imaging type (nucseg.data.acquisitions, cached by the source)."""
    from nucseg.data.dsb2018 import DSB2018Source

    root = Path(os.environ.get("NUCSEG_DATA_DIR", "../shared/data")) / "dsb2018" / "stage1_train"
    return {r.id: r.group for r in DSB2018Source(root).records()}


def budget_split(score: np.ndarray, dice: np.ndarray, fraction: float) -> tuple[float, float]:
    """Mean Dice of the kept and of the flagged images when the `fraction` least certain are flagged."""
    k = math.ceil(fraction * score.size - 1e-9)
    order = np.argsort(score, kind="stable")
    flagged, kept = order[:k], order[k:]
    return float(dice[kept].mean()) if kept.size else math.nan, float(dice[flagged].mean()) if k else math.nan


def run_figures(rows: list[dict[str, str]], metrics: dict, types: dict[str, str], held_out: str | None
                ) -> dict[str, float]:
    """The protocol's figures for one run (see the module doc)."""
    from nucseg.uncertainty.scores import failure_auroc, spearman

    rows = [r for r in rows if not math.isnan(_float(r.get("dice_mc")))]
    dice = np.array([_float(r.get("dice") or r.get("dice_mc")) for r in rows])
    dsb = np.array([_float(r.get("dsb_score")) for r in rows])
    ood = np.array([_float(r.get("ood_score")) for r in rows])
    out: dict[str, float] = {"n_images": float(len(rows)), "dice": float(dice.mean()),
                             "dsb_score": float(np.nanmean(dsb)), "failures_dice08": float((dice < 0.8).sum()),
                             "failures_dsb03": float((dsb < 0.3).sum())}
    candidates = {name: np.array([_float(r[f"score_{name}"]) for r in rows]) for name in SCORES}
    candidates["ood"] = -ood  # higher = more certain, like the others
    for name, score in candidates.items():
        if np.isnan(score).any():
            continue
        out[f"{name}/spearman_dice"] = spearman(score, dice)
        out[f"{name}/spearman_dsb"] = spearman(score, dsb)
        out[f"{name}/auroc_dice08"] = failure_auroc(score, dice, 0.8)
        out[f"{name}/auroc_dsb03"] = failure_auroc(score, dsb, 0.3)
        for b in BUDGETS:
            kept, flagged = budget_split(score, dice, b)
            out[f"{name}/kept_dice_{int(b * 100)}"], out[f"{name}/flagged_dice_{int(b * 100)}"] = kept, flagged
    for key in ("test/ece", "test/ece_calibrated", "test/ece_calibrated_val", "test/ece_calibrated_pooled",
                "test/ece_deterministic", "val/temperature", "val/temperature_unlike", "val/temperature_pooled"):
        out[key.split("/", 1)[1]] = float(metrics.get(key, math.nan))
    flag = np.array([r.get("needs_review") == "True" for r in rows])
    unlike = np.array([r.get("unlike_training") == "True" for r in rows])
    out["flagged_fraction"], out["unlike_fraction"] = float(flag.mean()), float(unlike.mean())
    # the combined flag as predict raises it (low certainty OR unlike the training data)
    out["review/kept_dice"] = float(dice[~flag].mean()) if (~flag).any() else math.nan
    out["review/flagged_dice"] = float(dice[flag].mean()) if flag.any() else math.nan
    for key, fail in (("recall_dice08", dice < 0.8), ("recall_dsb03", dsb < 0.3)):
        out[f"review/{key}"] = float(flag[fail].mean()) if fail.any() else math.nan
    if held_out:
        unseen = np.array([types.get(r["id"]) == held_out for r in rows])
        # AUROC of a high OOD score for "image of the unseen type" = failure_auroc with the roles set so
        out["ood/auroc_unseen_type"] = failure_auroc(-ood, (~unseen).astype(float), 0.5)
        out["unseen/n_images"] = float(unseen.sum())
        out["unseen/dice"] = float(dice[unseen].mean())
        out["unseen/flagged_fraction"] = float(flag[unseen].mean())
        out["unseen/unlike_fraction"] = float(unlike[unseen].mean())
        out["seen/flagged_fraction"] = float(flag[~unseen].mean())
        out["seen/unlike_fraction"] = float(unlike[~unseen].mean())
    return out


def review_settings() -> dict:
    """failure_dice, min_val_failures, review_budget of the review threshold, as conf/uncertainty/_base.yaml
    sets them."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "uncertainty" / "_base.yaml")
    return {k: cfg[k] for k in ("failure_dice", "min_val_failures", "review_budget")}


def review_figures(rows: list[dict[str, str]], val_rows: list[dict[str, str]], score: str, settings: dict,
                   types: dict[str, str], held_out: str | None) -> dict[str, float]:
    """The combined review flag (score < review threshold OR unlike the training data) as a run with
    `uncertainty.score=score` raises it: the threshold chosen on the run's validation images by the callback's
    own rule (`choose_review_threshold`), applied to its test images."""
    from nucseg.uncertainty.review import choose_review_threshold

    val_dice = [_float(r["dice_mc"]) for r in val_rows]
    chosen = choose_review_threshold([_float(r[f"score_{score}"]) for r in val_rows], val_dice,
                                     float(settings["failure_dice"]), int(settings["min_val_failures"]),
                                     float(settings["review_budget"]))
    rows = [r for r in rows if not math.isnan(_float(r.get("dice_mc")))]
    dice = np.array([_float(r.get("dice") or r.get("dice_mc")) for r in rows])
    dsb = np.array([_float(r.get("dsb_score")) for r in rows])
    low = np.array([_float(r[f"score_{score}"]) < chosen.value for r in rows])
    flag = low | np.array([r.get("unlike_training") == "True" for r in rows])
    p = f"review_{score}/"
    out = {p + "flagged_fraction": float(flag.mean()),
           p + "kept_dice": float(dice[~flag].mean()) if (~flag).any() else math.nan,
           p + "flagged_dice": float(dice[flag].mean()) if flag.any() else math.nan}
    for key, fail in (("recall_dice08", dice < 0.8), ("recall_dsb03", dsb < 0.3)):
        out[p + key] = float(flag[fail].mean()) if fail.any() else math.nan
    if held_out:
        unseen = np.array([types.get(r["id"]) == held_out for r in rows])
        out[p + "seen_flagged"] = float(flag[~unseen].mean())
    # with the score the run used, this must be the run's own flag
    if all(r.get("certainty") == r.get(f"score_{score}") for r in rows):
        out[p + "differs_from_run"] = float((flag != np.array([r["needs_review"] == "True" for r in rows])).sum())
    return out


def val_figures(rows: list[dict[str, str]]) -> dict[str, float]:
    """Each score's Spearman with Dice and failure AUROC (Dice < 0.8) on a run's validation images (the
    review-threshold pass, `uncertainty/val_images.csv`): where the default score is chosen."""
    from nucseg.uncertainty.scores import failure_auroc, spearman

    dice = np.array([_float(r.get("dice_mc")) for r in rows])
    out: dict[str, float] = {"val/n_images": float(dice.size), "val/failures_dice08": float((dice < 0.8).sum())}
    for name in SCORES:
        score = np.array([_float(r.get(f"score_{name}")) for r in rows])
        out[f"val/{name}/spearman_dice"] = spearman(score, dice)
        out[f"val/{name}/auroc_dice08"] = failure_auroc(score, dice, 0.8)
    return out


def write_table(runs: Path, out: Path) -> None:
    from nucseg.utils.atomic import atomic_write_text

    types, settings = image_types(), review_settings()
    per_run: dict[str, dict[str, dict[str, float]]] = {}
    for run in sorted(p for p in runs.iterdir() if (p / "per_image.csv").is_file() and (p / "metrics.json").is_file()):
        arm = run.name.rsplit("_seed", 1)[0]
        rows = list(csv.DictReader((run / "per_image.csv").open()))
        metrics = json.loads((run / "metrics.json").read_text())
        figures = run_figures(rows, metrics, types, None if arm == "grouped" else arm)
        for val_csv in (run / "uncertainty" / "val_images.csv", run / "val_images.csv"):
            if val_csv.is_file():
                val_rows = list(csv.DictReader(val_csv.open()))
                figures.update(val_figures(val_rows))
                for score in REVIEW_SCORES:
                    figures.update(review_figures(rows, val_rows, score, settings, types,
                                                  None if arm == "grouped" else arm))
                break
        per_run.setdefault(arm, {})[run.name] = figures
    summary: dict[str, dict[str, list[float]]] = {}
    for arm, by_run in per_run.items():
        keys = sorted({k for f in by_run.values() for k in f})
        summary[arm] = {}
        for k in keys:
            vals = np.array([f.get(k, math.nan) for f in by_run.values()], dtype=float)
            ok = vals[np.isfinite(vals)]
            summary[arm][k] = [float(ok.mean()) if ok.size else math.nan,
                               float(ok.std(ddof=1)) if ok.size > 1 else math.nan, int(ok.size)]
            if k.startswith("val/") and k.endswith("/spearman_dice"):
                summary[arm][f"{k}/runs"] = [float(v) for v in ok]
    out.mkdir(parents=True, exist_ok=True)
    if out.resolve() != runs.resolve().parent:  # keep each run's small records: `table OUT/runs` redoes the table
        for arm_runs in per_run.values():
            for name in arm_runs:
                dest = out / "runs" / name
                dest.mkdir(parents=True, exist_ok=True)
                for rel in ("per_image.csv", "metrics.json", "uncertainty/trust.json", "uncertainty/val_images.csv"):
                    if (runs / name / rel).is_file():
                        atomic_write_text(dest / Path(rel).name, (runs / name / rel).read_text())
    atomic_write_text(out / "table.json", json.dumps({"runs": per_run, "mean_sd_n": summary}, indent=1) + "\n")
    atomic_write_text(out / "table.md", markdown(summary))
    print(markdown(summary))


def _ms(summary: dict, arm: str, key: str, digits: int = 3) -> str:
    v = summary.get(arm, {}).get(key)
    if not v or not math.isfinite(v[0]):
        return "—"
    sd = f" ± {v[1]:.{digits}f}" if math.isfinite(v[1]) else ""
    return f"{v[0]:.{digits}f}{sd}"


def markdown(summary: dict) -> str:
    arms = [a for a in ("grouped", "stained", "brightfield") if a in summary]
    seeds = {a: summary[a]["dice"][2] for a in arms}
    lines = ["# Trust protocol: candidate certainty scores x protocols (mean ± sd over seeds)", "",
             "Arms: " + ", ".join(f"{a} ({seeds[a]} seeds)" for a in arms)
             + "; grouped = acquisition-grouped split, stained / brightfield = that imaging type left out of "
               "training and validation. `ood` is minus the OOD score, ranked like a certainty.", "",
             "| arm | test images | Dice | DSB | failures Dice<0.8 | failures DSB<0.3 |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {_ms(summary, a, 'n_images', 0)} | {_ms(summary, a, 'dice')} | {_ms(summary, a, 'dsb_score')} "
              f"| {_ms(summary, a, 'failures_dice08', 1)} | {_ms(summary, a, 'failures_dsb03', 1)} |" for a in arms]
    lines += ["", "On the validation images (where the default score is chosen; the review-threshold pass, "
              f"{_ms(summary, arms[0], 'val/n_images', 0)} per run, "
              f"{_ms(summary, arms[0], 'val/failures_dice08', 1)} with Dice < 0.8 in the {arms[0]} arm): "
              "Spearman of each score with Dice, mean ± sd over seeds", "",
              "| score | " + " | ".join(arms) + " | all runs |", "|---|" + "---|" * (len(arms) + 1)]
    for name in SCORES:
        pooled = [v for a in arms for v in summary[a].get(f"val/{name}/spearman_dice/runs", [])]
        all_runs = f"{np.mean(pooled):.3f} ± {np.std(pooled, ddof=1):.3f}" if len(pooled) > 1 else "—"
        lines.append(f"| {name} | " + " | ".join(_ms(summary, a, f"val/{name}/spearman_dice") for a in arms)
                     + f" | {all_runs} |")
    cols = [("spearman_dice", "Spearman Dice"), ("spearman_dsb", "Spearman DSB"), ("auroc_dice08", "AUROC Dice<0.8"),
            ("auroc_dsb03", "AUROC DSB<0.3"), ("kept_dice_10", "kept / flagged Dice @10 %"),
            ("kept_dice_25", "kept / flagged Dice @25 %")]
    lines += ["", "| score | arm | " + " | ".join(c for _, c in cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name in (*SCORES, "ood"):
        for a in arms:
            cells = []
            for key, _ in cols:
                if key.startswith("kept_dice"):
                    b = key.rsplit("_", 1)[1]
                    cells.append(f"{_ms(summary, a, f'{name}/{key}')} / {_ms(summary, a, f'{name}/flagged_dice_{b}')}")
                else:
                    cells.append(_ms(summary, a, f"{name}/{key}"))
            lines.append(f"| {name} | {a} | " + " | ".join(cells) + " |")
    lines += ["", "| arm | OOD AUROC (unseen type) | unseen: Dice / flagged / unlike-training | seen: flagged / "
              "unlike-training | all flagged |", "|---|---|---|---|---|"]
    for a in arms:
        lines.append(f"| {a} | {_ms(summary, a, 'ood/auroc_unseen_type')} | {_ms(summary, a, 'unseen/dice')} / "
                     f"{_ms(summary, a, 'unseen/flagged_fraction')} / {_ms(summary, a, 'unseen/unlike_fraction')} | "
                     f"{_ms(summary, a, 'seen/flagged_fraction')} / {_ms(summary, a, 'seen/unlike_fraction')} | "
                     f"{_ms(summary, a, 'flagged_fraction')} |")
    lines += ["", "Pixel ECE of the test images, uncalibrated and with three temperature rules: T of the validation "
              "images for all; T of validation and perturbed copies pooled, for all; shift calibration (the default): "
              "T of validation, and T of the perturbed copies for images unlike the training data:", "",
              "| arm | ECE uncalibrated | T validation | T pooled | shift calibration | T validation / pooled / "
              "perturbed |", "|---|---|---|---|---|---|"]
    lines += [f"| {a} | {_ms(summary, a, 'ece', 4)} | {_ms(summary, a, 'ece_calibrated_val', 4)} | "
              f"{_ms(summary, a, 'ece_calibrated_pooled', 4)} | {_ms(summary, a, 'ece_calibrated', 4)} | "
              f"{_ms(summary, a, 'temperature', 2)} / {_ms(summary, a, 'temperature_pooled', 2)} / "
              f"{_ms(summary, a, 'temperature_unlike', 2)} |" for a in arms]
    lines += ["", "The review flag as predict raises it (`needs_review`: certainty below the review threshold "
              "chosen on the run's validation images, or unlike the training data), with each score as the "
              "certainty (recomputed from the rows by the callback's rule; for the score a run used it equals "
              "the run's own flag):", "",
              "| certainty | arm | flagged | Dice kept / flagged | failures Dice<0.8 flagged | failures DSB<0.3 "
              "flagged | seen type flagged |", "|---|---|---|---|---|---|---|"]
    for score in REVIEW_SCORES:
        p = f"review_{score}/"
        lines += [f"| {score} | {a} | {_ms(summary, a, p + 'flagged_fraction')} | {_ms(summary, a, p + 'kept_dice')}"
                  f" / {_ms(summary, a, p + 'flagged_dice')} | {_ms(summary, a, p + 'recall_dice08')} | "
                  f"{_ms(summary, a, p + 'recall_dsb03')} | {_ms(summary, a, p + 'seen_flagged')} |" for a in arms]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    r.add_argument("--arms", nargs="+", choices=list(ARMS), default=["stained", "brightfield", "grouped"])
    r.add_argument("--experiment", default="trust_cpu")
    r.add_argument("overrides", nargs="*")
    t = sub.add_parser("table")
    t.add_argument("runs", type=Path)
    t.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.cmd == "run":
        run_arms(args)
    else:
        write_table(args.runs, args.out)


if __name__ == "__main__":
    main()
