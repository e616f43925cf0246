"""The Dockerfile cannot be built here (no Docker daemon): it is linted with hadolint and read, so that it keeps
installing on the tested pins, ships the extras and configs, and keeps data, outputs and cache in volumes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
# the dev extra installs hadolint into the venv on Linux, whose bin/ need not be on PATH
HADOLINT = shutil.which("hadolint") or next((str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.is_file()),
                                            None)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2).strip()) for m in re.finditer(r"^\s*(\w+)\s+(.*)$", joined, re.M)]


def test_instructions_parser_joins_continuations_and_skips_comments() -> None:
    text = "# c\nFROM a:1\nRUN x \\\n    && y\n# RUN z\nVOLUME [\"/d\"]\n"
    assert instructions(text) == [("FROM", "a:1"), ("RUN", "x      && y"), ("VOLUME", '["/d"]')]


def test_dockerfile_installs_on_the_tested_pins_with_its_extras_and_volumes() -> None:
    steps = instructions(DOCKERFILE.read_text())
    kinds = [k for k, _ in steps]
    copies = [args.split() for k, args in steps if k == "COPY"]
    for *sources, _ in copies:  # every file it copies exists in the checkout
        for source in sources:
            assert (PROJECT_ROOT / source).exists(), f"COPY {source}: not in the repository"
    copied = {s for *sources, _ in copies for s in sources}
    assert {"requirements/constraints.txt", "pyproject.toml", "setup.py", "nucseg", "conf"} <= copied
    (install,) = [args for k, args in steps if k == "RUN" and "pip install" in args]
    assert "-c requirements/constraints.txt" in install
    extras = set(re.search(r"\.\[([\w,]+)\]", install).group(1).split(","))
    assert {"pretrained", "export"} <= extras
    assert " -e " not in install  # a regular install: the configs must come from inside the package
    # the constraints are copied before the install that reads them
    first_copy = next(i for i, (k, a) in enumerate(steps) if k == "COPY" and "constraints.txt" in a)
    assert first_copy < next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "pip install" in a)
    volumes = json.loads(next(args for k, args in steps if k == "VOLUME"))
    root = dict(re.findall(r"(\w+)=(\S+)", " ".join(a for k, a in steps if k == "ENV")))["NUCSEG_ROOT"]
    assert {"/data", f"{root}/outputs", f"{root}/.cache"} <= set(volumes)
    assert json.loads(next(args for k, args in steps if k == "ENTRYPOINT")) == ["nucseg"]
    assert kinds[0] == "FROM"
    assert "--shm-size" in DOCKERFILE.read_text()


def test_constraints_pin_torch_and_torchvision() -> None:
    pins = dict(re.findall(r"^([\w-]+)==(\S+)", (PROJECT_ROOT / "requirements" / "constraints.txt").read_text(), re.M))
    assert "torch" in pins and "torchvision" in pins


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (the dev extra installs it on Linux)")
def test_hadolint_passes() -> None:
    assert HADOLINT is not None
    proc = subprocess.run([HADOLINT, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
