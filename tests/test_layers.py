"""The package's layers: a module imports only from its own layer or the ones below, never back up.

Every import counts, also one inside a function or under `if TYPE_CHECKING:` (a lazy import back up is still a
dependency back up). The ground floor (`nucseg.utils`: errors, atomic file I/O, tables, config plumbing) imports
nothing of nucseg outside itself. Callbacks score and draw; the calibrate stage writes the checkpoint, once, so
no callback writes one.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers.paths import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "nucseg"

# bottom to top; a module belongs to the longest prefix listed ("nucseg" itself: only nucseg/__init__.py)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground floor", ("nucseg.utils",)),
    ("settings", ("nucseg.settings",)),
    ("measures", ("nucseg.metrics", "nucseg.losses")),
    ("building blocks", ("nucseg.models", "nucseg.instances", "nucseg.viz")),
    ("data", ("nucseg.data",)),
    ("prediction", ("nucseg.uncertainty", "nucseg.inference", "nucseg.checks")),
    ("run features", ("nucseg.callbacks", "nucseg.training", "nucseg.export", "nucseg.sweep")),
    ("calibration", ("nucseg.calibrate",)),
    ("entry points", ("nucseg.train", "nucseg.evaluate", "nucseg.predict", "nucseg.tune", "nucseg.cli", "nucseg")),
]
# what writes a checkpoint file
CHECKPOINT_WRITERS = frozenset({"save_checkpoint", "update_checkpoint_hparams", "publish_model"})


def module_name(path: Path, root: Path) -> str:
    """`root/sub/mod.py` -> `<root name>.sub.mod` (a package's `__init__.py` -> the package)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in the file, relative ones resolved; `from a import b` counts
    as `a.b` where that is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base


def layer_of(name: str, layers: Sequence[tuple[str, tuple[str, ...]]], top: str) -> int | None:
    """Index of the layer whose longest prefix matches `name`; the top package matches only itself."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            matches = name == prefix or (prefix != top and name.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def layer_violations(root: Path, layers: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    """One line per module without a layer and per import of a higher layer: file:line, both modules and
    both layers."""
    top = root.name
    mods = modules(root)
    out = []
    for name, path in mods.items():
        mine = layer_of(name, layers, top)
        where = path.relative_to(root.parent)
        if mine is None:
            out.append(f"{where}: {name} is in no layer (add it to LAYERS)")
            continue
        for line, target in imports(path, name, set(mods)):
            if target != top and not target.startswith(top + "."):
                continue
            theirs = layer_of(target, layers, top)
            if theirs is None or theirs > mine:
                out.append(f"{where}:{line}: {name} ({layers[mine][0]}) imports {target} "
                           f"({'no layer' if theirs is None else layers[theirs][0]})")
    return out


def checkpoint_writes(root: Path) -> list[str]:
    """file:line of every call that writes a checkpoint (`torch.save`, `trainer.save_checkpoint`, ...)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if called in CHECKPOINT_WRITERS or (owner == "torch" and called == "save"):
                out.append(f"{path.relative_to(root.parent)}:{node.lineno}: {owner + '.' if owner else ''}{called}")
    return out


def test_no_import_goes_up_a_layer() -> None:
    assert layer_violations(PACKAGE, LAYERS) == []


def test_the_ground_floor_imports_nothing_of_nucseg_above_it() -> None:
    root = PACKAGE / "utils"
    known = set(modules(PACKAGE))
    bad = [f"{path.relative_to(PROJECT_ROOT)}:{line}: {target}"
           for name, path in modules(PACKAGE).items() if name.startswith("nucseg.utils")
           for line, target in imports(path, name, known)
           if (target == "nucseg" or target.startswith("nucseg.")) and not target.startswith("nucseg.utils")]
    assert root.is_dir() and bad == []


def test_no_callback_writes_a_checkpoint() -> None:
    assert checkpoint_writes(PACKAGE / "callbacks") == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


TOY_LAYERS = [("low", ("pkg.low",)), ("high", ("pkg.high", "pkg"))]


def test_the_checker_names_an_import_back_up(tmp_path: Path) -> None:
    """A lazy import inside a function, a relative one and a `from pkg import module` are all seen."""
    root = _package(tmp_path, {
        "__init__.py": "",
        "high/__init__.py": "",
        "high/run.py": "from pkg.low.base import f\n",
        "low/__init__.py": "",
        "low/base.py": "def f():\n    from pkg.high import run\n    return run\n",
        "low/rel.py": "from ..high.run import f\n",
        "low/fine.py": "from . import base\nimport pkg.low.base\n",
    })
    assert layer_violations(root, TOY_LAYERS) == [
        "pkg/low/base.py:2: pkg.low.base (low) imports pkg.high.run (high)",
        "pkg/low/rel.py:1: pkg.low.rel (low) imports pkg.high.run (high)",
    ]


def test_the_checker_names_a_module_without_a_layer(tmp_path: Path) -> None:
    root = _package(tmp_path, {"__init__.py": "", "low/__init__.py": "", "stray.py": "import os\n"})
    assert layer_violations(root, [("low", ("pkg.low",))]) == [
        "pkg/__init__.py: pkg is in no layer (add it to LAYERS)",
        "pkg/stray.py: pkg.stray is in no layer (add it to LAYERS)",
    ]


@pytest.mark.parametrize("code", ["torch.save(state, path)\n", "trainer.save_checkpoint(path)\n",
                                  "update_checkpoint_hparams(path, {})\n"])
def test_the_checker_finds_a_checkpoint_write(tmp_path: Path, code: str) -> None:
    root = _package(tmp_path, {"cb.py": f"def on_test_start(trainer, path, state):\n    {code}"})
    assert len(checkpoint_writes(root)) == 1
    assert checkpoint_writes(_package(tmp_path / "ok", {"cb.py": "torch.load(path)\n"})) == []
