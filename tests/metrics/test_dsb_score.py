"""The DSB2018 score against hand-computed cases, the real label maps, and an end-to-end instance run."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nucseg.metrics import dsb_score as dsb
from nucseg.metrics.dsb_score import (
    DSBScore,
    ap_at,
    count_error,
    dsb_score_image,
    instance_scores,
    iou_matrix,
)
from tests.helpers.marks import LONG_RUN


def brute_force_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One mask comparison per pair of objects: slow, obviously right."""
    t_ids, p_ids = [i for i in np.unique(true) if i], [j for j in np.unique(pred) if j]
    out = np.zeros((len(t_ids), len(p_ids)))
    for a, i in enumerate(t_ids):
        for b, j in enumerate(p_ids):
            inter = np.sum((true == i) & (pred == j))
            out[a, b] = inter / np.sum((true == i) | (pred == j))
    return out


def brute_force_score(true: np.ndarray, pred: np.ndarray) -> float:
    iou = brute_force_iou(true, pred)
    n_true, n_pred = iou.shape
    if n_true == n_pred == 0:
        return 1.0
    precisions = []
    for k in range(10):  # thresholds 0.50, 0.55, ..., 0.95 as exact fractions k/20 + 1/2
        tp = int(np.sum(iou * 20 > 10 + k))
        precisions.append(tp / (n_true + n_pred - tp))
    return float(np.mean(precisions))


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two true nuclei; the first is found with IoU 6/10 = 0.6, the second missed; one spurious prediction."""
    true = np.zeros((10, 12), np.int32)
    pred = np.zeros((10, 12), np.int32)
    true[0:2, 0:5] = 3  # 10 px
    pred[0:2, 0:3] = 8  # 6 px inside it: IoU 0.6
    true[5:8, 5:8] = 11  # missed
    pred[8:10, 9:12] = 2  # spurious
    return true, pred


def test_hand_built_case():
    true, pred = hand_case()
    # labels in sorted order: true (3, 11), pred (2, 8)
    np.testing.assert_allclose(iou_matrix(true, pred), [[0.0, 0.6], [0.0, 0.0]])
    # thresholds 0.50, 0.55: TP=1, FP=1, FN=1 -> 1/3; 0.60 (IoU exactly at it) .. 0.95: TP=0, FP=2, FN=2 -> 0
    assert dsb_score_image(true, pred) == pytest.approx(2 * (1 / 3) / 10)
    assert ap_at(true, pred, 0.5) == pytest.approx(1 / 3)
    assert ap_at(true, pred, 0.6) == 0.0
    assert count_error(true, pred) == 0.0
    assert instance_scores(true, pred) == pytest.approx(
        {"dsb_score": 1 / 15, "ap50": 1 / 3, "count_error": 0.0, "n_true": 2, "n_pred": 2})


@pytest.mark.parametrize("k", range(10, 21))
def test_iou_exactly_at_a_threshold_does_not_match(k):
    """IoU = k/20: matches at exactly the thresholds strictly below it, i.e. k - 10 of the ten."""
    true = np.zeros((4, 5), np.int32)
    true[:, :] = 1  # 20 px
    pred = np.zeros_like(true)
    pred.flat[:k] = 1
    assert dsb_score_image(true, pred) == pytest.approx((k - 10) / 10)


def test_empty_images_and_count_error():
    empty = np.zeros((6, 6), np.int32)
    some = empty.copy()
    some[1:3, 1:3], some[4:6, 4:6] = 1, 2
    assert dsb_score_image(empty, empty) == 1.0 and ap_at(empty, empty) == 1.0
    assert dsb_score_image(some, empty) == 0.0 and dsb_score_image(empty, some) == 0.0
    assert count_error(some, empty) == 1.0  # 2 missed of 2
    assert count_error(empty, some) == 2.0  # 2 spurious, none true: divided by max(n_true, 1)
    assert iou_matrix(empty, some).shape == (0, 2)
    four = np.zeros((8, 8), np.int32)
    four[0, 0], four[0, 2], four[0, 4], four[0, 6] = 1, 2, 3, 4
    assert count_error(four, some) == pytest.approx(0.5)
    assert instance_scores(empty, empty) == {"dsb_score": 1.0, "ap50": 1.0, "count_error": 0.0,
                                             "n_true": 0, "n_pred": 0}


@pytest.mark.parametrize("dense_limit", [1 << 24, 1])  # bincount path and the sparse path
def test_matches_brute_force_on_random_label_maps(dense_limit, monkeypatch):
    monkeypatch.setattr(dsb, "_DENSE_LIMIT", dense_limit)
    rng = np.random.default_rng(1)
    from scipy import ndimage as ndi

    for _ in range(5):
        true = ndi.zoom(rng.integers(0, 9, (8, 8)), 5, order=0) * 7  # non-consecutive labels
        pred = np.roll(true, rng.integers(-3, 4, 2), (0, 1))
        pred[rng.random(pred.shape) < 0.05] = 0
        pred[pred == 14] = 10_000_000  # a huge label value takes the np.unique path of the relabelling
        np.testing.assert_allclose(iou_matrix(true, pred), brute_force_iou(true, pred))
        assert dsb_score_image(true, pred) == pytest.approx(brute_force_score(true, pred))


def test_score_ignores_label_values():
    true, pred = hand_case()
    renamed = np.select([pred == 8, pred == 2], [1, 500], 0)
    assert dsb_score_image(true, renamed) == dsb_score_image(true, pred)


def test_bad_inputs_are_named():
    a = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="differ in shape"):
        dsb_score_image(a, np.zeros((4, 5), np.int32))
    with pytest.raises(ValueError, match="predicted labels: expected integer"):
        dsb_score_image(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="true labels: expected labels >= 0"):
        dsb_score_image(a - 1, a)
    with pytest.raises(ValueError, match="IoU thresholds"):
        dsb_score_image(a, a, thresholds=[0.3])


def test_torchmetrics_class_averages_per_image_and_merges_states():
    true, pred = hand_case()
    empty = np.zeros_like(true)
    metric = DSBScore()
    metric.update(torch.from_numpy(np.stack([pred, empty])), torch.from_numpy(np.stack([true, empty])))
    assert [s["dsb_score"] for s in metric.last] == pytest.approx([1 / 15, 1.0])
    other = DSBScore()
    other.update(true, true)  # a second process that saw one perfect image
    metric.merge_state(other)  # what the "sum" reduction does across DDP processes
    out = metric.compute()
    assert out["dsb_score"].item() == pytest.approx((1 / 15 + 1.0 + 1.0) / 3)
    assert out["ap50"].item() == pytest.approx((1 / 3 + 1.0 + 1.0) / 3)
    assert out["count_error"].item() == 0.0 and out["n_images"].item() == 3
    metric.reset()
    assert metric.n_images.item() == 0


# ----------------------------------------------------------------------------------------------- callback
def test_instance_metrics_callback_rows_and_logs():
    from nucseg.callbacks.instance_metrics import InstanceMetrics
    from nucseg.instances import instance_targets

    labels = np.zeros((20, 30), np.int32)
    labels[4:16, 3:11], labels[4:16, 11:17] = 1, 2  # 96 px and 72 px, touching
    probs = torch.from_numpy(instance_targets(labels))[None]  # perfect 3-channel probabilities
    logged: dict[str, float] = {}
    module = SimpleNamespace(hparams={"postprocess": {"method": "auto", "min_size": 10}, "net": {"classes": 3}},
                             device=torch.device("cpu"), threshold=0.5,
                             log=lambda name, value, **kw: logged.__setitem__(name, float(value)))
    cb = InstanceMetrics()
    cb.on_test_epoch_start(None, module)
    batch = {"labels": torch.from_numpy(labels)[None], "labelled": [True], "id": ["rects"]}
    cb.on_test_batch_end(None, module, {"probs": probs}, batch, 0)
    unlabelled = {**batch, "labelled": [False], "id": ["unlabelled"]}
    cb.on_test_batch_end(None, module, {"probs": probs}, unlabelled, 1)
    cb.on_test_epoch_end(None, module)
    assert [r["id"] for r in cb.rows] == ["rects"]
    row = cb.rows[0]
    assert row == pytest.approx({"id": "rects", "dsb_score": 1.0, "ap50": 1.0, "count_error": 0.0, "n_true": 2,
                                 "n_pred": 2, "dice": 1.0, "dsb_score_cc": 0.1, "ap50_cc": 0.5,
                                 "count_error_cc": 0.5, "n_pred_cc": 1})
    # connected components merge the two: IoU 96/168 with the larger one matches at 0.50 and 0.55 only
    assert logged == pytest.approx({"test/dsb_score": 1.0, "test/ap50": 1.0, "test/count_error": 0.0,
                                    "test/dsb_score_cc": 0.1, "test/ap50_cc": 0.5, "test/count_error_cc": 0.5})

    # a binary model: connected components only, no comparison columns; unlabelled images alone log nothing
    module.hparams = {"postprocess": None, "net": {"classes": 1}}
    logged.clear()
    cb.on_test_epoch_start(None, module)
    cb.on_test_batch_end(None, module, {"probs": probs[:, :1]}, batch, 0)
    cb.on_test_epoch_end(None, module)
    assert cb.rows[0]["n_pred"] == 1 and "dsb_score_cc" not in cb.rows[0]
    assert logged == pytest.approx({"test/dsb_score": 0.1, "test/ap50": 0.5, "test/count_error": 0.5})
    logged.clear()
    cb.on_test_epoch_start(None, module)
    cb.on_test_batch_end(None, module, {"probs": probs[:, :1]}, unlabelled, 0)
    cb.on_test_epoch_end(None, module)
    assert cb.rows == [] and logged == {}


# ----------------------------------------------------------------------------------------------- real data
def drop_last_nucleus(labels: np.ndarray) -> np.ndarray:
    return np.where(labels == labels.max(), 0, labels)


def test_real_label_maps_score_one_against_themselves(dsb_root):
    """A few real images: self 1.0; one nucleus dropped -> exactly (n - 1) / n at every threshold."""
    from nucseg.data.dsb2018 import DSB2018Source

    source = DSB2018Source(dsb_root)
    for rid in [r for r in sorted(p.name for p in dsb_root.iterdir())][:6]:
        _, labels = source.load(rid)
        n = len(np.unique(labels)) - 1
        assert instance_scores(labels, labels) == {"dsb_score": 1.0, "ap50": 1.0, "count_error": 0.0,
                                                   "n_true": n, "n_pred": n}
        assert dsb_score_image(labels, drop_last_nucleus(labels)) == pytest.approx((n - 1) / n)


@LONG_RUN
def test_all_dsb2018_ground_truth_scores(dsb_root):
    """All label maps of stage1_train: self 1.0, one nucleus dropped (n-1)/n, a 2-px shift equal to the brute force."""
    from nucseg.data.dsb2018 import DSB2018Source

    source = DSB2018Source(dsb_root)
    ids = sorted(p.name for p in dsb_root.iterdir() if (p / "masks").is_dir())
    assert len(ids) > 600  # 664 here, 670 in the public downloads
    t0 = time.perf_counter()
    maps = [source.load(rid)[1] for rid in ids]
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    selfs = [instance_scores(m, m) for m in maps]
    dropped = [dsb_score_image(m, drop_last_nucleus(m)) for m in maps]
    shifted = [dsb_score_image(m, np.roll(m, 2, axis=1)) for m in maps]
    t_score = time.perf_counter() - t0
    n_nuclei = sum(s["n_true"] for s in selfs)
    print(f"\n{len(maps)} images, {n_nuclei} nuclei: decode {t_load:.1f} s, 3 x {len(maps)} scores {t_score:.2f} s")
    assert n_nuclei > 28_000
    assert all(s["dsb_score"] == 1.0 and s["count_error"] == 0.0 for s in selfs)
    expected = [(s["n_true"] - 1) / s["n_true"] for s in selfs]
    np.testing.assert_allclose(dropped, expected)
    assert 0.0 < np.mean(shifted) < 1.0
    for i in range(0, len(maps), 40):  # brute force is slow: every 40th image
        m = maps[i]
        assert shifted[i] == pytest.approx(brute_force_score(m, np.roll(m, 2, axis=1)))


# ----------------------------------------------------------------------------------------------- end to end
def test_instance_experiment_writes_dsb_scores(make_cfg, tmp_path: Path):
    """Train the 3-channel U-Net briefly; test/dsb_score etc. land in metrics.json and match a recomputation
    from the best checkpoint alone (its stored `postprocess`)."""
    import hydra

    from nucseg.instances import probs_to_instances
    from nucseg.models.module import load_module
    from nucseg.train import train

    cfg = make_cfg(["logger=csv", "experiment=unet_instance", "module.auroc_thresholds=10",
                    "trainer.limit_val_batches=1"])
    train(cfg)
    data = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/dsb_score", "test/ap50", "test/count_error", "test/dsb_score_cc", "test/ap50_cc"):
        assert key in data, key
    assert 0.0 <= data["test/dsb_score"] <= data["test/ap50"] <= 1.0 and data["test/count_error"] >= 0.0

    module = load_module(data["best_model_path"])
    assert module.hparams.targets == "instance" and module.hparams.postprocess["method"] == "watershed"
    datamodule = hydra.utils.instantiate(cfg.data)
    metric = DSBScore()
    with torch.no_grad():
        for i, batch in enumerate(datamodule.test_dataloader()):
            if i == cfg.trainer.limit_test_batches:
                break
            probs = torch.sigmoid(module.predict_logits(batch["image"]))[0].numpy()
            metric.update(probs_to_instances(probs, **module.hparams.postprocess), batch["labels"][0])
    out = metric.compute()
    assert out["n_images"].item() == cfg.trainer.limit_test_batches
    for name in DSBScore.METRICS:
        assert out[name].item() == pytest.approx(data[f"test/{name}"], abs=1e-5)
