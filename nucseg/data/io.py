"""Read any microscopy image (PNG, TIFF 8/16-bit, JPEG; 1, 3 or 4 channels) into one canonical form.

Every image that enters nucseg, for training, evaluation or prediction, goes through `normalize_checked` (via
`normalize` or `read_image`), so the model always sees the same thing: an RGB uint8 array whose intensities
were stretched per image between two percentiles, with NaN / inf pixels left out and set to 0. Percentile
stretching makes dim 16-bit fluorescence and bright 8-bit brightfield comparable.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "IntensityCheck", "atomic_save_npz", "atomic_write_bytes",
           "atomic_write_text", "describe", "is_image_file", "normalize", "normalize_checked", "probe_image",
           "read_image", "read_mask", "read_raw", "to_rgb"]

log = logging.getLogger(__name__)

_UMASK = os.umask(0)
os.umask(_UMASK)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


class ImageReadError(ValueError):
    """An input file could not be decoded as an image; the message names the file."""


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and not Path(path).name.startswith(".")


def read_raw(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file as stored (any dtype, HxW or HxWxC); raise ImageReadError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "CMYK", "YCbCr", "LA", "PA"):
                    im = im.convert("RGBA" if "A" in im.mode else "RGB")
                arr = np.asarray(im)
    except Exception as exc:  # PIL/tifffile raise many types for corrupt files
        raise ImageReadError(_decode_error(path, exc)) from exc
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # channel-first TIFF
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(f"{path}: expected a single-page 2-D image (HxW or HxWxC with 1-4 channels), "
                             f"got an array of shape {arr.shape} (a multi-page stack?)")
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"{path}: expected a 2-D image (HxW or HxWxC), got shape {arr.shape}")
    return arr


def probe_image(path: str | os.PathLike) -> tuple[int, int]:
    """Image size (H, W) from the file header, without decoding the pixels.

    Cheap enough to run on every file before training starts, so that a missing, corrupt or truncated file
    fails up front with its name instead of inside a DataLoader worker hours later: PNG chunk checksums are
    verified (this catches truncation), TIFF strips must lie inside the file, JPEGs are decoded (their
    headers say nothing about truncation). Raises ImageReadError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                series = tf.series[0]
                shape = tuple(series.shape)
                size = path.stat().st_size
                for page in tf.pages:
                    ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False)]
                    if ends and max(ends) > size:
                        raise ImageReadError(f"{path}: truncated TIFF (pixel data ends at byte {max(ends)}, "
                                             f"file has {size} bytes)")
            if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
                shape = (*shape[1:], shape[0])
            if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] not in (1, 2, 3, 4)):
                raise ImageReadError(f"{path}: expected a single-page 2-D image (HxW or HxWxC with 1-4 "
                                     f"channels), got a TIFF of shape {shape} (a multi-page stack?)")
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
            if im.format == "PNG":
                im.verify()
            elif im.format == "JPEG":
                im.load()
        return int(h), int(w)
    except ImageReadError:
        raise
    except Exception as exc:  # PIL/tifffile raise many types for corrupt files
        raise ImageReadError(_decode_error(path, exc)) from exc


def _decode_error(path: Path, exc: Exception) -> str:
    msg = f"{path}: cannot decode image ({type(exc).__name__}: {exc})"
    if type(exc).__name__ == "DecompressionBombError":
        msg += ("; Pillow refuses images this large by default: split the image into tiles, or raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")
    return msg


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Drop alpha, replicate gray to three channels: HxWx3 in the input dtype."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    elif arr.shape[-1] == 2:
        arr = arr[..., :1]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise ImageReadError(f"expected 1, 3 or 4 channels, got {arr.shape[-1]}")
    return arr


@dataclass(frozen=True)
class IntensityCheck:
    """What `normalize_checked` found in one image.

    nonfinite_pixels: pixels (H x W positions) with a NaN or infinite value in any channel; they are left out
        of the percentiles and set to 0 in the output.
    warning: None, or why the stretch is not meaningful: "no finite pixels", "constant image" (all finite
        pixels equal; the output is all 0) or "nearly constant image" (the two percentiles are equal, so the
        image is stretched between its minimum and maximum instead).
    """

    nonfinite_pixels: int = 0
    warning: str | None = None

    @property
    def clean(self) -> bool:
        return self.nonfinite_pixels == 0 and self.warning is None


def normalize_checked(arr: np.ndarray, low: float = 0.5, high: float = 99.8) -> tuple[np.ndarray, IntensityCheck]:
    """Stretch intensities between the `low` and `high` percentiles (over all channels) into uint8.

    `arr`: (H, W) or (H, W, C), any dtype -> the same shape as uint8, and what was found (`IntensityCheck`).
    Works the same for 8- and 16-bit data. Non-finite values never reach the arithmetic: they are ignored by
    the percentiles and become 0; a constant image maps to zeros instead of dividing by zero. 8- and 16-bit
    images take a histogram and a lookup table instead of float copies of the image (same result, a fraction
    of the memory and time on large images).
    """
    if arr.dtype in (np.uint8, np.uint16) and arr.size:
        return _normalize_integer(arr, low, high)
    a = arr.astype(np.float32)
    finite = np.isfinite(a)
    all_finite = bool(finite.all())
    values = a if all_finite else a[finite]  # the fast path keeps finite images bit-identical to before
    bad = 0 if all_finite else int((~finite).reshape(*a.shape[:2], -1).any(-1).sum())
    zeros = np.zeros(arr.shape, np.uint8)
    if values.size == 0:
        return zeros, IntensityCheck(bad, "no finite pixels")
    lo, hi = np.percentile(values, [low, high])
    warning = None
    if hi <= lo:
        lo, hi, warning = values.min(), values.max(), "nearly constant image"
    if hi <= lo:
        return zeros, IntensityCheck(bad, "constant image")
    out = (a - lo) / (hi - lo)
    if not all_finite:
        out[~finite] = 0.0
    return _to_uint8(out), IntensityCheck(bad, warning)


def _to_uint8(scaled: np.ndarray) -> np.ndarray:
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _normalize_integer(arr: np.ndarray, low: float, high: float) -> tuple[np.ndarray, IntensityCheck]:
    """`normalize_checked` of a uint8 / uint16 image through its histogram: the percentiles are those
    np.percentile returns for the float32 copy, and the stretch is a lookup table holding the float path's
    result for every value, so the output is bit-identical."""
    flat = arr.reshape(-1)
    counts = np.zeros(1 << (8 * arr.itemsize), np.int64)
    for start in range(0, flat.size, 1 << 22):  # bincount widens to int64: chunks bound the temporary
        counts += np.bincount(flat[start:start + (1 << 22)], minlength=counts.size)
    lo, hi = percentiles_from_counts(counts, [low, high])
    present = np.flatnonzero(counts)
    warning = None
    if hi <= lo:
        lo, hi, warning = np.float32(present[0]), np.float32(present[-1]), "nearly constant image"
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8), IntensityCheck(0, "constant image")
    values = np.arange(int(present[-1]) + 1, dtype=np.float32)
    return _to_uint8((values - lo) / (hi - lo))[arr], IntensityCheck(0, warning)


def percentiles_from_counts(counts: np.ndarray, q: list[float]) -> list[np.float64]:
    """np.percentile (method "linear") of the float32 values 0..len(counts)-1 repeated counts[v] times, from
    the histogram alone: the same order statistics and numpy's interpolation, so the same float64 results."""
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for p in q:
        virtual = (n - 1) * (np.float64(p) / 100)
        prev = min(max(int(np.floor(virtual)), 0), n - 1)
        nxt = min(prev + 1, n - 1)
        a, b = (np.float32(np.searchsorted(cum, i, side="right")) for i in (prev, nxt))
        t = virtual - prev
        diff = np.float32(b - a)
        out.append(np.float64(b - diff * (1 - t)) if t >= 0.5 else np.float64(a + diff * t))
    return out


def normalize(arr: np.ndarray, low: float = 0.5, high: float = 99.8, name: str | os.PathLike | None = None
              ) -> np.ndarray:
    """`normalize_checked` without the report: (H, W[, C]) any dtype -> uint8 of the same shape. With `name`
    (the file), non-finite pixels and constant images are logged as warnings naming it."""
    out, check = normalize_checked(arr, low, high)
    if name is not None and not check.clean:
        log.warning("%s: %s", name, describe(check))
    return out


def describe(check: IntensityCheck) -> str:
    """One phrase for a log line, e.g. '12 non-finite pixels (NaN / inf) set to 0; constant image'."""
    parts = [f"{check.nonfinite_pixels} non-finite pixels (NaN / inf) set to 0"] if check.nonfinite_pixels else []
    return "; ".join(parts + ([check.warning] if check.warning else [])) or "clean"


def read_image(path: str | os.PathLike, low: float = 0.5, high: float = 99.8) -> np.ndarray:
    """Read an image file into normalised RGB uint8 (HxWx3)."""
    try:
        return normalize(to_rgb(read_raw(path)), low, high, name=path)
    except ImageReadError as exc:
        if str(path) in str(exc):
            raise
        raise ImageReadError(f"{path}: {exc}") from exc


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask file as a 2-D integer array (binary or instance labels)."""
    arr = read_raw(path)
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4) and not np.array_equal(arr[..., 0], arr[..., 1]):
            raise ImageReadError(
                f"{path}: expected a single-channel mask (binary or instance labels), got {arr.shape[-1]} "
                "differing channels"
            )
        arr = arr[..., 0]
    if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != bool and not np.allclose(arr, np.round(arr)):
        raise ImageReadError(f"{path}: expected integer mask values, got {arr.dtype} with fractions")
    return arr.astype(np.int64)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file beside `path`, flush and fsync it, then rename it into place: a
    reader never sees half a file, and after a crash the file is the old one or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.close(fd)
        with open(tmp, "wb") as f:  # a named file: writers such as tifffile read f.name (an int for fdopen)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """`np.savez_compressed` to `path` atomically (see `atomic_write`)."""
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub reads **kwds as allow_pickle
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
