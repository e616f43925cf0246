"""`nucseg <command>`: the console command's usage, version, errors and the one-line error of a missing extra."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from nucseg import cli
from nucseg.utils import extras


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"nucseg {version('nucseg')}"


def test_no_command_prints_usage_listing_every_command_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for name in ("train", "predict", "evaluate", "tune", "export"):
        assert f"\n  {name} " in out
    assert cli.main(["--help"]) == 0


def test_unknown_command_is_one_line_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fit", "model=unet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: unknown command 'fit'; expected one of train, predict, evaluate, tune, export (nucseg --help)"


def test_every_command_names_a_module_with_a_hydra_main() -> None:
    import importlib

    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main), module


@pytest.mark.parametrize(("override", "extra"), [("hparams_search=optuna", "sweep"), ("hydra/launcher=slurm", "slurm"),
                                                 ("+hydra/sweeper=nucseg_optuna", "sweep")])
def test_missing_extra_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             override: str, extra: str) -> None:
    monkeypatch.setattr(extras, "_installed", lambda module: False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "-m", override, "seed=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f'pip install "nucseg[{extra}]"' in err and override.lstrip("+") in err


def test_installed_extras_and_unrelated_overrides_pass() -> None:
    assert extras.missing_extra(["hparams_search=optuna", "hydra/launcher=slurm"]) is None  # dev installs both
    assert extras.missing_extra(["model=unet", "optimizer.lr=0.1"]) is None
    assert not extras._installed("hydra_plugins.no_such_plugin")


def test_console_script_lists_the_commands() -> None:
    exe = Path(sys.executable).parent / "nucseg"
    if not exe.is_file():
        pytest.skip(f"no console script beside {sys.executable} (not installed with pip)")
    proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "commands:" in proc.stdout and "export" in proc.stdout
