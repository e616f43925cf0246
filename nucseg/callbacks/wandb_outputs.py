"""What a finished run wrote, on W&B (a no-op without a WandbLogger; wandb is imported only with one):

- `checkpoints/model.ckpt` as the model artifact `model-<run id>` (aliases `tested`, `latest`), its metadata
  the settings stored in it (tuned post-processing, review threshold and its rule, temperatures, OOD
  threshold), the test metrics, the machine and the nucseg version;
- `per_image.csv` as the table `test/per_image` (every run, with or without uncertainty);
- the report figures (`figures/*.png`: training curves, best / worst test images, certainty vs Dice, ...) as
  the images `figures/<name>`, once.

The entry point calls `log_run_outputs` after it wrote those files (model.ckpt is published after the test,
so no Lightning hook sees it); the callback carries the switches of `conf/callbacks/wandb_outputs.yaml` and notes
in `on_test_end` whether, and which checkpoint, this process tested, so that files an earlier launch left in the
run directory are never logged as this run's.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from nucseg.utils.checkpoint import MODEL_FILE
from nucseg.utils.run_lifecycle import wandb_experiments
from nucseg.utils.version import package_version

__all__ = ["WandbRunOutputs", "log_run_outputs", "machine_info", "model_metadata", "read_table"]

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
PER_IMAGE_FILE = "per_image.csv"
REVIEW_RECORD = Path("uncertainty") / "review_threshold.json"


class WandbRunOutputs(L.Callback):
    """Switches for what `log_run_outputs` sends to W&B after the run (each on by default)."""

    def __init__(self, model: bool = True, per_image: bool = True, figures: bool = True,
                 aliases: Sequence[str] = ("tested", "latest")):
        self.model, self.per_image, self.figures, self.aliases = model, per_image, figures, list(aliases)
        self._tested = False  # the test ran in this process: per_image.csv is this run's, not an earlier launch's
        self._tested_ckpt: str | None = None  # the checkpoint it tested, which model.ckpt is published from

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tested, self._tested_ckpt = True, str(trainer.ckpt_path) if trainer.ckpt_path else None

    def log_outputs(self, trainer: L.Trainer, run_dir: str | Path, metrics: Mapping[str, Any]) -> None:
        """Log what is switched on and exists in `run_dir`, to every W&B run of the trainer (rank 0 only)."""
        runs = wandb_experiments(trainer) if trainer.is_global_zero else []
        if not runs:
            return
        import wandb

        run_dir = Path(run_dir)
        payload: dict[str, Any] = {}
        table = run_dir / PER_IMAGE_FILE
        if self.per_image and self._tested and table.is_file():
            columns, rows = read_table(table)
            payload["test/per_image"] = wandb.Table(columns=columns, data=rows)
        if self.figures:
            for png in sorted((run_dir / FIGURES_DIR).glob("*.png")):
                payload[f"{FIGURES_DIR}/{png.stem}"] = wandb.Image(str(png), caption=png.name)
        model = run_dir / "checkpoints" / MODEL_FILE
        meta = None
        if self.model and self._tested_ckpt and model.is_file():
            meta = model_metadata(model, run_dir, metrics, trainer, tested_from=self._tested_ckpt)
        for run in runs:
            if payload:
                run.log(payload)
            if meta is not None:
                artifact = wandb.Artifact(name=f"model-{run.id}", type="model", metadata=meta,
                                          description="the tested model.ckpt: weights and the settings chosen for "
                                                      "them (nucseg predict / evaluate / export read it)")
                artifact.add_file(str(model), name=MODEL_FILE)
                run.log_artifact(artifact, aliases=self.aliases)
        log.info("W&B: %s%s", ", ".join(payload) or "nothing logged",
                 f"; model artifact model-<run id> ({', '.join(self.aliases)})" if meta is not None else "")


def log_run_outputs(callbacks: Sequence[Any], trainer: L.Trainer, run_dir: str | Path,
                    metrics: Mapping[str, Any]) -> None:
    """Call each `WandbRunOutputs` among `callbacks` (none configured: nothing is logged)."""
    for cb in callbacks:
        if isinstance(cb, WandbRunOutputs):
            cb.log_outputs(trainer, run_dir, metrics)


def model_metadata(model_path: str | Path, run_dir: str | Path, metrics: Mapping[str, Any],
                   trainer: L.Trainer | None = None, tested_from: str | Path | None = None) -> dict[str, Any]:
    """The artifact's metadata: what `model_path` stores for prediction (post-processing with its tuning
    summary, review threshold, temperatures, OOD threshold; not the density itself), the rule that chose the
    review threshold (`<run>/uncertainty/review_threshold.json`), the test metrics, machine and version."""
    data = torch.load(model_path, map_location="cpu", weights_only=True)
    hp = data.get("hyper_parameters") or {}
    unc = dict(hp.get("uncertainty") or {})
    ood = dict(hp.get("ood") or {})
    review_path = Path(run_dir) / REVIEW_RECORD
    review = json.loads(review_path.read_text()) if review_path.is_file() else {}
    meta = {
        "nucseg_version": package_version(),
        "tested_checkpoint": Path(tested_from).name if tested_from else None,  # e.g. epoch_012.ckpt
        "epoch": data.get("epoch"),
        "global_step": data.get("global_step"),
        "net": {k: v for k, v in dict(hp.get("net") or {}).items() if k in ("arch", "encoder_name", "classes")},
        "threshold": hp.get("threshold"),
        "postprocess": dict(hp.get("postprocess") or {}),
        "uncertainty_method": unc.get("method"),
        "review_threshold": unc.get("review_threshold"),
        "review_rule": review.get("rule"),
        "calibration": dict(hp.get("calibration") or {}),
        "ood_threshold": ood.get("threshold") if ood.get("density") else None,
        "metrics": {k: _finite(v) for k, v in sorted(metrics.items()) if k.startswith("test/")},
        "machine": machine_info(trainer),
    }
    return json.loads(json.dumps(meta, default=str))  # plain JSON values (W&B stores metadata as JSON)


def machine_info(trainer: L.Trainer | None = None) -> dict[str, Any]:
    """The host in a few words: the accelerator that ran the test (its name on a GPU), CPU model and cores."""
    device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
    cpu = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"device": str(device), "gpu": gpu, "cpu": cpu, "cpu_count": os.cpu_count(), "host": platform.node()}


def read_table(path: str | Path) -> tuple[list[Any], list[list[Any]]]:
    """A CSV as (columns, rows): a column whose cells all read as numbers (or True / False) holds numbers (or
    booleans), `id` stays text (a hex id such as 12e4 is no number), empty cells are None (W&B sorts them)."""
    with Path(path).open(newline="") as f:
        reader = csv.reader(f)
        columns: list[Any] = next(reader, [])
        rows = [row + [""] * (len(columns) - len(row)) for row in reader]
    for j, name in enumerate(columns):
        cells = [row[j] for row in rows]
        if name != "id":
            for i, value in enumerate(_column(cells)):
                rows[i][j] = value
    return columns, [[None if v == "" else v for v in row] for row in rows]


def _column(cells: list[str]) -> list[Any]:
    filled = [c for c in cells if c != ""]
    for kind in (int, float):
        try:
            [kind(c) for c in filled]
        except ValueError:
            continue
        return [kind(c) if c != "" else "" for c in cells]
    if set(filled) <= {"True", "False"}:
        return [c == "True" if c != "" else "" for c in cells]
    return cells


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v
