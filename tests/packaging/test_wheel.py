"""The wheel works outside the checkout: built from the source tree, installed into a fresh venv, and run from a
temporary directory (train, predict, evaluate), with its configs inside the package and its outputs in the
working directory."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers.cli import cli_env
from tests.helpers.marks import LONG_RUN
from tests.helpers.paths import DATA_DIR, PROJECT_ROOT

pytestmark = pytest.mark.skipif(not (DATA_DIR / "dsb2018").is_dir(), reason=f"no DSB2018 data under {DATA_DIR}")


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@LONG_RUN
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    env = {**cli_env(), "NUCSEG_DATA_DIR": str(DATA_DIR), "NUCSEG_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)  # nothing of the checkout on the path
    # no build isolation: the build backend comes from this environment, not from the network
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(PROJECT_ROOT)],
         tmp_path, env)
    (wheel,) = dist.glob("nucseg-*.whl")
    with zipfile.ZipFile(wheel) as zf:  # the sweeper plugin, in Hydra's namespace package (no __init__.py of it)
        names = set(zf.namelist())
    assert "hydra_plugins/nucseg_optuna_sweeper/sweeper.py" in names and "hydra_plugins/__init__.py" not in names
    # a fresh venv for nucseg itself; its dependencies are read from this environment's site-packages through a
    # path entry (whose own .pth files, among them the editable install of the checkout, are not processed)
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     env).stdout.strip())
    (site / "_nucseg_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)],
         tmp_path, env)

    where = _run([str(py), "-c", "import nucseg, nucseg.utils.config as c; print(nucseg.__file__); print(c.CONF_DIR)"],
                 work, env).stdout.split()
    assert Path(where[0]).is_relative_to(venv) and Path(where[1]) == site / "nucseg" / "conf", where
    version = re.search(r'^version = "(.+)"$', (PROJECT_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert _run([str(venv / "bin" / "nucseg"), "--version"], work, env).stdout.strip() == f"nucseg {version}"

    sweepers = [str(py), "-c", "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
                "print(*[c.__name__ for c in Plugins.instance().discover(Sweeper)])"]
    assert "NucsegOptunaSweeper" in _run(sweepers, work, env).stdout.split()  # found by Hydra's plugin scan

    nucseg = str(venv / "bin" / "nucseg")
    _run([nucseg, "train", "debug=limit", "logger=csv", "hydra.run.dir=run"], work, env)
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert "test/dice" in metrics
    ckpt = work / "run" / "checkpoints" / "model.ckpt"
    images = sorted((DATA_DIR / "dsb2018" / "stage1_train").iterdir())[0] / "images"
    _run([nucseg, "predict", f"ckpt_path={ckpt}", f"input={images}", "output=pred"], work, env)
    assert (work / "pred" / "summary.csv").is_file()
    _run([nucseg, "evaluate", f"ckpt_path={ckpt}", "debug=limit", "hydra.run.dir=eval"], work, env)
    assert "test/dice" in json.loads((work / "eval" / "metrics.json").read_text())
    # run folders and the cache default to the working directory (paths.root_dir), never site-packages
    root = _run([str(py), "-c", "from nucseg.utils.config import root_dir; print(root_dir())"], work, env).stdout
    assert Path(root.strip()) == work.resolve()
    assert not (site / "outputs").exists() and not (site / ".cache").exists()
