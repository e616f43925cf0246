"""Kaggle RLE on hand-computed cases and real masks; the solution-CSV source against the Kaggle-layout source."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from nucseg.data.dsb2018 import DSB2018Source
from nucseg.data.dsb2018_solution import DSB2018SolutionSource, read_solution_csv
from nucseg.data.io import probe_image
from nucseg.data.rle import rle_decode, rle_encode
from nucseg.data.splits import stratified_split
from nucseg.train import train
from nucseg.utils.errors import DataNotFoundError
from tests.helpers.datasets import write_kaggle_test_set

# 3x3, pixels numbered down the columns: col 0 = 1,2,3; col 1 = 4,5,6; col 2 = 7,8,9
HAND = np.array([[0, 1, 0],
                 [0, 1, 1],
                 [0, 0, 1]], bool)


def test_hand_computed_cases():
    assert rle_encode(HAND) == "4 2 8 2"
    assert np.array_equal(rle_decode("4 2 8 2", (3, 3)), HAND)
    assert rle_encode(np.zeros((4, 5), bool)) == ""
    assert rle_encode(np.ones((2, 3), bool)) == "1 6"
    last = np.zeros((2, 3), bool)
    last[1, 2] = True  # bottom-right pixel is number 6
    assert rle_encode(last) == "6 1"
    # a run crossing a column boundary: pixels 2-4 of a 3x2 image = (1,0), (2,0), (0,1)
    m = rle_decode("2 3", (3, 2))
    assert np.array_equal(np.argwhere(m), [[0, 1], [1, 0], [2, 0]])
    assert not rle_decode("", (3, 3)).any()


@pytest.mark.parametrize(("rle", "msg"), [("1 2 3", "odd number"), ("0 2", "1-indexed"), ("2 0", "positive"),
                                          ("8 5", "beyond the 3x3"), ("a b", "integers")])
def test_malformed_rle_is_rejected(rle, msg):
    with pytest.raises(ValueError, match=msg):
        rle_decode(rle, (3, 3))


def test_round_trip_on_real_masks(dsb_root):
    n = 0
    for rid in sorted(p.name for p in dsb_root.iterdir())[:4]:
        for f in sorted((dsb_root / rid / "masks").glob("*.png")):
            m = np.asarray(Image.open(f)) > 0
            rle = rle_encode(m)
            assert np.array_equal(rle_decode(rle, m.shape), m), f
            runs = np.array(rle.split(), int)
            assert runs[1::2].sum() == m.sum() and (np.diff(runs[0::2]) > 0).all()  # sorted, counts every pixel
            n += 1
    assert n > 50


def test_solution_csv_usage_filter_and_header(tmp_path):
    p = tmp_path / "sol.csv"
    p.write_text("ImageId,EncodedPixels,Height,Width,Usage\n"
                 "a,1 2,3,3,Public\na,5 1,3,3,Public\nb,1 1,3,3,Ignored\nc,,3,3,Private\n")
    rows = read_solution_csv(p)
    assert sorted(rows) == ["a", "c"] and [r for _, r in rows["a"]["rles"]] == ["1 2", "5 1"]
    assert rows["c"]["rles"] == [] and rows["a"]["shape"] == (3, 3)
    assert sorted(read_solution_csv(p, usage=["Ignored"])) == ["b"]
    bad = tmp_path / "bad.csv"
    bad.write_text("Id,Pixels\nx,1 1\n")
    with pytest.raises(ValueError, match="expected a header with ImageId,EncodedPixels"):
        read_solution_csv(bad)
    with pytest.raises(DataNotFoundError, match="solution CSV not found"):
        read_solution_csv(tmp_path / "missing.csv")


def test_kaggle_dir_and_solution_csv_give_identical_labels_and_metrics(dsb_root, cache_dir, make_cfg, tmp_path):
    split = stratified_split(DSB2018Source(dsb_root, index_dir=cache_dir).records(), 0.1, 0.1, seed=42)
    # the three smallest images of the real test split (whole-image evaluation on CPU costs by the pixel)
    ids = sorted(split["test"], key=lambda i: (np.prod(probe_image(dsb_root / i / "images" / f"{i}.png")), i))[:3]
    kaggle, csv_path, expected = write_kaggle_test_set(dsb_root, ids, tmp_path / "sets")

    a, b = DSB2018Source(kaggle), DSB2018SolutionSource(kaggle, csv_path)
    assert [r.id for r in a.records()] == [r.id for r in b.records()] == sorted(ids)
    for rid in ids:
        img_a, lab_a = a.load(rid)
        img_b, lab_b = b.load(rid)
        assert np.array_equal(img_a, img_b)
        assert np.array_equal(lab_a, expected[rid]) and np.array_equal(lab_b, expected[rid])
        assert b.check(rid) == lab_b.shape

    common = ["train=false", "trainer.limit_test_batches=1.0", "logger=none", "model.decoder_channels=[32,16,8]"]
    runs = {}
    for name, ov in {"kaggle": ["data=dsb2018_test", f"data.source.root={kaggle}"],
                     "csv": ["data=dsb2018_solution", f"data.source.images_root={kaggle}",
                             f"data.source.csv_path={csv_path}"]}.items():
        cfg = make_cfg(common + ov)
        cfg.paths.output_dir = str(tmp_path / name)
        runs[name] = train(cfg)
        written = json.loads((tmp_path / name / "metrics.json").read_text())
        assert written["test/dice"] == runs[name]["test/dice"]
    assert runs["kaggle"] == runs["csv"]
    assert {"test/dice", "test/iou", "test/loss"} <= set(runs["csv"])
    assert 0.0 <= runs["csv"]["test/dice"] <= 1.0


def test_solution_source_rejects_mismatches(dsb_root, tmp_path):
    rid = sorted(p.name for p in dsb_root.iterdir())[0]
    kaggle, csv_path, expected = write_kaggle_test_set(dsb_root, [rid], tmp_path)
    h, w = expected[rid].shape
    wrong = tmp_path / "wrong_size.csv"
    wrong.write_text(f"ImageId,EncodedPixels,Height,Width,Usage\n{rid},1 3,{h + 1},{w},Public\n")
    with pytest.raises(Exception, match=rf"line 2: ImageId {rid} has Height,Width \({h + 1}, {w}\)"):
        DSB2018SolutionSource(kaggle, wrong).check(rid)
    broken = tmp_path / "broken_rle.csv"
    broken.write_text(f"ImageId,EncodedPixels,Height,Width,Usage\n{rid},1 3 5,{h},{w},Public\n")
    with pytest.raises(Exception, match=rf"broken_rle.csv, line 2 \(ImageId {rid}\): RLE: expected start/length"):
        DSB2018SolutionSource(kaggle, broken).load(rid)
    missing = tmp_path / "missing_image.csv"
    missing.write_text(f"ImageId,EncodedPixels,Height,Width,Usage\nnot_there,1 3,{h},{w},Public\n")
    with pytest.raises(DataNotFoundError, match=r"have no image under .*\['not_there'\]"):
        DSB2018SolutionSource(kaggle, missing)
