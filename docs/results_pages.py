"""Results pages, generated from the records in `experiments/results/` at docs build time (see `docs/hooks.py`).

A record is a folder (or a single `.json` file) under `experiments/results/`. Each gets one page,
`results/<record>.md`, with the command that made it (from the `command` keys of its JSON files, the commands in
its README, or the commands that name it in `experiments/`; "command not recorded" otherwise), the machine it ran
on, its README, its tables and figures, and links to every file. Markdown files inside a record become pages of
their own (`results/<record>/<file>.md`); every other file is published as it is, so the pages' links resolve.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOT_RECORDED = "command not recorded"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_FENCE = re.compile(r"```[a-z]*\n(.*?)```", re.DOTALL)
_TABLE_FILES = ("seed_table.md", "table.md")


@dataclass
class Record:
    """One record: its name, where it lives, and what the page shows."""

    name: str
    path: Path
    commands: list[str] = field(default_factory=list)
    machines: list[str] = field(default_factory=list)


def record_names(results_dir: str | Path) -> list[str]:
    """Every record under `results_dir`: folders and top-level `.json` files (by file name)."""
    results = Path(results_dir)
    names = [p.name for p in results.iterdir() if p.is_dir() or p.suffix == ".json"]
    return sorted(names)


def page_of(name: str) -> str:
    """The page of a record, relative to the docs root."""
    return f"results/{name.removesuffix('.json')}.md"


def _json_values(node: Any, keys: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys and isinstance(v, str):
                out.append(v)
            elif k in keys and isinstance(v, list) and all(isinstance(x, str) for x in v):
                out.extend(v)
            else:
                out.extend(_json_values(v, keys))
    elif isinstance(node, list):
        for v in node:
            out.extend(_json_values(v, keys))
    return out


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _unique(items: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        item = item.strip()
        if item:
            seen.setdefault(item, None)
    return list(seen)


def _split_commands(block: str) -> list[str]:
    """One entry per command of a code block: continuation lines (ending in a backslash) joined back on."""
    out: list[str] = []
    current: list[str] = []
    for line in block.splitlines():
        if not line.strip() and not current:
            continue
        current.append(line.rstrip())
        if not line.rstrip().endswith("\\"):
            out.append("\n".join(current).strip())
            current = []
    if current:
        out.append("\n".join(current).strip())
    return [c for c in out if c and not c.startswith("#")]


def _code_commands(text: str, inline: bool = False) -> list[str]:
    """Commands in a Markdown text that run python or nucseg: in fenced blocks, in 4-space indented blocks and
    (with `inline`) in code spans."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    current: list[str] = []
    for line in text.splitlines() + [""]:
        if line.startswith("    ") and (current or line.strip()):
            current.append(line[4:])
        else:
            if current:
                blocks.append("\n".join(current))
            current = []
    commands = [c for block in blocks for c in _split_commands(block)]
    if inline:
        spans = re.findall(r"`([^`]+)`", _FENCE.sub("", text))
        commands += [re.sub(r"\s+", " ", span) for span in spans]
    return [c for c in commands if re.match(r"^(\w+=\S+ )*(\.venv/bin/)?(python3?|nucseg) ", c)]


def _script_commands(name: str, experiments_dir: Path) -> list[str]:
    """Commands in `experiments/` that write this record: those with `--out` naming it, else the docstring
    commands of the script whose name begins the record's."""
    stem = name.removesuffix(".json")
    writes = re.compile(rf"--out\s+\S*results/{re.escape(stem)}(?:\.json)?(?![\w/])")
    out = []
    for path in [experiments_dir / "README.md", *sorted(experiments_dir.glob("*.py"))]:
        if path.exists():
            out += [c for c in _code_commands(_docstring_or_text(path)) if writes.search(c)]
    if out:
        return out
    for script in sorted(experiments_dir.glob("*.py"), key=lambda p: -len(p.stem)):
        if stem.startswith(script.stem):
            commands = [c for c in _code_commands(_docstring_or_text(script)) if script.name in c]
            words = [w for w in stem[len(script.stem):].split("_") if len(w) > 3]
            named = [c for c in commands if any(w in c for w in words)]
            return named or commands[:1]
    return []


def _docstring_or_text(path: Path) -> str:
    text = path.read_text()
    if path.suffix != ".py":
        return text
    m = re.match(r'\s*(?:#[^\n]*\n\s*)*[rub]*"""(.*?)"""', text, re.DOTALL)
    return m.group(1) if m else ""


def _readme_machines(text: str) -> list[str]:
    """The sentence of a README that says which machine ran it."""
    prose = "\n".join(line for line in _FENCE.sub("", text).splitlines()
                      if not line.startswith(("#", "    ", "|")))
    sentences = re.split(r"(?<=[.])\s+(?=[A-Z`(])", re.sub(r"\s+", " ", prose))
    for pattern in (r"\bmachine\b", r"\bCPU\b|\bGPU\b"):
        for sentence in sentences:
            if re.search(pattern, sentence) and len(sentence) < 500:
                return [sentence.strip()]
    return []


def read_record(results_dir: str | Path, name: str, experiments_dir: str | Path | None = None) -> Record:
    """Collect a record's commands and machine."""
    results = Path(results_dir)
    experiments = Path(experiments_dir) if experiments_dir else results.parent
    path = results / name
    jsons = [path] if path.is_file() else sorted(path.rglob("*.json"))
    data = [_load_json(p) for p in jsons]
    commands = [c for d in data for c in _json_values(d, ("command", "commands"))]
    machines = [m for d in data for m in _json_values(d, ("machine", "cpu_model", "device_name"))]
    readme = path / "README.md"
    if path.is_dir() and readme.exists():
        text = readme.read_text()
        commands += _code_commands(text, inline=True)
        if not machines:
            machines += _readme_machines(text)
    if not commands:
        commands = _script_commands(name, experiments)
    return Record(name, path, _unique(commands), _unique(machines))


def rewrite_links(text: str, source: str, results_dir: Path, records: set[str]) -> str:
    """Rewrite a record file's relative links for the site.

    `source` is the file's path relative to `results_dir` (e.g. `isbi_cpu/README.md`); the page it becomes is
    `results/<record>.md` for a record's own README and `results/<source>` otherwise. A link to a record (its
    folder, README or `.json`) goes to its page, one to a file of a record to that file, and one that leads
    elsewhere (a folder, the repository's code) becomes plain text.
    """
    record = source.split("/")[0]
    page = page_of(record) if source == f"{record}/README.md" else f"results/{source}"
    page_dir = posixpath.dirname(page)

    def target_of(link: str) -> str | None:
        if re.match(r"^[a-z]+://|^mailto:", link):
            return link
        link = link.split("#")[0]
        if not link:
            return None
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), link))
        if resolved.startswith(".."):
            return None
        top = resolved.split("/")[0]
        if top not in records:
            return None
        if resolved in (top, f"{top}/README.md"):
            doc = page_of(top)
        elif (results_dir / resolved).is_file():
            doc = f"results/{resolved}"
        elif (results_dir / resolved / "README.md").is_file():
            doc = f"results/{resolved}/README.md"
        else:
            return None
        return posixpath.relpath(doc, page_dir)

    def replace(m: re.Match[str]) -> str:
        bang, label, link = m.groups()
        target = target_of(link)
        if target is None:
            if bang or label.startswith("`"):
                return label
            return f"`{link}`" if label == link else f"{label} (`{link}`)"
        return f"{bang}[{label}]({target})"

    return _LINK.sub(replace, text)


def _demote(text: str) -> str:
    """Headings one level down, the first H1 dropped (the page has its own)."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    in_fence = False
    for line in lines:
        if line.startswith("```"):
            in_fence = not in_fence
        out.append("#" + line if line.startswith("#") and not in_fence else line)
    return "\n".join(out).strip()


def _title(record: Record) -> str:
    readme = record.path / "README.md"
    if record.path.is_dir() and readme.exists():
        first = readme.read_text().splitlines()[0:1]
        if first and first[0].startswith("# "):
            return first[0][2:].strip()
    return f"Record `{record.name}`"


def _metrics_table(metrics: dict[str, Any]) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        if isinstance(value, (str, int, float, bool)) or value is None:
            rows.append(f"| `{key}` | {str(value).replace('|', '/')} |")
    return "\n".join(rows)


def render_record(record: Record, results_dir: Path, records: set[str]) -> str:
    """The page of one record."""
    parts = [f"# {_title(record)}", "", f"Record: `experiments/results/{record.name}`.", "", "## Command", ""]
    if record.commands:
        for command in record.commands:
            parts += ["```bash", command, "```", ""]
    else:
        parts += [NOT_RECORDED.capitalize() + ".", ""]
    parts += ["## Machine", ""]
    parts += [f"- {m}" for m in record.machines] if record.machines else ["Machine not recorded."]
    parts.append("")
    path = record.path
    if path.is_file():
        parts += ["## Figures", "", "```json", path.read_text().strip(), "```", ""]
        return "\n".join(parts)
    readme = path / "README.md"
    if readme.exists():
        parts += ["## Record", "", _demote(rewrite_links(readme.read_text(), f"{record.name}/README.md",
                                                          results_dir, records)), ""]
    for table in _TABLE_FILES:
        if (path / table).exists():
            text = rewrite_links((path / table).read_text(), f"{record.name}/{table}", results_dir, records)
            parts += [f"## `{table}`", "", _demote(text), ""]
    metrics = _load_json(path / "record.json") or {}
    if isinstance(metrics, dict) and isinstance(metrics.get("metrics"), dict):
        extra = {k: metrics[k] for k in ("start", "end", "wall_min_from_log", "note") if k in metrics}
        parts += ["## Metrics (`record.json`)", "", _metrics_table({**extra, **metrics["metrics"]}), ""]
    elif not readme.exists() and isinstance(_load_json(path / "metrics.json"), dict):
        parts += ["## Metrics (`metrics.json`)", "", _metrics_table(_load_json(path / "metrics.json")), ""]
    figures = sorted(p for p in path.glob("*.png"))
    if figures:
        parts += ["## Figures", ""]
        for fig in figures:
            parts += [f"![{fig.stem}]({record.name}/{fig.name})", ""]
    parts += ["## Files", ""]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel == "README.md":
            continue
        parts.append(f"- [`{rel}`]({record.name}/{rel})")
    parts.append("")
    return "\n".join(parts)


def results_index(records: list[Record]) -> str:
    """The list of every record."""
    parts = ["# All records", "",
             "One page per record under `experiments/results/`, generated when the documentation is built: the",
             "command that made it, the machine, its description, tables and figures.", "",
             "| record | command |", "|---|---|"]
    for record in records:
        command = record.commands[0].splitlines()[0] if record.commands else NOT_RECORDED
        command = command.replace("|", "\\|")
        link = page_of(record.name).removeprefix("results/")
        parts.append(f"| [`{record.name}`]({link}) | `{command}` |")
    parts.append("")
    return "\n".join(parts)


def results_pages(results_dir: str | Path, experiments_dir: str | Path | None = None) -> dict[str, str]:
    """Generated pages: {path relative to the docs root: markdown}: the index, one per record, and every
    Markdown file inside a record (links rewritten)."""
    results = Path(results_dir)
    names = record_names(results)
    records_set = set(names)
    records = [read_record(results, n, experiments_dir) for n in names]
    pages = {"results/records.md": results_index(records)}
    for record in records:
        pages[page_of(record.name)] = render_record(record, results, records_set)
        if record.path.is_dir():
            for md in sorted(record.path.rglob("*.md")):
                rel = md.relative_to(results).as_posix()
                if rel == f"{record.name}/README.md":
                    continue
                pages[f"results/{rel}"] = rewrite_links(md.read_text(), rel, results, records_set)
    return pages


def static_files(results_dir: str | Path) -> list[str]:
    """Files published as they are (everything but Markdown), relative to `results_dir`'s parent."""
    results = Path(results_dir)
    return sorted(p.relative_to(results.parent).as_posix() for p in results.rglob("*")
                  if p.is_file() and p.suffix != ".md")
