"""`python -m nucseg.predict ckpt_path=... input=DIR_OR_FILE output=DIR`: segment, count and measure nuclei
in new images of any size and bit depth, with a checkpoint alone.

Per image: `<stem>_labels.tif` (instance labels, uint16 or uint32; Fiji/napari read them), `<stem>_prob.tif`
(float32 foreground probability, calibrated), `<stem>_overlay.png` (nucleus outlines), for models with an
uncertainty method `<stem>_uncertainty.tif` (per-pixel maps), and for an image flagged for review
`<stem>_review.png` (image, outlines, uncertainty and the reason). Per run: `summary.csv` (one row per image,
with the certainty, the out-of-distribution score, a needs_review flag and its reason, the count of NaN / inf
pixels and a warning for constant images), `nuclei.csv`
(one row per nucleus), `errors.csv` (inputs that could not be read or processed, by name), and with `rle=true`
a Kaggle `submission.csv`; with `stack=true`, `probabilities.tif`, every input's probability as one float32
z-stack in natural name order (ISBI 2012's results format). A bad file does not stop the run; the exit status
is non-zero only when no image could be processed; bad settings stop it before any work (exit status 2). The
engine is `nucseg.Predictor`.
A rerun skips images whose outputs are all there (`overwrite=true` redoes them; nucseg.inference.records);
`shard=i/n` predicts part i of n of the inputs, `merge=true` joins the shards' tables (nucseg.inference.shards).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.checks import check_config
from nucseg.inference import records
from nucseg.inference.batch import BatchResult, predict_into
from nucseg.inference.inputs import list_inputs, require_images, unique_stems
from nucseg.inference.predictor import Predictor
from nucseg.inference.shards import TABLES, merge_shards, select_shard
from nucseg.inference.writers import write_probability_stack, write_tables
from nucseg.utils.config import CONF_DIR
from nucseg.utils.errors import ConfigError, friendly_errors
from nucseg.utils.extras import check_overrides
from nucseg.utils.files import natural_key

log = logging.getLogger(__name__)


@dataclass
class PredictReport:
    """Rows of the tables written; `predicted` / `resumed`: images done by this run / found done already."""

    summary: list[dict] = field(default_factory=list)
    nuclei: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    submission: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    predicted: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    shards: int = 0


def run_predict(cfg: DictConfig) -> PredictReport:
    """Predict every image under `cfg.input` (or part `cfg.shard` of them) into `cfg.output`, skipping images
    done by an earlier run unless `cfg.overwrite`; per-file failures are recorded, not raised. With
    `cfg.merge`, join the shards' tables instead. Bad settings raise ConfigError before any work."""
    if cfg.get("merge", False):
        return run_merge(cfg)
    check_config(cfg, "predict")
    if cfg.get("stack", False) and cfg.get("shard") is not None:
        raise ConfigError(f"stack=true with shard={cfg.shard!r}: the stack holds every input in order; predict "
                          "without shard (or predict the shards, then once more with stack=true: done images "
                          "are not predicted again)")
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_inputs(cfg.input, recursive=bool(cfg.get("recursive", False)), output=out_dir)
    report = PredictReport(skipped=[str(s) for s in skipped])
    for s in skipped:
        log.info("skipped %s: not an image file (expected one of .png, .tif, .tiff, .jpg, .jpeg, .bmp)", s)
    require_images(files, cfg.input)
    files, stems, suffix = select_shard(files, unique_stems(files), cfg.get("shard"))
    settings = records.run_settings(cfg.ckpt_path, {k: _plain(cfg.get(k)) for k in records.SETTING_KEYS})
    done = {} if cfg.get("overwrite", False) else records.done_images(out_dir, files, stems, settings)
    report.resumed = list(done)
    records.remove_stale_temporaries(out_dir, [f"{t}{suffix}.csv" for t in TABLES])
    todo = [(f, s) for f, s in zip(files, stems, strict=True) if s not in done]
    predictor = _load_predictor(cfg, len(todo)) if todo else None  # a bad checkpoint: no table is written
    try:
        if predictor is not None:
            predict_into(predictor, todo, out_dir, settings, done, overlay=bool(cfg.get("overlay", True)),
                         rle=bool(cfg.get("rle")), progress=bool(cfg.get("progress", True)),
                         result=BatchResult(report.predicted, report.errors))
        if cfg.get("stack", False):
            _write_stack(out_dir, stems, report)
    finally:  # what was done is written even when the run is interrupted
        report.summary, report.nuclei, report.submission = records.table_rows(done[s] for s in stems if s in done)
        write_tables(out_dir, report.summary, report.nuclei, report.errors,
                     report.submission if cfg.get("rle", False) else None, suffix=suffix)
    return report


def _write_stack(out_dir: Path, stems: list[str], report: PredictReport) -> None:
    """stack=true: probabilities.tif of every input in natural name order (slice 2 before slice 10); not written
    (an error line and a row of errors.csv) when an input has no probability map."""
    try:
        path = write_probability_stack(out_dir, sorted(stems, key=natural_key))
    except ValueError as exc:
        log.error("stack=true: %s", exc)
        report.errors.append({"file": str(out_dir / "probabilities.tif"), "error": str(exc)})
        return
    log.info("wrote %s: %d slices in natural name order", path, len(stems))


def _load_predictor(cfg: DictConfig, n_images: int) -> Predictor:
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, device=cfg.get("device", "auto"), tile=cfg.tile, overlap=cfg.overlap, blend=cfg.blend,
        tile_batch_size=cfg.get("tile_batch_size"), tta=_plain(cfg.get("tta")),
        postprocess=_plain(cfg.get("postprocess")), uncertainty=_plain(cfg.get("uncertainty")),
        ood_threshold=cfg.get("ood_threshold"))
    log.info("checkpoint %s: targets=%s, uncertainty=%s, %d image(s) to predict", cfg.ckpt_path,
             predictor.module.hparams.get("targets"), predictor.method, n_images)
    return predictor


def run_merge(cfg: DictConfig) -> PredictReport:
    """`merge=true`: the final tables of `cfg.output` from the tables of its shards (see nucseg.inference.shards)."""
    check_config(cfg, "predict_merge")
    if cfg.get("shard") is not None:
        raise ConfigError(f"shard={cfg.shard!r}: merge=true joins the tables of all shards; leave shard out")
    merged = merge_shards(Path(cfg.output))
    log.info("merged the tables of %d shards into %s", merged.shards, cfg.output)
    return PredictReport(summary=list(merged.summary), errors=list(merged.errors), shards=merged.shards)


def _plain(node: Any) -> Any:
    """A config node as plain Python (dict / list), for the library."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with friendly_errors():
        report = run_predict(cfg)
    n_ok, n_err = len(report.summary), len(report.errors)
    total = sum(int(r["nucleus_count"]) for r in report.summary)
    done = (f"merged {report.shards} shards: " if report.shards else "") + f"{n_ok} image(s)" + (
        f" ({len(report.resumed)} done before)" if report.resumed else "")
    print(f"{done}, {total} nuclei -> {cfg.output}"
          + (f"; {n_err} failed (see errors.csv): {', '.join(Path(e['file']).name for e in report.errors)}"
             if n_err else ""))
    if n_ok == 0 and n_err:
        log.error("no input image could be processed")
        sys.exit(1)


if __name__ == "__main__":
    check_overrides(sys.argv[1:])  # one line, not a Hydra traceback, when an override needs a missing extra
    main()
