"""The entry point as a user types it: `python -m nucseg.train ...` in a fresh process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from nucseg.models.module import load_module
from tests.helpers.cli import cli_env, run_module


def run_cli(args: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return run_module("nucseg.train", *args, env=cli_env(**(env_extra or {})), timeout=timeout)


def test_train_cli_debug_limit_writes_metrics_and_checkpoint(tmp_path, data_dir, cache_dir):
    run_dir = tmp_path / "smoke"
    proc = run_cli(["data=dsb2018", "model=unet", "debug=limit", "logger=csv", f"hydra.run.dir={run_dir}",
                    "model.encoder_name=resnet18", "data.crop_size=64", "trainer.enable_progress_bar=false",
                    "callbacks.rich_progress_bar=null", f"paths.cache_dir={cache_dir}"],
                   {"NUCSEG_DATA_DIR": str(data_dir)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/dice", "test/iou", "test/auroc"} <= set(metrics)
    ckpt = Path(metrics["best_model_path"])
    assert ckpt.is_file() and ckpt.parent == run_dir / "checkpoints"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    # the checkpoint alone rebuilds the model (no config), loaded with weights_only
    module = load_module(ckpt)
    assert module.hparams.net["encoder_name"] == "resnet18"
    with torch.no_grad():
        out = module.predict_logits(torch.rand(1, 3, 50, 70))
    assert out.shape == (1, 1, 50, 70)


def test_missing_data_root_gives_one_clear_message(tmp_path):
    proc = run_cli([f"hydra.run.dir={tmp_path / 'run'}"], {"NUCSEG_DATA_DIR": str(tmp_path / "no-data")})
    assert proc.returncode == 2
    err = proc.stderr + proc.stdout
    assert f"looked for the directory {tmp_path / 'no-data'}/dsb2018/stage1_train" in err
    assert "data-science-bowl-2018" in err and "BBBC038" in err and "NUCSEG_DATA_DIR" in err
    assert "Traceback" not in err
