"""The documentation site's generators (docs/config_reference.py, docs/results_pages.py) and the front page."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.scripts import load_experiment

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
RESULTS = ROOT / "experiments" / "results"


hooks = load_experiment("hooks", folder="docs")  # loads the two generators as the site build does
config_reference, results_pages = hooks.config_reference, hooks.results_pages


@pytest.fixture(scope="module")
def reference() -> dict[str, str]:
    return config_reference.reference_pages(CONF)


@pytest.fixture(scope="module")
def results() -> dict[str, str]:
    return results_pages.results_pages(RESULTS, ROOT / "experiments")


def test_config_reference_covers_every_group_and_option(reference):
    groups = sorted({p.parent.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF})
    assert "model" in groups and "hydra/launcher" in groups
    assert config_reference.config_groups(CONF) == groups
    index = reference["reference/config/index.md"]
    for group in groups:
        page = reference[config_reference.group_page(group)]
        assert page.startswith(f"# Config group `{group}`")
        assert f"[`{group}`]" in index
        for option in (CONF / group).glob("*.yaml"):
            assert f"## `{option.stem}`" in page, (group, option.stem)
            assert f"`conf/{group}/{option.name}`" in page


def test_config_reference_covers_every_root_config(reference):
    roots = sorted(p.stem for p in CONF.glob("*.yaml"))
    assert {"train", "predict", "evaluate", "tune", "export"} <= set(roots)
    page = reference["reference/config/root.md"]
    for name in roots:
        assert f"## `{name}`" in page


def test_config_reference_has_defaults_and_comments(reference):
    page = reference["reference/config/root.md"]
    # a trailing comment, and a comment on the line above a key (conf/train.yaml)
    assert "| `budget.margin` | `0.05` | share of the budget kept in reserve |" in page
    assert re.search(r"\| `ckpt_path` \| `null` \| resume: a checkpoint path", page)
    # a file's header comment describes the option
    assert "Root config of `python -m nucseg.train`" in page


def test_comment_parser(tmp_path):
    cfg = tmp_path / "opt.yaml"
    cfg.write_text("# @package _global_\n# What this option does.\n\n# the rate\nrate: 0.1\nnested:\n"
                   "  # deep one\n  deep: [1, 2]  # trailing\n  plain: x\nflag: true  # a # in it\n")
    option = config_reference.parse_option(cfg, tmp_path)
    assert option.package == "_global_" and option.header == ["What this option does."]
    keys = {k.path: (k.default, k.comment) for k in option.keys}
    assert keys["rate"] == ("0.1", "the rate")
    assert keys["nested.deep"] == ("[1, 2]", "deep one trailing")
    assert keys["nested.plain"] == ("x", "")
    assert keys["flag"] == ("true", "a # in it")
    assert "nested" not in keys  # a mapping without a comment has no row of its own


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    text = "\n".join(lines)
    assert '.venv/bin/pip install -c requirements/constraints.txt -e ".[dev]"' in text
    assert "NUCSEG_DATA_DIR=../shared/data .venv/bin/python -m pytest\n" in text


def test_no_history_wording(results):
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    texts = {str(f.relative_to(ROOT)): f.read_text() for f in files}
    texts["experiments/README.md"] = (ROOT / "experiments" / "README.md").read_text()
    for name, text in texts.items():
        assert "before this change" not in text.lower(), name


def test_every_record_has_a_page_with_its_command(results):
    names = results_pages.record_names(RESULTS)
    assert "cpu_preset_lite0_seeds" in names and "isbi_cpu" in names
    for name in names:
        page = results[results_pages.page_of(name)]
        assert "## Command" in page and "## Machine" in page
        assert "```bash\n" in page or results_pages.NOT_RECORDED in page.lower(), name
    # the preset's record names the command that made it
    assert "python -m nucseg.train experiment=cpu" in results["results/cpu_preset_lite0_fast_cpu.md"]
    index = results["results/records.md"]
    assert all(f"[`{name}`]" in index for name in names)


def test_record_without_command_says_so(tmp_path):
    results_dir = tmp_path / "results"
    (results_dir / "bare").mkdir(parents=True)
    (results_dir / "bare" / "metrics.json").write_text(json.dumps({"test/dice": 0.5}))
    (results_dir / "made").mkdir()
    (results_dir / "made" / "record.json").write_text(json.dumps({"command": "python -m nucseg.train x=1",
                                                                   "machine": "a 2-core CPU"}))
    (results_dir / "made" / "README.md").write_text("# Made\n\nSee [the bare one](../bare/metrics.json), "
                                                    "[code](../../nucseg/x.py) and [runs](runs/).\n")
    pages = results_pages.results_pages(results_dir, tmp_path)
    assert "Command not recorded." in pages["results/bare.md"]
    made = pages["results/made.md"]
    assert made.startswith("# Made") and "python -m nucseg.train x=1" in made and "a 2-core CPU" in made
    # links to a record's file resolve on the site; links elsewhere become text
    assert "[the bare one](bare/metrics.json)" in made
    assert "code (`../../nucseg/x.py`)" in made and "runs (`runs/`)" in made
