"""Which files of a folder are images to predict, and the output name of each."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nucseg.data.io import IMAGE_SUFFIXES, is_image_file
from nucseg.utils.errors import DataNotFoundError

__all__ = ["OUTPUT_SUFFIXES", "list_inputs", "require_images", "unique_stems"]

# per-image outputs of `nucseg.inference.writers.write_image_outputs`: skipped when listing the output folder
OUTPUT_SUFFIXES = ("_labels.tif", "_prob.tif", "_uncertainty.tif", "_overlay.png", "_review.png")


def list_inputs(path: str | Path, recursive: bool = False, output: str | Path | None = None
                ) -> tuple[list[Path], list[Path]]:
    """(image files, skipped non-image files) of a file or directory, sorted; our own outputs are left out.

    A missing `path` raises DataNotFoundError (a FileNotFoundError that the entry points report in one line)."""
    path = Path(path)
    if path.is_file():
        return ([path], []) if is_image_file(path) else ([], [path])
    if not path.is_dir():
        raise DataNotFoundError(f"input: no such file or directory: {path}")
    out_dir = Path(output).resolve() if output else None
    images: list[Path] = []
    skipped: list[Path] = []
    for f in sorted(path.rglob("*") if recursive else path.iterdir()):
        if not f.is_file() or any(part.startswith(".") for part in f.relative_to(path).parts):
            continue  # hidden files and folders (.DS_Store, .hydra/)
        if out_dir and f.parent.resolve() == out_dir and f.name.endswith(OUTPUT_SUFFIXES):
            continue  # outputs of an earlier run into the same folder
        (images if is_image_file(f) else skipped).append(f)
    return images, skipped


def require_images(files: Sequence[Path], path: str | Path) -> None:
    """Raise DataNotFoundError naming `path` when it holds no image file."""
    if not files:
        raise DataNotFoundError(f"input: no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")


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
