"""`python -m nucseg.data.download dsb2018`: fetch a public dataset into the data root.

Downloads (`nucseg.data.fetch`) resume (HTTP Range) from a `.part` file after an interruption, show a rich
progress bar and are checked against a sha256 digest; archives are unpacked into a temporary folder beside the
target that is renamed into place only when complete, so `<data_dir>/dsb2018/stage1_train` either holds the
whole archive or does not exist.

Sources: DSB2018 from the Broad Bioimage Benchmark Collection (BBBC038: the Kaggle stage-1 training set, the
stage-1 test images and their released solution CSV; stage-2 on request). BBBC publishes no checksums; where
none is registered the digest of what arrived is logged so a user can pin it with `--sha256`. ISBI 2012 has no
stable public download (the challenge site requires registration): get the TIFF stacks by hand, or pass a
mirror's `--url` (an archive or a .tif) and `--sha256`.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from nucseg.data.fetch import DownloadError, fetch
from nucseg.utils.atomic import atomic_write
from nucseg.utils.config import root_dir

log = logging.getLogger(__name__)

BBBC038 = "https://data.broadinstitute.org/bbbc/BBBC038"


@dataclass(frozen=True)
class Resource:
    """One downloadable file; `dest` is relative to the data root (a folder for archives, a file otherwise)."""

    name: str
    url: str
    dest: str
    sha256: str | None = None
    default: bool = True

    @property
    def kind(self) -> str:
        return archive_kind(self.url)


DATASETS: dict[str, list[Resource]] = {
    "dsb2018": [
        Resource("stage1_train", f"{BBBC038}/stage1_train.zip", "dsb2018/stage1_train"),
        Resource("stage1_test", f"{BBBC038}/stage1_test.zip", "dsb2018/stage1_test"),
        Resource("stage1_solution", f"{BBBC038}/stage1_solution.csv", "dsb2018/stage1_solution.csv"),
        Resource("stage2_test", f"{BBBC038}/stage2_test_final.zip", "dsb2018/stage2_test_final", default=False),
        Resource("stage2_solution", f"{BBBC038}/stage2_solution_final.csv", "dsb2018/stage2_solution_final.csv",
                 default=False),
    ],
    "isbi2012": [],
}
HELP = {
    "isbi2012": "ISBI 2012 has no stable public download: register at https://imagej.net/events/isbi-2012-"
                "segmentation-challenge, then put train-volume.tif, train-labels.tif and test-volume.tif into "
                "<data_dir>/isbi2012, or pass --url <mirror archive or .tif> --sha256 <digest>.",
}


def archive_kind(name: str) -> str:
    n = name.lower().split("?")[0]
    if n.endswith(".zip"):
        return "zip"
    if n.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    return "file"


def unpack(archive: str | os.PathLike, target: str | os.PathLike, force: bool = False) -> Path:
    """Extract `archive` (zip or tar) into the folder `target`, atomically.

    Everything is extracted into a temporary folder beside `target` and renamed into place at the end; a
    failure leaves no half-filled target. An archive whose only top-level entry is a folder named like the
    target is unwrapped (`isbi2012.zip` holding `isbi2012/...`). Members that would land outside the target
    (absolute paths, '..') are refused.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and not force:
        raise FileExistsError(f"{target} already exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".unpacking"))
    try:
        kind = archive_kind(archive.name)
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    _check_member(member, archive)
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{archive}: member {bad} is corrupt (CRC mismatch)")
                zf.extractall(tmp)
        elif kind == "tar":
            with tarfile.open(archive) as tf:
                for info in tf.getmembers():
                    _check_member(info.name, archive)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
                    tf.extractall(tmp, filter="data")
                else:
                    tf.extractall(tmp)
        else:
            raise DownloadError(f"{archive}: not an archive (expected .zip or .tar[.gz|.bz2|.xz])")
        root = tmp
        entries = [p for p in tmp.iterdir() if p.name not in ("__MACOSX",)]
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name == target.name:
            root = entries[0]
        if force and target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(root, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(root, target)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive}: not a valid zip archive ({exc})") from exc
    except tarfile.TarError as exc:
        raise DownloadError(f"{archive}: not a valid tar archive ({exc})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _check_member(name: str, archive: Path) -> None:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts:
        raise DownloadError(f"{archive}: refusing member {name!r}, which would be written outside the target")


def download(dataset: str, data_dir: str | os.PathLike, parts: list[str] | None = None, url: str | None = None,
             sha256: str | None = None, force: bool = False, keep_archive: bool = False,
             progress: bool = True, registry: dict[str, list[Resource]] | None = None) -> list[Path]:
    """Fetch and install a dataset's resources into `data_dir`; returns the installed paths.

    `url` (with `sha256`) replaces the registered sources by one archive or file — for mirrors, and for
    datasets without a public source. It is installed where the single named part would go (`parts=
    ["stage1_train"]` -> `<data_dir>/dsb2018/stage1_train`), else unpacked into `<data_dir>/<dataset>`.
    """
    registry = DATASETS if registry is None else registry
    if dataset not in registry:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(registry)}")
    data_dir = Path(data_dir)
    if url:
        if parts and len(parts) == 1 and parts[0] in {r.name for r in registry[dataset]}:
            dest = next(r.dest for r in registry[dataset] if r.name == parts[0])
        elif parts:
            raise ValueError(f"--url replaces one part; got --parts {parts} (expected one of "
                             f"{[r.name for r in registry[dataset]]})")
        elif archive_kind(url) == "file":
            dest = f"{dataset}/{Path(url.split('?')[0]).name}"
        else:
            dest = dataset
        resources = [Resource("custom", url, dest, sha256)]
    else:
        resources = [r for r in registry[dataset] if (r.name in parts if parts else r.default)]
        if parts:
            unknown = sorted(set(parts) - {r.name for r in registry[dataset]})
            if unknown:
                raise ValueError(f"{dataset}: unknown part(s) {unknown}; expected some of "
                                 f"{[r.name for r in registry[dataset]]}")
        if not resources:
            raise DownloadError(HELP.get(dataset, f"{dataset}: nothing registered to download"))
        if sha256 and len(resources) == 1:
            resources = [Resource(resources[0].name, resources[0].url, resources[0].dest, sha256)]
    out = []
    downloads = data_dir / ".downloads"
    for res in resources:
        target = data_dir / res.dest
        if target.exists() and not force:
            log.info("%s already present; skipped (--force replaces it)", target)
            out.append(target)
            continue
        name = Path(res.url.split("?")[0]).name or res.name
        archive = fetch(res.url, downloads / dataset / name, res.sha256, progress=progress)
        if res.kind == "file":
            target.parent.mkdir(parents=True, exist_ok=True)
            if keep_archive:
                with archive.open("rb") as src:
                    atomic_write(target, lambda f: shutil.copyfileobj(src, f))
            else:
                os.replace(archive, target)
        else:
            unpack(archive, target, force=force)
            if not keep_archive:
                archive.unlink()
        log.info("installed %s", target)
        out.append(target)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nucseg.data.download", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--data-dir", default=os.environ.get("NUCSEG_DATA_DIR")
                        or str(root_dir() / "data"),
                        help="data root (default: $NUCSEG_DATA_DIR, else data/ in the checkout or the working "
                             "directory)")
    parser.add_argument("--parts", nargs="+", help="registered parts to fetch (default: the standard ones)")
    parser.add_argument("--url", help="download this archive/file instead of the registered sources")
    parser.add_argument("--sha256", help="expected sha256 of the (single) download")
    parser.add_argument("--force", action="store_true", help="replace data that is already installed")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = download(args.dataset, args.data_dir, args.parts, args.url, args.sha256, args.force,
                         args.keep_archive, progress=not args.no_progress)
    except (DownloadError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
