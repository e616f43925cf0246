"""`python -m nucseg.predict ckpt_path=... input=DIR_OR_FILE output=DIR`: segment, count and measure nuclei
in new images of any size and bit depth, with a checkpoint alone.

Per image: `<stem>_labels.tif` (instance labels, uint16 or uint32; Fiji/napari read them), `<stem>_prob.tif`
(float32 foreground probability), `<stem>_overlay.png` (nucleus outlines), and for models with an uncertainty
method `<stem>_uncertainty.tif` (per-pixel maps). Per run: `summary.csv` (one row per image, with the
certainty, a needs_review flag, the count of NaN / inf pixels and a warning for constant images), `nuclei.csv`
(one row per nucleus), `errors.csv` (inputs that could not be read or processed, by name), and with `rle=true`
a Kaggle `submission.csv`. A bad file does not stop the run; the exit status is non-zero only when no image
could be processed; bad settings stop it before any work (exit status 2). The engine is `nucseg.Predictor`.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.inference.inputs import list_inputs, require_images, unique_stems
from nucseg.inference.predictor import Predictor
from nucseg.inference.writers import submission_rows, write_image_outputs, write_tables
from nucseg.utils.progress import progress_bar
from nucseg.utils.validate import check_config

log = logging.getLogger(__name__)


@dataclass
class PredictReport:
    summary: list[dict] = field(default_factory=list)
    nuclei: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    submission: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_predict(cfg: DictConfig) -> PredictReport:
    """Predict every image under `cfg.input` into `cfg.output`; per-file failures are recorded, not raised.

    Bad settings and a missing checkpoint or input raise ConfigError before any work."""
    check_config(cfg, "predict")
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_inputs(cfg.input, recursive=bool(cfg.get("recursive", False)), output=out_dir)
    report = PredictReport(skipped=[str(s) for s in skipped])
    for s in skipped:
        log.info("skipped %s: not an image file (expected one of .png, .tif, .tiff, .jpg, .jpeg, .bmp)", s)
    require_images(files, cfg.input)

    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, device=cfg.get("device", "auto"), tile=cfg.tile, overlap=cfg.overlap, blend=cfg.blend,
        tile_batch_size=cfg.get("tile_batch_size"), tta=_plain(cfg.get("tta")),
        postprocess=_plain(cfg.get("postprocess")), uncertainty=_plain(cfg.get("uncertainty")))
    log.info("checkpoint %s: targets=%s, uncertainty=%s, %d input image(s)", cfg.ckpt_path,
             predictor.module.hparams.get("targets"), predictor.method, len(files))
    rle = bool(cfg.get("rle", False))
    try:
        with progress_bar(bool(cfg.get("progress", True)), "[bold]predict[/bold] ") as progress:
            task = progress.add_task("", total=len(files))
            t0 = time.perf_counter()
            for (path, result), stem in zip(predictor.predict_files(files), unique_stems(files), strict=True):
                if not isinstance(result, Exception):
                    try:
                        write_image_outputs(out_dir, stem, result, overlay=bool(cfg.get("overlay", True)))
                    except Exception as exc:  # one bad file must not stop a folder of hundreds
                        result = exc
                if isinstance(result, Exception):
                    log.error("%s: failed: %s", path, result)
                    report.errors.append({"file": str(path), "error": f"{type(result).__name__}: {result}"})
                else:
                    report.summary.append({"image": stem, "file": str(path), **result.summary()})
                    report.nuclei += [{"image": stem, **n} for n in result.nuclei]
                    report.submission += submission_rows(stem, result.labels) if rle else []
                    log.info("%s: %d nuclei in %.1fs%s", path.name, len(result.nuclei), time.perf_counter() - t0,
                             "" if result.certainty is None else f", certainty {result.certainty:.3f}")
                progress.update(task, advance=1, description=path.name)
                t0 = time.perf_counter()
    finally:  # what was done is written even when the run is interrupted
        write_tables(out_dir, report.summary, report.nuclei, report.errors, report.submission if rle else None)
    return report


def _plain(node: Any) -> Any:
    """A config node as plain Python (dict / list), for the library."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from nucseg.utils.errors import friendly_errors

    with friendly_errors():
        report = run_predict(cfg)
    n_ok, n_err = len(report.summary), len(report.errors)
    total = sum(r["nucleus_count"] for r in report.summary)
    print(f"predicted {n_ok} image(s), {total} nuclei -> {cfg.output}"
          + (f"; {n_err} failed (see errors.csv): {', '.join(Path(e['file']).name for e in report.errors)}"
             if n_err else ""))
    if n_ok == 0:
        log.error("no input image could be processed")
        sys.exit(1)


if __name__ == "__main__":
    main()
