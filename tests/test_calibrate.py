"""The calibrate stage (nucseg.calibrate): one pass over the validation images fits the post-processing, the
review threshold, the temperatures and the OOD density, writes the module, the records and the checkpoint once;
a checkpoint that holds a temperature and a density keeps them; the test callbacks fit nothing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import hydra
import pytest
import torch

from nucseg import calibrate as stage
from nucseg.calibrate import CalibrationSettings, calibrate
from nucseg.train import build_module
from nucseg.utils.instantiate import instantiate_callbacks
from tests.helpers.paths import PROJECT_ROOT

BAYES = ["model=bayes_unet", "data.targets=instance", "model.classes=3", "postprocess=auto",
         "model.decoder_channels=[16,8,8]", "uncertainty.samples=2", "trainer.limit_val_batches=3",
         "callbacks.uncertainty.ood.max_train_images=4", "callbacks.postprocess_tuning.max_val_images=2"]


def _plain(hp: dict) -> dict:
    """Hyper-parameters as nucseg checkpoints hold them: plain containers only (no optimizer partials)."""
    return {k: v for k, v in hp.items() if isinstance(v, (dict, list, str, int, float, bool, type(None)))}


@pytest.fixture
def bayes(make_cfg, tmp_path):
    cfg = make_cfg(BAYES)
    torch.manual_seed(0)
    module = build_module(cfg)
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")
    callbacks = instantiate_callbacks(cfg.callbacks, has_logger=False)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": _plain(dict(module.hparams))}, ckpt)
    return module, datamodule, callbacks, ckpt


def test_one_pass_fits_everything_and_writes_the_checkpoint_once(bayes, tmp_path, monkeypatch):
    module, datamodule, callbacks, ckpt = bayes
    writes = []
    real = stage.update_checkpoint_hparams
    monkeypatch.setattr(stage, "update_checkpoint_hparams", lambda path, updates: writes.append(updates) or
                        real(path, updates))
    loaded = []
    real_batches = stage.validation_batches
    monkeypatch.setattr(stage, "validation_batches",
                        lambda *a: (loaded.append(b) or b for b in real_batches(*a)))
    settings = CalibrationSettings.from_callbacks(callbacks, tmp_path / "run")
    assert settings.tune is None and settings.tune_max_images == 2 and settings.ood["max_train_images"] == 4
    result = calibrate(module, datamodule, settings, ckpt, limit_val_batches=3)

    assert len(loaded) == 3  # one loop: max(2 tuning images, 3 uncertainty images), each image loaded once
    assert len(writes) == 1 and set(writes[0]) == {"postprocess", "uncertainty", "calibration", "ood"}
    assert len(result.val_rows) == 3 and result.tuning is not None and result.tuning.summary()["n_val_images"] == 2
    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert stored["uncertainty"]["review_threshold"] == result.review.value == module.hparams.uncertainty[
        "review_threshold"]
    assert stored["calibration"]["temperature"] > 0 and stored["calibration"]["n_val_images"] == 3
    assert "temperature_unlike" in stored["calibration"]
    assert stored["ood"]["threshold"] == module.hparams["ood"]["threshold"] and stored["ood"]["density"]
    assert stored["postprocess"]["tuned"]["n_val_images"] == 2
    run, unc = tmp_path / "run", settings.uncertainty_dir  # callbacks.uncertainty.output_dir: the run folder
    assert unc == tmp_path / "uncertainty"
    trust = json.loads((unc / "trust.json").read_text())
    assert trust["n_val_images"] == 3 and trust["ood_threshold"] == stored["ood"]["threshold"]
    assert json.loads((unc / "review_threshold.json").read_text())["review_threshold"] == \
        result.review.value
    assert len((unc / "val_images.csv").read_text().splitlines()) == 1 + 3
    assert json.loads((run / "postprocess_tuning.json").read_text())["tuned"]["n_val_images"] == 2


def test_a_stored_temperature_and_density_are_kept(bayes, tmp_path):
    module, datamodule, callbacks, ckpt = bayes
    settings = CalibrationSettings.from_callbacks(callbacks, tmp_path / "first")
    calibrate(module, datamodule, settings, ckpt, limit_val_batches=3)
    kept = {"calibration": dict(module.hparams["calibration"]), "ood": dict(module.hparams["ood"])}
    module.hparams["uncertainty"] = {**module.hparams["uncertainty"], "review_threshold": "auto"}
    again = calibrate(module, datamodule, CalibrationSettings.from_callbacks(callbacks, tmp_path / "second"), ckpt,
                      limit_val_batches=3)
    assert set(again.updates) == {"postprocess", "uncertainty"}  # chosen anew; the fitted ones kept
    assert module.hparams["calibration"] == kept["calibration"] and module.hparams["ood"] == kept["ood"]


def test_without_validation_images_a_needed_choice_is_an_error_naming_it(bayes, tmp_path):
    module, datamodule, callbacks, ckpt = bayes
    datamodule.splits["val"] = []
    with pytest.raises(ValueError, match=r"postprocess.tune=true and uncertainty.review_threshold=auto need"):
        calibrate(module, datamodule, CalibrationSettings.from_callbacks(callbacks, tmp_path), ckpt)


def test_the_test_callback_refuses_an_unchosen_auto_threshold(bayes):
    from nucseg.callbacks.uncertainty import UncertaintyEvaluation

    module, *_ = bayes
    with pytest.raises(ValueError, match="review_threshold=auto was not chosen before the test"):
        UncertaintyEvaluation().on_test_start(None, module)  # type: ignore[arg-type]


def test_callbacks_fit_nothing():
    """No callback writes a checkpoint or fits a choice: that is the calibrate stage's job."""
    fitting = re.compile(r"update_checkpoint_hparams|tune_postprocess|choose_review_threshold|fit_temperature|"
                         r"FeatureDensity\.fit")
    offenders = [p.name for p in sorted((PROJECT_ROOT / "nucseg" / "callbacks").glob("*.py"))
                 if fitting.search(p.read_text())]
    assert offenders == []
    assert Path(stage.__file__).read_text().count("update_checkpoint_hparams(") == 1
