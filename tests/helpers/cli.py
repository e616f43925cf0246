"""Run a nucseg entry point in a subprocess as a user would: `python -m nucseg.<entry> ...` from the project root,
with the variables that make errors verbose removed, so a test that asserts "one line, no traceback" checks what
a user sees whatever the developer's shell exports."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers.paths import PROJECT_ROOT

__all__ = ["VERBOSITY_VARS", "cli_env", "run_module"]

# either one turns nucseg's one-line errors into full tracebacks
VERBOSITY_VARS = ("NUCSEG_FULL_ERROR", "HYDRA_FULL_ERROR")


def cli_env(full_error: bool = False, **extra: str) -> dict[str, str]:
    """os.environ with the project on PYTHONPATH and without `VERBOSITY_VARS` (unless `full_error`), plus
    `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in VERBOSITY_VARS}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    env.update(extra)
    return env


def run_module(module: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300
               ) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` in the project root, output captured as text."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=PROJECT_ROOT,
                          env=env if env is not None else cli_env(), timeout=timeout)
