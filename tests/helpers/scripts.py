"""The scripts under experiments/ and docs/ are not packages: load one as a module to test its functions."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.helpers.paths import PROJECT_ROOT


def load_experiment(name: str, folder: str = "experiments") -> ModuleType:
    """`<folder>/<name>.py` (experiments/ by default) as a module (its `main` is not run)."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / folder / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
