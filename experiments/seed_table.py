"""Mean ± sd over seeds of the jobs of one or more Hydra multiruns, one row per arm (the job's overrides without
`seed`), and whether the arms differ by more than their spread.

    python experiments/seed_table.py outputs/ablate_aug/light outputs/ablate_aug/generalize \
        --metrics val/dsb_score val/dice --out experiments/results/ablate_aug
    python experiments/seed_table.py old=outputs/ablate_preset/old new=outputs/ablate_preset/new ...
    python experiments/seed_table.py \
        resnet18=experiments/results/cpu_preset_seeds/seed_table.json:new lite0=outputs/preset_lite0 ...

Reads each job's `.hydra/overrides.yaml` and `metrics.json`. Ablations read the validation split (`test=false`):
the test split is scored once per recorded run, not per arm.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from nucseg.utils.atomic import atomic_write_text


def jobs(sweep_dir: Path, label: str | None = None) -> list[tuple[str, str, dict]]:
    """(arm, seed, metrics) of each finished job below `sweep_dir`; the arm is `label`, else the job's
    overrides without `seed` (and without `paths.*`, which move files, not results)."""
    out = []
    for metrics in sorted(sweep_dir.glob("**/metrics.json")):
        job = metrics.parent
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
        seed = next((o.split("=", 1)[1] for o in overrides if o.startswith("seed=")), str(config.get("seed", "?")))
        arm = label or " ".join(o for o in overrides if not o.startswith(("seed=", "paths.")))
        out.append((arm, seed, json.loads(metrics.read_text())))
    return out


def summarise(rows: list[tuple[str, str, dict]], metrics: list[str]) -> dict[str, dict]:
    arms: dict[str, dict] = defaultdict(lambda: {"seeds": [], **{m: [] for m in metrics}})
    for arm, seed, m in rows:
        arms[arm]["seeds"].append(seed)
        for k in metrics:
            arms[arm][k].append(float(m.get(k, math.nan)))
    table = {}
    for arm, d in arms.items():
        table[arm] = {"seeds": d["seeds"]}
        for k in metrics:
            v = np.array(d[k], dtype=float)
            table[arm][k] = {"mean": float(np.nanmean(v)),
                             "sd": float(np.nanstd(v, ddof=1)) if v.size > 1 else math.nan,
                             "values": [round(float(x), 4) for x in v]}
    return table


# metrics where lower is better (the arm with the lower mean is the better one)
LOWER_IS_BETTER = ("count_error", "ece", "loss")


def verdict(table: dict[str, dict], metric: str) -> str:
    """'A better than B' when the means differ by more than the larger of the two seed sds, else 'noise'."""
    sign = 1 if metric.rsplit("/", 1)[-1].startswith(LOWER_IS_BETTER) else -1
    arms = sorted(table, key=lambda a: sign * table[a][metric]["mean"])
    if len(arms) < 2:
        return "one arm"
    a, b = table[arms[0]][metric], table[arms[1]][metric]
    spread = max(a["sd"], b["sd"])
    diff = abs(a["mean"] - b["mean"])
    if any(len(table[x]["seeds"]) < 3 for x in arms[:2]):
        return f"fewer than 3 seeds per arm: no claim (difference {diff:.4f})"
    if diff > spread:
        return f"'{arms[0]}' better than '{arms[1]}' by {diff:.4f} (> larger sd {spread:.4f})"
    return f"noise: difference {diff:.4f} <= larger sd {spread:.4f}"


def markdown(table: dict[str, dict], metrics: list[str], against: str | None = None) -> str:
    """The table, then a verdict per metric: between the two best arms, or (`against`) of every other arm
    against that one."""
    lines = ["| arm | seeds | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for arm, d in table.items():
        cells = [f"{d[m]['mean']:.4f} ± {d[m]['sd']:.4f}" for m in metrics]
        lines.append(f"| `{arm}` | {len(d['seeds'])} | " + " | ".join(cells) + " |")
    if against is None:
        lines += ["", *[f"- {m}: {verdict(table, m)}" for m in metrics]]
    else:
        for arm in (a for a in table if a != against):
            pair = {against: table[against], arm: table[arm]}
            lines += ["", f"`{arm}` against `{against}`:", *[f"- {m}: {verdict(pair, m)}" for m in metrics]]
    return "\n".join(lines) + "\n"


def recorded_jobs(table_path: Path, arm: str, label: str | None = None) -> list[tuple[str, str, dict]]:
    """(arm, seed, metrics) of each seed of `arm` in an earlier record's seed_table.json (its per-seed values),
    so a new arm can be set beside runs whose folders are gone. Exits naming the file or arm when absent."""
    if not table_path.is_file():
        raise SystemExit(f"error: {table_path}: no recorded seed table")
    table = json.loads(table_path.read_text())
    if arm not in table:
        raise SystemExit(f"error: {table_path}: no arm {arm!r} (has {', '.join(map(repr, table))})")
    entry = table[arm]
    seeds = [str(x) for x in entry["seeds"]]
    return [(label or arm, seed, {k: v["values"][i] for k, v in entry.items() if k != "seeds"})
            for i, seed in enumerate(seeds)]


def collect(spec: str) -> list[tuple[str, str, dict]]:
    """The jobs of one command-line arm: `PATH`, `LABEL=PATH`, or `LABEL=RECORD.json:ARM` (a recorded arm)."""
    label, _, rest = spec.partition("=")
    file, sep, arm = (rest or spec).rpartition(":")
    if sep and file.endswith(".json"):
        return recorded_jobs(Path(file), arm, label if rest else None)
    return jobs(*arm_spec(spec))


def arm_spec(spec: str) -> tuple[Path, str | None]:
    """(folder, label) of a `PATH` or `LABEL=PATH` argument; an existing folder wins (Hydra sweep folders are
    often named `seed=1`)."""
    label, _, path = spec.partition("=")
    if Path(spec).exists() or not path:
        return Path(spec), None
    if not Path(path).exists():
        raise SystemExit(f"error: {spec}: no folder {path} (expected PATH or LABEL=PATH)")
    return Path(path), label


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sweeps", nargs="+", help="run or sweep folders, each optionally as LABEL=PATH (one arm per "
                    "label; a label given twice joins its folders), or LABEL=RECORD.json:ARM, an arm of an earlier "
                    "record's seed_table.json")
    ap.add_argument("--metrics", nargs="+", default=["val/dsb_score", "val/dice"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--against", default=None, help="an arm's label: judge every other arm against it (default: "
                    "the two best arms)")
    args = ap.parse_args()
    rows = [r for s in args.sweeps for r in collect(s)]
    if not rows:
        raise SystemExit(f"error: no finished jobs (metrics.json) under {', '.join(map(str, args.sweeps))}")
    table = summarise(rows, args.metrics)
    if args.against is not None and args.against not in table:
        raise SystemExit(f"error: --against {args.against}: no such arm (has {', '.join(map(repr, table))})")
    text = markdown(table, args.metrics, args.against)
    print(text)
    if args.out:
        atomic_write_text(args.out / "seed_table.md", text)
        atomic_write_text(args.out / "seed_table.json", json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
