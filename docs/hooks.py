"""MkDocs hooks: generate the configuration reference from `conf/` and the results pages from
`experiments/results/` at build time, so neither can drift from what they describe."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path
from types import ModuleType

from mkdocs.structure.files import File, Files

# `mkdocs build --strict -q` (as CI runs it) would drop every warning before strict mode counts it (mkdocs 1.6: `-q`
# sets the logger to ERROR), so a broken link would pass. Keep warnings: `-q` then hides only the INFO lines.
_LOG = logging.getLogger("mkdocs")
if _LOG.level > logging.WARNING:
    _LOG.setLevel(logging.WARNING)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
EXPERIMENTS = ROOT / "experiments"
RESULTS = EXPERIMENTS / "results"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


config_reference = _load("config_reference")
results_pages = _load("results_pages")


def _nav_entry(nav: list, title: str) -> dict | None:
    for entry in nav:
        if isinstance(entry, dict) and title in entry:
            return entry
    return None


def on_config(config, **kwargs):
    """Put the generated pages into the navigation."""
    nav = config["nav"]
    if nav is None:
        return config
    ref = _nav_entry(nav, "Configuration reference")
    if ref is not None:
        groups = config_reference.config_groups(CONF)
        ref["Configuration reference"] = [
            {"Overview": "reference/config/index.md"},
            {"Root configs": "reference/config/root.md"},
            *({f"{g}": config_reference.group_page(g)} for g in groups),
        ]
    res = _nav_entry(nav, "Results")
    if res is not None:
        pages = res["Results"] if isinstance(res["Results"], list) else [res["Results"]]
        records = [{name.removesuffix(".json"): results_pages.page_of(name)}
                   for name in results_pages.record_names(RESULTS)]
        res["Results"] = [*pages, {"Records": ["results/records.md", *records]}]
    return config


def on_files(files: Files, config, **kwargs) -> Files:
    """Add the generated pages and the records' files."""
    pages = {**config_reference.reference_pages(CONF), **results_pages.results_pages(RESULTS, EXPERIMENTS)}
    # the experiments' own README is the page: one text, kept beside the scripts it describes
    pages["experiments.md"] = (EXPERIMENTS / "README.md").read_text()
    for path, content in pages.items():
        files.append(File.generated(config, path, content=content))
    for rel in results_pages.static_files(RESULTS):
        files.append(File(rel, src_dir=str(EXPERIMENTS), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files
