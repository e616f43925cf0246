"""Download one file over HTTP(S): resumed (HTTP Range) from a `.part` file after an interruption, retried
with backoff, shown with a progress bar, checked against a sha256 digest, and renamed into place only when
complete."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import TYPE_CHECKING

from nucseg.utils.progress import progress_bar

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["DownloadError", "fetch", "sha256_of"]

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download failed or arrived damaged; the message names the URL and the file."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True,
          retries: int = 3, timeout: float = 60.0, chunk_size: int = 1 << 16, backoff: float = 1.0) -> Path:
    """Download `url` to `dest`, resuming from `dest.part`; verify `sha256`; rename into place when complete.

    A dropped connection is retried `retries` times, each time continuing where it stopped. A server that
    ignores Range gets the file from the start again. A checksum mismatch deletes the partial file (resuming
    it could never fix it) and raises DownloadError.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if sha256 is None or sha256_of(dest) == sha256.lower():
            log.info("%s already downloaded", dest)
            return dest
        log.warning("%s exists but its sha256 differs from %s; downloading again", dest, sha256)
        dest.unlink()
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    with progress_bar(progress, transfer=True) as bar:
        task = bar.add_task(dest.name, total=None)
        while True:
            try:
                _fetch_once(url, part, bar, task, timeout, chunk_size)
                break
            except (urllib.error.URLError, HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                if isinstance(exc, urllib.error.HTTPError) and exc.code not in (408, 429, 500, 502, 503, 504):
                    raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
                attempt += 1
                have = part.stat().st_size if part.exists() else 0
                if attempt > retries:
                    kept = f"{have} bytes kept in {part}, run again to resume" if have else "nothing downloaded"
                    raise DownloadError(f"{url}: download failed after {retries} retries ({type(exc).__name__}: "
                                        f"{exc}); {kept}") from exc
                log.warning("%s: %s: %s; resuming from byte %d (retry %d/%d)", url, type(exc).__name__, exc, have,
                            attempt, retries)
                time.sleep(min(backoff * 2.0 ** (attempt - 1), 30.0))
    digest = sha256_of(part)
    if sha256 is not None and digest != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 of the download is {digest}, expected {sha256.lower()}; the damaged "
                            f"file {part} was deleted, run again to download it afresh")
    if sha256 is None:
        log.warning("%s: no published sha256 to verify against; the download's sha256 is %s (pass --sha256 to "
                    "pin it)", url, digest)
    os.replace(part, dest)
    return dest


def _fetch_once(url: str, part: Path, bar: Progress, task: TaskID, timeout: float, chunk_size: int) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is complete (or the file shrank)
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == have:
                bar.update(task, total=total, completed=have)
                return
            log.warning("%s: server refused to resume at byte %d (size %s); starting again", url, have, total)
            part.unlink()
            return _fetch_once(url, part, bar, task, timeout, chunk_size)
        raise
    with response:
        if have and response.status == 206:
            start = _start_from_content_range(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(f"{url}: asked to resume at byte {have}, server sent from byte {start}")
            mode = "ab"
            log.info("%s: resuming at byte %d", url, have)
        else:
            if have:
                log.warning("%s: server ignored the Range request; downloading from the start", url)
            have, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar.update(task, total=total, completed=have)
        with part.open(mode) as f:
            while block := response.read(chunk_size):
                f.write(block)
                bar.update(task, advance=len(block))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"connection closed at byte {part.stat().st_size} of {total}")


def _start_from_content_range(value: str | None) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0]) if value else None
    except (IndexError, ValueError):
        return None


def _total_from_content_range(value: str | None) -> int | None:
    try:
        return int(value.rsplit("/", 1)[1]) if value and not value.endswith("*") else None
    except (IndexError, ValueError):
        return None
