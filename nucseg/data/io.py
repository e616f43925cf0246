"""Read any microscopy image (PNG, TIFF 8/16-bit, JPEG; 1, 3 or 4 channels) into one canonical form.

Every image that enters nucseg, for training, evaluation or prediction, goes through
`nucseg.data.normalize.normalize_checked` (via `normalize` or `read_image`), so the model always sees the same
thing: an RGB uint8 array whose intensities were stretched per image between two percentiles.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from nucseg.data.normalize import normalize
from nucseg.utils.errors import ImageReadError

__all__ = ["IMAGE_SUFFIXES", "is_image_file", "probe_image", "read_image", "read_mask", "read_raw", "to_rgb"]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


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
