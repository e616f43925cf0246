"""What goes to W&B after a run: the model artifact's metadata, the per-image table's cells, and nothing (no
wandb import) without a WandbLogger. The offline run itself: tests/e2e/test_wandb_offline.py."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import torch
from PIL import Image

import nucseg
from nucseg.callbacks.wandb_outputs import WandbRunOutputs, log_run_outputs, model_metadata, read_table
from tests.helpers.checkpoints import save_checkpoint


def test_model_metadata_is_what_the_checkpoint_stores_with_the_rule_and_test_metrics(tmp_path):
    tuned = {"threshold": 0.45, "min_size": 12, "tuned": {"val_dsb_before": 0.41, "val_dsb_after": 0.47}}
    ckpt = save_checkpoint(tmp_path / "model.ckpt", threshold=0.5, postprocess={"method": "watershed", **tuned},
                           uncertainty={"method": "mc_dropout", "review_threshold": 0.625},
                           calibration={"temperature": 1.25, "temperature_unlike": 1.5},
                           ood={"density": {"means": [0.0]}, "threshold": 3.5})
    (tmp_path / "uncertainty").mkdir()
    (tmp_path / "uncertainty" / "review_threshold.json").write_text(json.dumps({"review_threshold": 0.625,
                                                                                 "rule": "youden"}))
    meta = model_metadata(ckpt, tmp_path, {"test/dice": 0.8, "test/ece": math.nan, "val/dice": 0.7})
    assert meta["postprocess"] == {"method": "watershed", **tuned}
    assert (meta["review_threshold"], meta["review_rule"], meta["uncertainty_method"]) == (0.625, "youden",
                                                                                          "mc_dropout")
    assert meta["calibration"] == {"temperature": 1.25, "temperature_unlike": 1.5}
    assert meta["ood_threshold"] == 3.5 and "density" not in json.dumps(meta)  # the threshold, not the density
    assert meta["metrics"] == {"test/dice": 0.8, "test/ece": None}  # test metrics only, NaN as null
    assert meta["nucseg_version"] == nucseg.__version__ and meta["machine"]["device"] == "cpu"
    assert meta == json.loads(json.dumps(meta))  # plain JSON


def test_model_metadata_of_a_model_without_uncertainty_or_tuning(tmp_path):
    meta = model_metadata(save_checkpoint(tmp_path / "model.ckpt"), tmp_path, {})
    assert meta["review_threshold"] is None and meta["review_rule"] is None and meta["ood_threshold"] is None
    assert meta["postprocess"] == {} and meta["calibration"] == {} and meta["metrics"] == {}


def test_read_table_types_each_column_and_keeps_ids_as_text(tmp_path):
    path = tmp_path / "per_image.csv"
    path.write_text("id,n_true,dice,needs_review,review_reason\n12e4,3,0.5,True,\n0a1f,,0.25,False,uncertain\n")
    columns, rows = read_table(path)
    assert columns == ["id", "n_true", "dice", "needs_review", "review_reason"]
    assert rows == [["12e4", 3, 0.5, True, None], ["0a1f", None, 0.25, False, "uncertain"]]


def test_without_a_wandb_logger_nothing_is_logged_and_wandb_is_not_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError from here on
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(tmp_path / "checkpoints" / "model.ckpt")
    (tmp_path / "per_image.csv").write_text("id,dice\na,0.5\n")
    trainer = SimpleNamespace(loggers=[], is_global_zero=True)
    log_run_outputs([WandbRunOutputs()], trainer, tmp_path, {"test/dice": 0.5})  # type: ignore[arg-type]


class FakeRun:
    """What the callback calls on a `wandb.Run`, recorded."""

    id = "abc123"

    def __init__(self):
        self.logged: dict = {}
        self.artifacts: list = []

    def log(self, payload):
        self.logged.update(payload)

    def log_artifact(self, artifact, aliases):
        self.artifacts.append((artifact, list(aliases)))


def test_files_of_an_earlier_launch_are_not_logged_as_this_runs(tmp_path, monkeypatch):
    """A run directory reused without a test in this process (test=false after an earlier tested launch): only the
    figures go to W&B; once this process tested a checkpoint, the table and the model artifact go too."""
    import nucseg.callbacks.wandb_outputs as mod

    run = FakeRun()
    monkeypatch.setattr(mod, "wandb_experiments", lambda trainer: [run])
    (tmp_path / "checkpoints").mkdir()
    model = save_checkpoint(tmp_path / "checkpoints" / "model.ckpt", uncertainty={"review_threshold": 0.5})
    (tmp_path / "per_image.csv").write_text("id,dice\na,0.5\nb,0.75\n")
    (tmp_path / "figures").mkdir()
    Image.new("RGB", (8, 6)).save(tmp_path / "figures" / "training_curves.png")
    trainer = SimpleNamespace(is_global_zero=True, ckpt_path=str(tmp_path / "checkpoints" / "epoch_001.ckpt"),
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))
    cb = WandbRunOutputs()
    cb.log_outputs(trainer, tmp_path, {"test/dice": 0.625})  # type: ignore[arg-type]
    assert list(run.logged) == ["figures/training_curves"] and run.artifacts == []

    cb.on_test_end(trainer, None)  # type: ignore[arg-type]
    cb.log_outputs(trainer, tmp_path, {"test/dice": 0.625})  # type: ignore[arg-type]
    assert run.logged["test/per_image"].columns == ["id", "dice"]
    assert run.logged["test/per_image"].data == [["a", 0.5], ["b", 0.75]]
    ((artifact, aliases),) = run.artifacts
    assert (artifact.name, artifact.type, aliases) == ("model-abc123", "model", ["tested", "latest"])
    assert artifact.metadata["tested_checkpoint"] == "epoch_001.ckpt"
    assert artifact.metadata["review_threshold"] == 0.5 and artifact.metadata["metrics"] == {"test/dice": 0.625}
    assert list(artifact.manifest.entries) == ["model.ckpt"] and artifact.manifest.entries["model.ckpt"].size == \
        model.stat().st_size
