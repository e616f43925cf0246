"""Arguments are checked before any work (`nucseg.checks`): a value out of range or a missing path gives
one line naming the key, the value and what is expected, and exit status 2, from every entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nucseg.checks import RULES, check_config, violations
from nucseg.utils.errors import ConfigError, friendly_errors
from tests.helpers.checkpoints import save_checkpoint
from tests.helpers.cli import VERBOSITY_VARS, cli_env, run_module
from tests.helpers.config import compose_cfg
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import PROJECT_ROOT

EXPERIMENTS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "tiny.ckpt")


@pytest.fixture
def input_dir(tmp_path) -> Path:
    """A good image and a corrupt one: any image read would leave a row in summary.csv or errors.csv."""
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8)).save(d / "good.png")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    return d


def predict_cfg(tmp_path: Path, *overrides: str):
    return compose_cfg(list(overrides), tmp_path / "run", config_name="predict")


# ------------------------------------------------------------------ the table
@pytest.mark.parametrize("name", ["train", *[f"experiment={e}" for e in EXPERIMENTS]])
def test_shipped_configs_pass(tmp_path, name):
    cfg = compose_cfg([] if name == "train" else [name], tmp_path)
    assert violations(cfg, "train") == []


def test_good_predict_settings_pass(tmp_path, ckpt, input_dir):
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={input_dir}", f"output={tmp_path / 'out'}", "tile=64",
                      "overlap=0", "uncertainty.samples=3", "postprocess.threshold=0.4", "device=cuda:1")
    assert violations(cfg, "predict") == []
    check_config(cfg, "predict")  # raises on the first violation
    # the same settings with one bad value: exactly that key is named
    bad = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={input_dir}", f"output={tmp_path / 'out'}", "tile=64",
                      "overlap=0", "uncertainty.samples=3", "postprocess.threshold=0.4", "device=cuda:x")
    found = violations(bad, "predict")
    assert len(found) == 1 and found[0].startswith("device='cuda:x': expected"), found


@pytest.mark.parametrize(("override", "message"), [
    ("tile=100", "tile=100: expected a positive multiple of 32"),
    ("tile=0", "tile=0: expected a positive multiple of 32"),
    ("tile=true", "tile=True: expected a positive multiple of 32"),
    ("overlap=1.5", "overlap=1.5: expected a fraction of a tile, 0 <= overlap < 1"),
    ("overlap=-0.1", "overlap=-0.1: expected a fraction of a tile"),
    ("tile_batch_size=0", "tile_batch_size=0: expected an integer >= 1"),
    ("postprocess.threshold=1.0", "postprocess.threshold=1.0: expected a number between 0 and 1 (exclusive)"),
    ("postprocess.min_size=-5", "postprocess.min_size=-5: expected an integer >= 0"),
    ("uncertainty.samples=0", "uncertainty.samples=0: expected an integer >= 1"),
    ("uncertainty.review_threshold=high", "uncertainty.review_threshold='high': expected a number between 0 and 1"),
    ("device=gpu", "device='gpu': expected auto, cpu, cuda, cuda:<index> or mps"),
    ("blend=linear", "blend='linear': expected gaussian or constant"),
])
def test_each_bad_predict_value_is_named_with_what_is_expected(tmp_path, ckpt, input_dir, override, message):
    cfg = predict_cfg(tmp_path, f"ckpt_path={ckpt}", f"input={input_dir}", f"output={tmp_path / 'out'}", override)
    with pytest.raises(ConfigError) as info:
        check_config(cfg, "predict")
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_paths_and_train_keys(tmp_path, ckpt, input_dir):
    cfg = predict_cfg(tmp_path, f"ckpt_path={tmp_path / 'no.ckpt'}", f"input={tmp_path / 'nowhere'}",
                      f"output={ckpt}")
    assert violations(cfg, "predict") == [
        f"ckpt_path={str(tmp_path / 'no.ckpt')!r}: expected an existing checkpoint file "
        "(e.g. <run dir>/checkpoints/model.ckpt)",
        f"input={str(tmp_path / 'nowhere')!r}: expected an existing image file or folder",
        f"output={str(ckpt)!r}: expected a folder (created if missing), not a file"]
    assert violations(predict_cfg(tmp_path), "predict")[0].startswith("ckpt_path: missing; expected an existing")
    cfg = compose_cfg(["data.crop_size=100", "data.batch_size=0", "trainer.devices=0", "budget.minutes=-1",
                       "ckpt_path=last"], tmp_path)
    assert [v.split(":")[0] for v in violations(cfg, "train")] == [
        "data.crop_size=100", "data.batch_size=0", "trainer.devices=0", "budget.minutes=-1"]  # not ckpt_path
    assert all(r.expected for r in RULES.values())


# ------------------------------------------------------------------ from the command line
def run_cli(module: str, *args: str, full_error: bool = False) -> tuple[int, str]:
    proc = run_module(module, *args, env=cli_env(full_error=full_error))
    return proc.returncode, proc.stdout + proc.stderr


def test_predict_cli_refuses_bad_arguments_before_reading_any_image(tmp_path, ckpt, input_dir):
    # each message is checked in-process above, and bad checkpoints from the command line in
    # tests/models/test_checkpoint_safety.py; here that a settings check is one line with exit 2 before any
    # image is read (each case costs a new interpreter: seconds on 2 cores)
    out = tmp_path / "out"
    code, text = run_cli("nucseg.predict", f"ckpt_path={ckpt}", f"input={input_dir}", f"output={out}",
                         "progress=false", "device=cpu", "tile=100")
    assert code == 2 and "Traceback" not in text, text[-2000:]
    expected = "tile=100: expected a positive multiple of 32 (e.g. 512)"
    assert len([ln for ln in text.splitlines() if expected in ln]) == 1, text[-2000:]
    assert not (out / "summary.csv").exists() and not (out / "errors.csv").exists()  # no image was read


@pytest.mark.parametrize("var", ["NUCSEG_FULL_ERROR", "HYDRA_FULL_ERROR"])
def test_friendly_errors_exit_2_with_one_line_unless_a_full_error_is_asked_for(monkeypatch, capsys, caplog, var):
    for name in VERBOSITY_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info, friendly_errors():
        raise ConfigError("tile=100: expected a positive multiple of 32 (e.g. 512)")
    assert info.value.code == 2
    err = capsys.readouterr().err + caplog.text  # logged where logging is set up (as under Hydra), else printed
    assert err.count("tile=100: expected") == 1 and "Traceback" not in err
    with pytest.raises(RuntimeError), friendly_errors():  # not a user error: the traceback, whatever the setting
        raise RuntimeError("a bug")
    monkeypatch.setenv(var, "1")
    with pytest.raises(ConfigError, match="tile=100"), friendly_errors():
        raise ConfigError("tile=100: expected a positive multiple of 32 (e.g. 512)")


@LONG_RUN
def test_full_error_shows_the_traceback(tmp_path, ckpt, input_dir):
    code, text = run_cli("nucseg.predict", f"ckpt_path={ckpt}", f"input={input_dir}", f"output={tmp_path / 'o'}",
                         "tile=100", full_error=True)
    assert code != 0 and "Traceback" in text and "ConfigError: tile=100" in text


@LONG_RUN  # the predict CLI keeps the subprocess check in the default suite; these values are checked in-process
def test_evaluate_cli_refuses_bad_arguments(tmp_path):
    # train's settings are checked in-process above (test_paths_and_train_keys), and its one-line exit from the
    # command line in tests/e2e/test_cli.py (missing data root)
    code, text = run_cli("nucseg.evaluate", f"ckpt_path={tmp_path / 'gone.ckpt'}", "logger=none",
                         f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 2 and "Traceback" not in text, text[-2000:]
    assert len([ln for ln in text.splitlines() if "ckpt_path=" in ln and "expected an existing" in ln]) == 1
