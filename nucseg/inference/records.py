"""Per-image records of `python -m nucseg.predict`, the basis of resuming a killed or extended run.

After an image's outputs are written, `<output>/.records/<stem>.json` is written (atomically, last): the input
file, the settings that decide the outputs, the names of the outputs and the image's table rows (summary,
nuclei, run-length encodings). An image is done when its record matches the current input file and settings
and its outputs are all present; a rerun skips it and takes its rows from the record, so the tables of a
resumed run are those of a clean run. Before an image is (re)done, its record, outputs and any temporary file
a killed write left behind are removed, so a record never describes outputs that are not its own.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nucseg.inference.inputs import OUTPUT_SUFFIXES
from nucseg.inference.writers import submission_rows, write_image_outputs
from nucseg.utils.atomic import atomic_write_text

if TYPE_CHECKING:
    from nucseg.inference.prediction import Prediction

__all__ = ["RECORD_DIR", "SETTING_KEYS", "completed", "done_images", "forget", "make_record",
           "remove_stale_temporaries", "run_settings", "save_record", "table_rows", "write_image"]

log = logging.getLogger(__name__)

RECORD_DIR = ".records"
# config keys whose value changes an image's outputs (device and tile_batch_size only change the speed)
SETTING_KEYS = ("tile", "overlap", "blend", "tta", "postprocess", "uncertainty", "ood_threshold", "overlay", "rle")


def _stamp(path: str | Path) -> list[int]:
    """[size, modification time in ns] of a file: a changed file (retrained checkpoint, replaced image) is
    redone."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _json_roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value))


def run_settings(ckpt_path: str | Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """What decides the outputs of every image: the checkpoint file and the `SETTING_KEYS` of the config
    (`options`: plain Python values)."""
    settings = {"ckpt": str(Path(ckpt_path).resolve()), "ckpt_stamp": _stamp(ckpt_path),
                **{k: options.get(k) for k in SETTING_KEYS}}
    return _json_roundtrip(settings)


def _record_path(out_dir: Path, stem: str) -> Path:
    return out_dir / RECORD_DIR / f"{stem}.json"


def completed(out_dir: Path, stem: str, path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of image `stem` when it is done with these settings (same input file, every output present);
    else None."""
    try:
        record = json.loads(_record_path(out_dir, stem).read_text())
        same = (record["file"] == str(path) and record["source"] == _stamp(path)
                and record["settings"] == settings)
        return record if same and all((out_dir / name).is_file() for name in record["outputs"]) else None
    except (OSError, ValueError, KeyError, TypeError):  # missing, unreadable or not a record: not done
        return None


def done_images(out_dir: Path, files: Sequence[Path], stems: Sequence[str], settings: Mapping[str, Any]
                ) -> dict[str, dict[str, Any]]:
    """Output name -> record of the images of `files` (named `stems`) that are done (see `completed`)."""
    done = {s: r for f, s in zip(files, stems, strict=True) if (r := completed(out_dir, s, f, settings))}
    if done:
        log.info("%d of %d image(s) done before (outputs present): skipped; overwrite=true redoes them", len(done),
                 len(files))
    return done


def _temporaries(directory: Path, name: str) -> list[str]:
    """Temporary files `nucseg.utils.atomic.atomic_write` leaves beside `name` when it is killed."""
    return glob.glob(os.path.join(glob.escape(str(directory)), f".{glob.escape(name)}.*.tmp"))


def forget(out_dir: Path, stem: str) -> None:
    """Remove the record, the outputs and leftover temporary files of image `stem` (before it is redone)."""
    names = [f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    _record_path(out_dir, stem).unlink(missing_ok=True)
    for name in names:
        (out_dir / name).unlink(missing_ok=True)
    for directory, name in [(out_dir / RECORD_DIR, f"{stem}.json"), *((out_dir, n) for n in names)]:
        for tmp in _temporaries(directory, name):
            Path(tmp).unlink(missing_ok=True)


def remove_stale_temporaries(out_dir: Path, names: Iterable[str]) -> None:
    """Remove temporary files a killed write of the tables `names` (e.g. summary.csv) left in `out_dir`."""
    for name in names:
        for tmp in _temporaries(out_dir, name):
            Path(tmp).unlink(missing_ok=True)


def make_record(stem: str, path: Path, settings: Mapping[str, Any], outputs: list[str], pred: Prediction,
                rle: list[str] | None) -> dict[str, Any]:
    """The record of a predicted image (`rle`: its Kaggle run-length encodings, None without rle=true)."""
    return {"image": stem, "file": str(path), "source": _stamp(path), "settings": dict(settings),
            "outputs": outputs, "summary": pred.summary(), "nuclei": pred.nuclei, "rle": rle}


def save_record(out_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """Write `record` atomically; returns it as read back (the rows of fresh and resumed images are the same
    Python values, hence the same table bytes)."""
    text = json.dumps(record, separators=(",", ":"))
    atomic_write_text(_record_path(out_dir, str(record["image"])), text)
    return json.loads(text)


def write_image(out_dir: Path, stem: str, path: Path, pred: Prediction, settings: Mapping[str, Any],
                overlay: bool = True, rle: bool = False) -> dict[str, Any]:
    """Write the outputs of image `stem`, then its record (its old ones are removed first); returns the record.
    When a write fails or is interrupted, nothing of the image is left."""
    forget(out_dir, stem)
    try:
        outputs = write_image_outputs(out_dir, stem, pred, overlay=overlay)
        codes = [r["EncodedPixels"] for r in submission_rows(stem, pred.labels)] if rle else None
        return save_record(out_dir, make_record(stem, path, settings, outputs, pred, codes))
    except BaseException:
        forget(out_dir, stem)
        raise


def table_rows(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict], list[dict], list[dict]]:
    """(summary, nuclei, submission) rows of the records, in their order."""
    summary: list[dict] = []
    nuclei: list[dict] = []
    submission: list[dict] = []
    for r in records:
        summary.append({"image": r["image"], "file": r["file"], **r["summary"]})
        nuclei += [{"image": r["image"], **n} for n in r["nuclei"]]
        submission += [{"ImageId": r["image"], "EncodedPixels": e} for e in r["rle"] or []]
    return summary, nuclei, submission
