"""`python -m nucseg.predict ckpt_path=... input=DIR_OR_FILE output=DIR`: segment, count and measure nuclei
in new images of any size and bit depth, with a checkpoint alone.

Per image: `<stem>_labels.tif` (instance labels, uint16 or uint32; Fiji/napari read them), `<stem>_prob.tif`
(float32 foreground probability), `<stem>_overlay.png` (nucleus outlines), and for models with an uncertainty
method `<stem>_uncertainty.tif` (per-pixel maps). Per run: `summary.csv` (one row per image, with the certainty
and a needs_review flag), `nuclei.csv` (one row per nucleus), `errors.csv` (inputs that could not be read or
processed, by name), and with `rle=true` a Kaggle `submission.csv`. A bad file does not stop the run; the exit
status is non-zero only when no image could be processed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor

import nucseg.utils  # noqa: F401  (registers config resolvers)
from nucseg.data.io import atomic_write_bytes, atomic_write_text, is_image_file, read_image, read_raw
from nucseg.inference.sliding_window import sliding_window_inference
from nucseg.inference.tta import tta_mean
from nucseg.models.module import SegmentationModule, load_module

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = ("_labels.tif", "_prob.tif", "_uncertainty.tif", "_overlay.png")
SUMMARY_COLUMNS = ("image", "file", "height", "width", "nucleus_count", "mean_area", "certainty", "needs_review")
NUCLEI_COLUMNS = ("image", "nucleus_id", "area", "centroid_y", "centroid_x", "equivalent_diameter",
                  "eccentricity", "mean_intensity")
ERROR_COLUMNS = ("file", "error")


# ----------------------------------------------------------------------------------------------- inputs
def list_inputs(path: str | Path, recursive: bool = False, output: str | Path | None = None
                ) -> tuple[list[Path], list[Path]]:
    """(image files, skipped non-image files) of a file or directory, sorted; our own outputs are left out."""
    path = Path(path)
    if path.is_file():
        return ([path], []) if is_image_file(path) else ([], [path])
    if not path.is_dir():
        raise FileNotFoundError(f"input: no such file or directory: {path}")
    out_dir = Path(output).resolve() if output else None
    images, skipped = [], []
    for f in sorted(path.rglob("*") if recursive else path.iterdir()):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(path).parts):
            continue  # hidden files and folders (.DS_Store, .hydra/)
        if out_dir and f.parent.resolve() == out_dir and f.name.endswith(OUTPUT_SUFFIXES):
            continue  # outputs of an earlier run into the same folder
        (images if is_image_file(f) else skipped).append(f)
    return images, skipped


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Output names: the file stem, made unique with the suffix (and a counter) when two inputs share it."""
    seen: set[str] = set()
    stems = []
    for f in files:
        stem = f.stem
        if stem in seen:
            stem = f"{f.stem}_{f.suffix.lstrip('.').lower()}"
        base, k = stem, 2
        while stem in seen:
            stem, k = f"{base}_{k}", k + 1
        seen.add(stem)
        stems.append(stem)
    return stems


# ----------------------------------------------------------------------------------------------- model
def _merge(base: dict | None, overrides: dict | None) -> dict:
    """The checkpoint's settings with the non-null config overrides on top."""
    out = dict(base or {})
    out.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return out


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class Prediction:
    probs: np.ndarray  # (K, H, W) float32
    labels: np.ndarray  # (H, W) int32
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (H, W) float32
    certainty: float | None = None


class Predictor:
    """A loaded model plus the inference settings: image (HxWx3 uint8, normalised as in training) -> nuclei."""

    def __init__(self, module: SegmentationModule, device: str | torch.device = "cpu", tile: int = 512,
                 overlap: float = 0.25, blend: str = "gaussian", tile_batch_size: int = 1,
                 tta: bool | str | Sequence[str] | None = False, postprocess: dict | None = None,
                 uncertainty: dict | None = None):
        self.module = module.eval()
        self.device = torch.device(device)
        self.module.to(self.device)
        hp = module.hparams
        self.clahe = bool(hp.get("clahe", False))
        self.normalization = dict(hp.get("normalization") or {})
        self.postprocess = _merge(hp.get("postprocess"), postprocess)
        self.uncertainty, self.members = self._uncertainty_settings(uncertainty)
        self.method = self.uncertainty["method"] if self.uncertainty else "none"
        self.tile, self.overlap, self.blend, self.tile_batch_size = tile, overlap, blend, tile_batch_size
        self.tta = None if tta in (False, None, "none", "false") else ("all" if tta is True else tta)
        if isinstance(self.tta, str) and self.tta not in ("flips", "all"):
            raise ValueError(f"tta: expected false, flips, all or a list of op names, got {tta!r}")
        if self.method != "none" and self.review_threshold() is None:
            log.warning("uncertainty.review_threshold of the checkpoint is %r, not a number: needs_review is left "
                        "empty; pass uncertainty.review_threshold=<value> to flag uncertain images",
                        (self.uncertainty or {}).get("review_threshold"))
        if self.tta and self.method != "none":
            log.info("tta=%s ignored: the model's uncertainty method (%s) already averages its samples",
                     self.tta, self.method)
        from nucseg.data.transforms import preprocessing

        pre = preprocessing(self.clahe)
        self._preprocess: Callable[[np.ndarray], np.ndarray] = (
            (lambda img: pre[0](image=img)["image"]) if pre else (lambda img: img))

    def _uncertainty_settings(self, overrides: dict | None) -> tuple[dict | None, list]:
        """The checkpoint's uncertainty settings with the config's overrides; None for one deterministic pass
        (then a model's MC dropout is switched off)."""
        from nucseg.models.mc_dropout import set_mc_dropout
        from nucseg.uncertainty.sampling import load_ensemble, resolve_settings

        net = self.module.net
        merged = _merge(self.module.hparams.get("uncertainty"), overrides)
        # method=none asked for explicitly: no sampling, even for a model with MC dropout
        off = (overrides or {}).get("method") == "none"
        settings = None if off else resolve_settings(merged, net)
        set_mc_dropout(net, settings is not None and settings["method"] == "mc_dropout")
        members: list = []
        if settings and settings["method"] == "ensemble":
            members = load_ensemble(settings.get("checkpoints") or [], device=self.device)
            if settings.get("include_self", True):
                members = [net, *members]
        return settings, members

    def read(self, path: str | Path) -> np.ndarray:
        """File -> RGB uint8 as the model saw it in training (percentile normalisation, optional CLAHE)."""
        return self._preprocess(read_image(path, **self.normalization))

    def _probs_fn(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.module.predict_logits(x))

    def _window(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return sliding_window_inference(fn, x, tile=self.tile, overlap=self.overlap, blend=self.blend,
                                        pad_multiple=int(self.module.pad_multiple),
                                        tile_batch_size=self.tile_batch_size, output_device="cpu")

    @torch.no_grad()
    def probabilities(self, image: np.ndarray) -> tuple[Tensor, Tensor | None]:
        """(1, K, H, W) foreground(+contour) probabilities, and the (T, 1, K, H, W) uncertainty samples."""
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)[None]
        x = x.to(self.device)
        if self.method == "none":
            fn = self._probs_fn if not self.tta else (lambda t: tta_mean(self._probs_fn, t, self.tta))
            return self._window(fn, x), None
        samples = self._window_samples(x)
        return samples.mean(0), samples

    def _window_samples(self, x: Tensor) -> Tensor:
        """Uncertainty samples tile by tile: the T samples are stacked on the channel axis so that the
        sliding window blends each sample like any other output channel. Each tile is sampled alone under the
        same seed, so sample t uses the same dropout masks in every tile (one coherent model draw per sample)."""
        from nucseg.uncertainty.sampling import sample_probs

        assert self.uncertainty is not None
        u = self.uncertainty
        shape: dict[str, int] = {}

        def fn(tiles: Tensor) -> Tensor:
            outs = []
            for tile in tiles.split(1):
                s = sample_probs(self.module.net, tile, u["method"], int(u.get("samples") or 1),
                                 seed=u.get("seed"), models=self.members, batch_size=u.get("batch_size"),
                                 tta_ops=u.get("tta_ops") or "all")  # (T, 1, K, h, w)
                shape["T"], shape["K"] = s.shape[0], s.shape[2]
                outs.append(s.transpose(0, 1).reshape(1, -1, *s.shape[-2:]))
            return torch.cat(outs)

        out = self._window(fn, x)  # (B, T*K, H, W)
        return out.reshape(x.shape[0], shape["T"], shape["K"], *x.shape[-2:]).transpose(0, 1)

    def review_threshold(self) -> float | None:
        """needs_review = certainty < this; None when the checkpoint holds no numeric threshold."""
        value = (self.uncertainty or {}).get("review_threshold")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def __call__(self, image: np.ndarray) -> Prediction:
        from nucseg.instances.watershed import probs_to_instances

        probs, samples = self.probabilities(image)
        probs_np = probs[0].float().cpu().numpy()
        labels = probs_to_instances(probs_np, **self.postprocess)
        pred = Prediction(probs=probs_np, labels=labels)
        if samples is not None:
            from nucseg.uncertainty.scores import image_certainty, pixel_uncertainty

            maps = pixel_uncertainty(samples)
            pred.uncertainty = {k: _foreground_map(v) for k, v in maps.items() if k != "mean"}
            thr = float(self.module.threshold)
            pred.certainty = float(image_certainty(samples, thr)[0])
        return pred


def _foreground_map(t: Tensor) -> np.ndarray:
    """A (1, K, H, W) / (1, H, W) / (H, W) map -> the (H, W) foreground map as float32."""
    a = t.detach().float().cpu().numpy()
    while a.ndim > 2:
        a = a[0]
    return a.astype(np.float32)


# ----------------------------------------------------------------------------------------------- outputs
def tiff_bytes(array: np.ndarray, **kwargs: Any) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def label_dtype(labels: np.ndarray) -> type:
    return np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32


def write_image_outputs(out_dir: Path, stem: str, image: np.ndarray, pred: Prediction, overlay: bool = True
                        ) -> None:
    """The per-image files, each written atomically."""
    from nucseg.viz.overlays import outline_overlay, save_png

    dtype = label_dtype(pred.labels)
    # ImageJ hyperstacks hold 8/16-bit and float32; uint32 labels are written as a plain TIFF
    atomic_write_bytes(out_dir / f"{stem}_labels.tif",
                       tiff_bytes(pred.labels.astype(dtype), imagej=dtype == np.uint16))
    atomic_write_bytes(out_dir / f"{stem}_prob.tif", tiff_bytes(pred.probs[0].astype(np.float32), imagej=True))
    if pred.uncertainty:
        names = list(pred.uncertainty)
        stack = np.stack([pred.uncertainty[n] for n in names]).astype(np.float32)
        atomic_write_bytes(out_dir / f"{stem}_uncertainty.tif",
                           tiff_bytes(stack, imagej=True, metadata={"axes": "ZYX", "Labels": names}))
    if overlay:
        save_png(out_dir / f"{stem}_overlay.png", outline_overlay(image, pred.labels))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return round(v, 6)
    return v


def submission_rows(stem: str, labels: np.ndarray) -> list[dict]:
    """Kaggle rows (ImageId, EncodedPixels): one per nucleus; an image without nuclei gets one empty row."""
    from nucseg.data.rle import labels_to_rles

    rles = labels_to_rles(labels)
    return [{"ImageId": stem, "EncodedPixels": r} for r in rles] or [{"ImageId": stem, "EncodedPixels": ""}]


# ----------------------------------------------------------------------------------------------- run
@dataclass
class PredictReport:
    summary: list[dict] = field(default_factory=list)
    nuclei: list[dict] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)
    submission: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def predict_file(predictor: Predictor, path: Path, stem: str, out_dir: Path, overlay: bool = True,
                 rle: bool = False) -> tuple[dict, list[dict], list[dict]]:
    """Segment one file and write its outputs; return its summary row, nucleus rows and submission rows."""
    from nucseg.instances.measure import measure_instances

    image = predictor.read(path)
    raw = read_raw(path)  # intensities in the file's own units (e.g. 16-bit counts) for mean_intensity
    if raw.ndim == 3 and raw.shape[-1] in (2, 4):
        raw = raw[..., : 1 if raw.shape[-1] == 2 else 3]  # drop alpha
    pred = predictor(image)
    write_image_outputs(out_dir, stem, image, pred, overlay=overlay)
    nuclei = measure_instances(pred.labels, raw)
    areas = [n["area"] for n in nuclei]
    thr = predictor.review_threshold()
    summary = {
        "image": stem, "file": str(path), "height": image.shape[0], "width": image.shape[1],
        "nucleus_count": len(nuclei), "mean_area": float(np.mean(areas)) if areas else 0.0,
        "certainty": pred.certainty,
        "needs_review": (pred.certainty < thr) if (pred.certainty is not None and thr is not None) else None,
    }
    return summary, [{"image": stem, **n} for n in nuclei], submission_rows(stem, pred.labels) if rle else []


def _progress(enabled: bool):
    from rich import progress as rp

    return rp.Progress(rp.TextColumn("[bold]predict[/bold] {task.description}"), rp.BarColumn(),
                       rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), disable=not enabled, transient=False)


def run_predict(cfg: DictConfig) -> PredictReport:
    """Predict every image under `cfg.input` into `cfg.output`; per-file failures are recorded, not raised."""
    out_dir = Path(cfg.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, skipped = list_inputs(cfg.input, recursive=bool(cfg.get("recursive", False)), output=out_dir)
    report = PredictReport(skipped=[str(s) for s in skipped])
    for s in skipped:
        log.info("skipped %s: not an image file (expected one of .png, .tif, .tiff, .jpg, .jpeg, .bmp)", s)
    if not files:
        raise FileNotFoundError(f"input: no image files (.png, .tif, .tiff, .jpg, .jpeg, .bmp) in {cfg.input}")

    module = load_module(cfg.ckpt_path)
    tta = cfg.get("tta")
    tta = list(tta) if isinstance(tta, ListConfig) else tta
    predictor = Predictor(
        module, device=resolve_device(cfg.get("device", "auto")), tile=int(cfg.tile), overlap=float(cfg.overlap),
        blend=cfg.blend, tile_batch_size=int(cfg.get("tile_batch_size", 1)), tta=tta,
        postprocess=_container(cfg.get("postprocess")), uncertainty=_container(cfg.get("uncertainty")),
    )
    log.info("checkpoint %s: targets=%s, uncertainty=%s, %d input image(s)", cfg.ckpt_path,
             module.hparams.get("targets"), predictor.method, len(files))
    stems = unique_stems(files)
    try:
        with _progress(bool(cfg.get("progress", True))) as progress:
            task = progress.add_task("", total=len(files))
            for path, stem in zip(files, stems, strict=True):
                progress.update(task, description=path.name)
                t0 = time.perf_counter()
                try:
                    summary, nuclei, sub = predict_file(predictor, path, stem, out_dir,
                                                        overlay=bool(cfg.get("overlay", True)),
                                                        rle=bool(cfg.get("rle", False)))
                except Exception as exc:  # one bad file must not stop a folder of hundreds
                    log.error("%s: failed: %s", path, exc)
                    report.errors.append({"file": str(path), "error": f"{type(exc).__name__}: {exc}"})
                else:
                    report.summary.append(summary)
                    report.nuclei += nuclei
                    report.submission += sub
                    log.info("%s: %d nuclei in %.1fs%s", path.name, summary["nucleus_count"],
                             time.perf_counter() - t0,
                             "" if summary["certainty"] is None else f", certainty {summary['certainty']:.3f}")
                progress.advance(task)
    finally:  # what was done is written even when the run is interrupted
        write_run_outputs(out_dir, report, rle=bool(cfg.get("rle", False)))
    return report


def write_run_outputs(out_dir: Path, report: PredictReport, rle: bool = False) -> None:
    write_csv(out_dir / "summary.csv", SUMMARY_COLUMNS, report.summary)
    write_csv(out_dir / "nuclei.csv", NUCLEI_COLUMNS, report.nuclei)
    write_csv(out_dir / "errors.csv", ERROR_COLUMNS, report.errors)
    if rle:
        write_csv(out_dir / "submission.csv", ("ImageId", "EncodedPixels"), report.submission)


def _container(node: Any) -> dict | None:
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


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
