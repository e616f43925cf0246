"""Every result record under experiments/results carries the command that made it: the `command` key of a JSON
record (a benchmark's `<name>.json`, a run's `record.json`), a command line in a record folder's README."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.paths import PROJECT_ROOT

RESULTS = PROJECT_ROOT / "experiments" / "results"
JSON_RECORDS = sorted([*RESULTS.glob("*.json"), *RESULTS.rglob("record.json")])
READMES = sorted(RESULTS.rglob("README.md"))
# `python -m nucseg.train ...`, `python experiments/x.py ...`, `nucseg predict ...`
COMMAND = re.compile(r"\b(python[\d.]*|nucseg)\s+"
                     r"(-m\s+nucseg\.\w+|experiments/\w+\.py|(train|predict|evaluate|tune|export)\s)")


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT_ROOT))


def test_there_are_records_to_check() -> None:
    assert len(JSON_RECORDS) >= 7 and READMES


@pytest.mark.parametrize("path", JSON_RECORDS, ids=_rel)
def test_a_json_record_names_its_command(path: Path) -> None:
    record = json.loads(path.read_text())
    command = record.get("command") if isinstance(record, dict) else None
    if isinstance(command, list):  # sys.argv as a list
        command = " ".join(map(str, command))
    assert isinstance(command, str) and COMMAND.search(command), f"{_rel(path)}: no command ({command!r})"


@pytest.mark.parametrize("path", READMES, ids=_rel)
def test_a_record_readme_shows_its_command(path: Path) -> None:
    assert COMMAND.search(path.read_text()), f"{_rel(path)}: no command line (python -m nucseg.<entry> ..., " \
                                             "python experiments/<script>.py ...)"


def test_the_command_pattern_tells_a_command_from_prose() -> None:
    assert COMMAND.search("    NUCSEG_DATA_DIR=../shared/data python -m nucseg.train experiment=cpu")
    assert COMMAND.search("python experiments/bench_loader.py data=dsb2018")
    assert not COMMAND.search("trained with the CPU preset (experiment=cpu) on python 3.11")
