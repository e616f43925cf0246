"""The downloader against a local HTTP server (with Range support) serving an archive built from real files."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from nucseg.data.download import Resource, download, main, unpack
from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.fetch import DownloadError, fetch


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.files`; honours `Range: bytes=N-` unless `server.ignore_range`; can drop the connection
    after `server.cut_after` bytes once, like a flaky network."""

    def do_GET(self):  # noqa: N802 (http.server API)
        srv = self.server
        data = srv.files.get(self.path)
        srv.requests.append((self.path, self.headers.get("Range")))
        if data is None:
            self.send_error(404)
            return
        start, rng = 0, self.headers.get("Range")
        if rng and not srv.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)
        srv.sent += len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.sent, srv.ignore_range, srv.cut_after = {}, [], 0, False, None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def archive(dsb_root) -> tuple[bytes, list[str]]:
    """A stage1_train-style zip (top-level <ImageId>/images + masks) of three real samples."""
    ids = sorted(p.name for p in dsb_root.iterdir())[:3]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rid in ids:
            for f in sorted((dsb_root / rid).rglob("*.png")):
                zf.write(f, f.relative_to(dsb_root).as_posix())
    return buf.getvalue(), ids


def _registry(url: str, sha: str | None) -> dict:
    return {"dsb2018": [Resource("stage1_train", f"{url}/stage1_train.zip", "dsb2018/stage1_train", sha)]}


def _assert_installed(target, ids, dsb_root):
    src = DSB2018Source(target)
    assert [r for r in src._ids] == ids
    img, lab = src.load(ids[0])
    ref_img, ref_lab = DSB2018Source(dsb_root).load(ids[0])
    assert np.array_equal(img, ref_img) and np.array_equal(lab, ref_lab)


def test_download_verifies_and_unpacks(server, archive, dsb_root, tmp_path):
    data, ids = archive
    server.files["/stage1_train.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    paths = download("dsb2018", tmp_path, registry=_registry(server.url, sha), progress=True)
    target = tmp_path / "dsb2018" / "stage1_train"
    assert paths == [target]
    _assert_installed(target, ids, dsb_root)
    assert server.requests == [("/stage1_train.zip", None)] and server.sent == len(data)
    # no archive, partial file or temporary folder is left behind
    assert list((tmp_path / ".downloads" / "dsb2018").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "dsb2018").iterdir()) == ["stage1_train"]
    # a second call finds the data installed and downloads nothing
    download("dsb2018", tmp_path, registry=_registry(server.url, sha), progress=False)
    assert len(server.requests) == 1


def test_resumes_partial_download_with_range(server, archive, dsb_root, tmp_path):
    data, ids = archive
    server.files["/stage1_train.zip"] = data
    part = tmp_path / ".downloads" / "dsb2018" / "stage1_train.zip.part"
    part.parent.mkdir(parents=True)
    have = len(data) * 2 // 5
    part.write_bytes(data[:have])
    download("dsb2018", tmp_path, registry=_registry(server.url, hashlib.sha256(data).hexdigest()), progress=False)
    assert server.requests == [("/stage1_train.zip", f"bytes={have}-")]
    assert server.sent == len(data) - have  # only the missing tail crossed the wire
    _assert_installed(tmp_path / "dsb2018" / "stage1_train", ids, dsb_root)


def test_dropped_connection_is_resumed(server, archive, tmp_path):
    data, _ = archive
    server.files["/a.zip"] = data
    server.cut_after = 5000
    out = fetch(f"{server.url}/a.zip", tmp_path / "a.zip", hashlib.sha256(data).hexdigest(), progress=False,
                backoff=0.0)
    assert out.read_bytes() == data
    assert server.requests == [("/a.zip", None), ("/a.zip", "bytes=5000-")]


def test_complete_part_file_and_server_without_range(server, archive, tmp_path):
    data, _ = archive
    server.files["/a.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "a.zip.part").write_bytes(data)  # downloaded fully, interrupted before the rename
    assert fetch(f"{server.url}/a.zip", tmp_path / "a.zip", sha, progress=False).read_bytes() == data
    assert server.requests[-1] == ("/a.zip", f"bytes={len(data)}-") and server.sent == 0
    server.ignore_range = True  # a server that ignores Range sends everything again: start over
    (tmp_path / "b.zip.part").write_bytes(b"garbage")
    server.files["/b.zip"] = data
    assert fetch(f"{server.url}/b.zip", tmp_path / "b.zip", sha, progress=False).read_bytes() == data


def test_checksum_mismatch_fails_and_installs_nothing(server, archive, tmp_path):
    data, _ = archive
    server.files["/stage1_train.zip"] = data
    wrong = "0" * 64
    with pytest.raises(DownloadError, match=rf"sha256 of the download is {hashlib.sha256(data).hexdigest()}, "
                                            rf"expected {wrong}"):
        download("dsb2018", tmp_path, registry=_registry(server.url, wrong), progress=False)
    assert not (tmp_path / "dsb2018").exists()
    assert list((tmp_path / ".downloads" / "dsb2018").iterdir()) == []  # the damaged part file is gone


def test_unpack_is_atomic(archive, tmp_path):
    data, _ = archive
    broken = tmp_path / "broken.zip"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError, match="broken.zip: not a valid zip archive"):
        unpack(broken, tmp_path / "out" / "stage1_train")
    assert list((tmp_path / "out").iterdir()) == []  # no half-filled target, no temporary folder
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok/images/a.png", b"x")
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(DownloadError, match="refusing member '../escape.txt'"):
        unpack(evil, tmp_path / "out" / "stage1_train")
    assert not (tmp_path / "escape.txt").exists() and list((tmp_path / "out").iterdir()) == []
    wrapped = tmp_path / "isbi2012.zip"  # a single top-level folder named like the target is unwrapped
    with zipfile.ZipFile(wrapped, "w") as zf:
        zf.writestr("isbi2012/train-volume.tif", b"tif")
    assert (unpack(wrapped, tmp_path / "d" / "isbi2012") / "train-volume.tif").read_bytes() == b"tif"
    with pytest.raises(FileExistsError, match="already exists; pass --force"):
        unpack(wrapped, tmp_path / "d" / "isbi2012")


def test_cli(server, archive, tmp_path, capsys):
    data, ids = archive
    server.files["/mirror/stage1_train.zip"] = data
    sha = hashlib.sha256(data).hexdigest()
    rc = main(["dsb2018", "--data-dir", str(tmp_path), "--parts", "stage1_train", "--url",
               f"{server.url}/mirror/stage1_train.zip", "--sha256", sha, "--no-progress"])
    assert rc == 0 and capsys.readouterr().out.strip() == str(tmp_path / "dsb2018" / "stage1_train")
    assert sorted(p.name for p in (tmp_path / "dsb2018" / "stage1_train").iterdir()) == ids
    rc = main(["isbi2012", "--data-dir", str(tmp_path), "--no-progress"])
    assert rc == 1 and "no stable public download" in capsys.readouterr().err
    rc = main(["dsb2018", "--data-dir", str(tmp_path), "--parts", "nope"])
    assert rc == 1 and "unknown part(s) ['nope']" in capsys.readouterr().err


def test_plain_file_resource(server, tmp_path):
    body = b"ImageId,EncodedPixels,Height,Width,Usage\nabc,1 2,4,4,Public\n"
    server.files["/stage1_solution.csv"] = body
    reg = {"dsb2018": [Resource("stage1_solution", f"{server.url}/stage1_solution.csv",
                                "dsb2018/stage1_solution.csv", hashlib.sha256(body).hexdigest())]}
    [path] = download("dsb2018", tmp_path, registry=reg, progress=False)
    assert path == tmp_path / "dsb2018" / "stage1_solution.csv" and path.read_bytes() == body
