"""`python -m nucseg.predict` split into shards and merged, resumed after a kill, and with an unreadable file
among good ones: every output file byte for byte as one clean run writes it. Real DSB2018 images, and a 1x1
convolution checkpoint (`tests.helpers.checkpoints.save_checkpoint`, fixed weights: bright pixels are nuclei) for
speed."""

from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest
import torch

from nucseg.checks import check_config
from nucseg.inference import records
from nucseg.inference.shards import merge_shards, parse_shard, select_shard, shard_part
from nucseg.predict import run_predict
from nucseg.utils.errors import ConfigError, DataNotFoundError
from tests.helpers.checkpoints import save_checkpoint
from tests.helpers.cli import run_module
from tests.helpers.config import compose_cfg
from tests.helpers.marks import LONG_RUN

N_GOOD = 5


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    weights = {"net.weight": torch.full((1, 3, 1, 1), 4.0), "net.bias": torch.tensor([-2.0])}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "conv.ckpt", state_dict=weights)


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, dsb_root) -> Path:
    """Five real stage1_train images as released (RGBA PNG, mixed sizes)."""
    d = tmp_path_factory.mktemp("good")
    for image_id in sorted(p.name for p in dsb_root.iterdir() if p.is_dir())[:N_GOOD]:
        (d / f"{image_id}.png").write_bytes((dsb_root / image_id / "images" / f"{image_id}.png").read_bytes())
    return d


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory, good_dir) -> Path:
    """The good images plus two unreadable files, one first and one last in sorted order (one per shard)."""
    d = tmp_path_factory.mktemp("mixed")
    for f in good_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    first = sorted(good_dir.iterdir())[0].read_bytes()
    (d / "0000-truncated.png").write_bytes(first[: len(first) // 3])
    (d / "zzzz-broken.tif").write_bytes(b"II*\x00garbage")
    return d


def predict(ckpt: Path, src: Path, out: Path, *extra: str):
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"input={src}", f"output={out}", "progress=false", "device=cpu",
                       *extra], out, config_name="predict")
    return run_predict(cfg)


def tree(d: Path, leave_out: tuple[str, ...] = ()) -> dict[str, bytes]:
    """relative path -> bytes of every file under `d` (hidden ones too), but those named in `leave_out`."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not set(p.relative_to(d).parts) & set(leave_out)}


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def clean(ckpt, mixed_dir, tmp_path_factory) -> Path:
    """One run over the mixed folder, with a Kaggle submission."""
    out = tmp_path_factory.mktemp("clean")
    report = predict(ckpt, mixed_dir, out, "rle=true")
    assert len(report.predicted) == N_GOOD and len(report.errors) == 2 and report.resumed == []
    return out


def test_clean_run_has_nuclei_and_records(clean):
    """The reference is not trivial: nuclei in every image, both failures named, one record per image."""
    summary = read_csv(clean / "summary.csv")
    assert len(summary) == N_GOOD and all(int(r["nucleus_count"]) > 0 for r in summary)
    assert len(read_csv(clean / "nuclei.csv")) == sum(int(r["nucleus_count"]) for r in summary)
    assert [Path(e["file"]).name for e in read_csv(clean / "errors.csv")] == ["0000-truncated.png",
                                                                              "zzzz-broken.tif"]
    assert sorted(p.stem for p in (clean / records.RECORD_DIR).iterdir()) == sorted(r["image"] for r in summary)


# ------------------------------------------------------------------ shards
def test_shard_parts_are_disjoint_contiguous_and_cover_the_list():
    for n_items in (0, 1, 5, 7, 100):
        for count in (1, 2, 3, 4, 8):
            parts = [shard_part(list(range(n_items)), i, count) for i in range(count)]
            assert [x for p in parts for x in p] == list(range(n_items))  # in order: contiguous, disjoint
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert shard_part(list("abcde"), 0, 2) == ["a", "b"] and shard_part(list("abcde"), 1, 2) == ["c", "d", "e"]
    assert [parse_shard(v) for v in ("0/4", "3/4", " 1 / 2 ", "4/4", "-1/4", "1", "a/b", 1, None)] == [
        (0, 4), (3, 4), (1, 2), None, None, None, None, None, None]
    files = [Path(f"{c}.png") for c in "abc"]
    assert select_shard(files, ["a", "b", "c"], "1/2") == (files[1:], ["b", "c"], ".shard-1-of-2")
    assert select_shard(files, ["a", "b", "c"], None) == (files, ["a", "b", "c"], "")


@pytest.mark.parametrize("count", [2, 3])
def test_shards_then_merge_equal_one_run_byte_for_byte(ckpt, mixed_dir, clean, tmp_path, count):
    out = tmp_path / "sharded"
    names = sorted(p.name for p in mixed_dir.iterdir())
    for i in range(count):
        report = predict(ckpt, mixed_dir, out, "rle=true", f"shard={i}/{count}")
        mine = shard_part(names, i, count)
        assert sorted(Path(r["file"]).name for r in report.summary + report.errors) == mine
        rows = read_csv(out / f"summary.shard-{i}-of-{count}.csv") + read_csv(out / f"errors.shard-{i}-of-{count}.csv")
        assert sorted(Path(r["file"]).name for r in rows) == mine
    assert not (out / "summary.csv").exists()
    merged = predict(ckpt, mixed_dir, out, "merge=true")
    assert merged.shards == count and len(merged.summary) == N_GOOD and len(merged.errors) == 2
    assert tree(out) == tree(clean)  # images, records and tables; the shard tables are gone


def test_merge_refuses_missing_shards_and_mixed_splits(ckpt, good_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataNotFoundError, match="no shard tables"):
        merge_shards(out)
    predict(ckpt, good_dir, out, "shard=0/2")
    with pytest.raises(DataNotFoundError, match=r"shard\(s\) 1/2 not done"):
        merge_shards(out)
    predict(ckpt, good_dir, out, "shard=2/3")
    with pytest.raises(DataNotFoundError, match="2 different splits"):
        merge_shards(out)
    assert not (out / "summary.csv").exists() and (out / "summary.shard-0-of-2.csv").exists()


def test_a_shard_without_images_writes_empty_tables(ckpt, good_dir, tmp_path):
    report = predict(ckpt, good_dir, tmp_path, f"shard=0/{N_GOOD + 1}")
    assert report.summary == report.errors == report.predicted == []
    assert (tmp_path / f"summary.shard-0-of-{N_GOOD + 1}.csv").read_text().startswith("image,file,height")
    assert len(read_csv(tmp_path / f"summary.shard-0-of-{N_GOOD + 1}.csv")) == 0


@pytest.mark.parametrize("value", ["2/2", "1", "a/b", "-1/2"])
def test_bad_shard_is_one_line(tmp_path, ckpt, good_dir, value):
    cfg = compose_cfg([f"ckpt_path={ckpt}", f"input={good_dir}", f"output={tmp_path}", f"shard={value}"],
                      tmp_path, config_name="predict")
    with pytest.raises(ConfigError) as info:
        check_config(cfg, "predict")
    assert str(info.value).startswith("shard=") and "expected i/n with 0 <= i < n" in str(info.value)
    assert "\n" not in str(info.value)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags (e.g. -m) before every override
    overrides = [a for a in args if not a.startswith("-")]
    return run_module("nucseg.predict", *flags, "progress=false", "device=cpu", *overrides)


@LONG_RUN
def test_cli_multirun_shards_and_merge(ckpt, mixed_dir, clean, tmp_path):
    """`-m shard=0/2,1/2` (what the SLURM launcher runs, one job per shard), then `merge=true output=...`."""
    out = tmp_path / "out"
    bad = run_cli(f"ckpt_path={ckpt}", f"input={mixed_dir}", f"output={out}", "shard=2/2")
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert len([ln for ln in (bad.stdout + bad.stderr).splitlines() if "shard='2/2': expected i/n" in ln]) == 1
    proc = run_cli("-m", f"ckpt_path={ckpt}", f"input={mixed_dir}", f"output={out}", "rle=true", "shard=0/2,1/2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.glob("summary.shard-*.csv")) == ["summary.shard-0-of-2.csv",
                                                                     "summary.shard-1-of-2.csv"]
    assert (out / ".multirun" / "0" / "predict.log").is_file() and (out / ".multirun" / "1" / ".hydra").is_dir()
    proc = run_cli("merge=true", f"output={out}")
    assert proc.returncode == 0 and "merged 2 shards: 5 image(s)" in proc.stdout, proc.stderr[-2000:]
    assert tree(out, leave_out=(".multirun", ".hydra", "predict.log")) == tree(clean)


# ------------------------------------------------------------------ reliability
def test_an_unreadable_file_leaves_the_good_outputs_as_a_clean_run_of_them(ckpt, good_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for f in good_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    predict(ckpt, src, tmp_path / "good", "rle=true")
    second = sorted(src.iterdir())[1]
    (src / f"{second.stem}-cut.png").write_bytes(second.read_bytes()[:2000])  # sorted among the good ones
    report = predict(ckpt, src, tmp_path / "mixed", "rle=true")
    assert [Path(e["file"]).name for e in report.errors] == [f"{second.stem}-cut.png"]
    good, mixed = tree(tmp_path / "good"), tree(tmp_path / "mixed")
    assert good.pop("errors.csv") == b"file,error\n" and mixed.pop("errors.csv").count(b"\n") == 2
    assert len(good) == 4 * N_GOOD + 3 and good == mixed  # images, overlays, records, the other tables


@pytest.fixture
def resumable(ckpt, good_dir, tmp_path) -> tuple[Path, Path]:
    """A clean run (with a submission) to compare with, and a copy of it to damage and resume."""
    clean, out = tmp_path / "clean", tmp_path / "out"
    predict(ckpt, good_dir, clean, "rle=true")
    out.mkdir()
    for rel, data in tree(clean).items():
        (out / rel).parent.mkdir(exist_ok=True)
        (out / rel).write_bytes(data)
    for p in out.rglob("*"):
        os.utime(p, ns=(0, 0))  # whatever a rerun rewrites gets a new modification time
    return clean, out


def rewritten(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.stat().st_mtime_ns != 0}


TABLES = {"summary.csv", "nuclei.csv", "errors.csv", "submission.csv"}


def test_rerun_predicts_only_the_image_whose_outputs_are_missing(ckpt, good_dir, resumable):
    clean, out = resumable
    stems = [r["image"] for r in read_csv(clean / "summary.csv")]
    victim = stems[2]
    for p in out.glob(f"{victim}_*"):
        p.unlink()
    report = predict(ckpt, good_dir, out, "rle=true")
    assert report.predicted == [victim] and report.resumed == stems[:2] + stems[3:]
    assert rewritten(out) == {f"{victim}_labels.tif", f"{victim}_prob.tif", f"{victim}_overlay.png",
                              f".records/{victim}.json", *TABLES}
    assert tree(out) == tree(clean)
    # one output of one image missing is enough; a complete folder loads no model and changes nothing
    (out / f"{stems[0]}_prob.tif").unlink()
    assert predict(ckpt, good_dir, out, "rle=true").predicted == [stems[0]]
    report = predict(ckpt, good_dir, out, "rle=true")
    assert report.predicted == [] and len(report.resumed) == N_GOOD and tree(out) == tree(clean)


def test_overwrite_and_changed_settings_or_inputs_redo_images(ckpt, good_dir, resumable, tmp_path):
    clean, out = resumable
    stems = [r["image"] for r in read_csv(clean / "summary.csv")]
    assert predict(ckpt, good_dir, out, "rle=true", "overwrite=true").predicted == stems
    assert rewritten(out) == set(tree(out)) and tree(out) == tree(clean)
    report = predict(ckpt, good_dir, out, "rle=true", "overlay=false")  # other settings: every image redone
    assert report.predicted == stems and not list(out.glob("*_overlay.png"))
    src = tmp_path / "src"
    src.mkdir()
    for f in good_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    predict(ckpt, src, out, "rle=true")
    replaced = sorted(src.iterdir())[3]
    replaced.write_bytes(sorted(src.iterdir())[0].read_bytes())  # a corrected image under the same name
    assert predict(ckpt, src, out, "rle=true").predicted == [replaced.stem]


def test_a_killed_run_leaves_no_partial_image_and_a_rerun_completes_it(ckpt, good_dir, resumable, monkeypatch):
    """Interrupted while an image's outputs are written: that image has nothing left, the tables hold the
    images done; after SIGKILL (simulated: outputs written, no record, a temporary file) the image is redone."""
    clean, out = resumable
    stems = [r["image"] for r in read_csv(clean / "summary.csv")]
    for p in [*out.glob(f"{stems[3]}_*"), out / records.RECORD_DIR / f"{stems[3]}.json",
              out / records.RECORD_DIR / f"{stems[1]}.json"]:
        p.unlink()
    (out / f".{stems[1]}_prob.tif.x1y2.tmp").write_bytes(b"half a tiff")
    calls = []
    import tifffile

    real = tifffile.imwrite

    def interrupted(f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # half-way through the probability map of the second image redone (stems[3])
            f.write(b"II*\x00 half a tiff")
            raise KeyboardInterrupt
        return real(f, *args, **kwargs)

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        predict(ckpt, good_dir, out, "rle=true")
    monkeypatch.undo()
    assert not list(out.glob(f"{stems[3]}*")) and not (out / records.RECORD_DIR / f"{stems[3]}.json").exists()
    assert not list(out.rglob("*.tmp"))
    assert [r["image"] for r in read_csv(out / "summary.csv")] == stems[:3] + stems[4:]
    report = predict(ckpt, good_dir, out, "rle=true")
    assert report.predicted == [stems[3]] and tree(out) == tree(clean)
