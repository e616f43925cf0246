"""The configuration reference, generated from `conf/` at docs build time (see `docs/hooks.py`).

Pure functions: `config_groups` lists the groups, `parse_option` reads one YAML file (its header comment, and
every key with its default and comment), `render_group` / `render_root` / `render_index` write Markdown, and
`reference_pages` returns every page as `{path: markdown}`. Defaults come from the parsed YAML; comments are read
from the YAML text: the `# ...` lines directly above a key and the comment trailing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[^\s#:\-][^:#]*?|\"[^\"]+\"|'[^']+'):(?:\s+|$)(?P<rest>.*)$")
_ITEM_LINE = re.compile(r"^(?P<indent>\s*)-\s(?P<rest>.*)$")


@dataclass
class Key:
    """One key of an option: dotted path, default value (rendered), comment ('' when none)."""

    path: str
    default: str
    comment: str


@dataclass
class Option:
    """One YAML file of a group (or a root config)."""

    name: str
    file: str
    package: str | None
    header: list[str]
    keys: list[Key] = field(default_factory=list)


def config_groups(conf_dir: str | Path) -> list[str]:
    """Every config group under `conf_dir`: each directory holding YAML files, nested ones as `hydra/launcher`."""
    conf = Path(conf_dir)
    groups = {str(p.parent.relative_to(conf).as_posix()) for p in conf.rglob("*.yaml") if p.parent != conf}
    return sorted(groups)


def root_configs(conf_dir: str | Path) -> list[str]:
    """The root configs (`train`, `predict`, ...): the YAML files directly in `conf_dir`."""
    return sorted(p.stem for p in Path(conf_dir).glob("*.yaml"))


def group_options(conf_dir: str | Path, group: str) -> list[str]:
    """The options of a group: its YAML files' stems (`_base`-style files, shared by the others, included)."""
    return sorted(p.stem for p in (Path(conf_dir) / group).glob("*.yaml"))


def _strip_comment(text: str) -> tuple[str, str]:
    """Split `value  # comment` into (value, comment), ignoring `#` inside quotes."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1 :].strip()
    return text.rstrip(), ""


def _comment_text(line: str) -> str:
    return line.strip()[1:].strip()


def _scan_comments(text: str) -> tuple[list[str], dict[str, str]]:
    """Header comment lines and {dotted key: comment} from the YAML text."""
    lines = text.splitlines()
    header: list[str] = []
    comments: dict[str, list[str]] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key)
    seen_key = False
    last_key: str | None = None  # the key a list item belongs to
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if not seen_key:
                header.extend(pending)
            pending = []
            continue
        if stripped.startswith("#"):
            if stripped.startswith("# @package"):
                continue
            pending.append(_comment_text(line))
            continue
        item = _ITEM_LINE.match(line)
        if item and last_key is not None:
            value, trailing = _strip_comment(item.group("rest"))
            notes = pending + ([trailing] if trailing else [])
            if notes:  # a list item's comment names the item
                comments.setdefault(last_key, []).append(f"`{value.strip()}`: " + " ".join(notes) + ";")
            pending = []
            seen_key = True
            continue
        m = _KEY_LINE.match(line)
        if not m:
            pending = []
            continue
        if not seen_key:
            seen_key = True
            # the leading comment is the file's header; after a blank line, the comment right above the first key
            # is that key's
            if not header:
                header, pending = pending, []
        indent = len(m.group("indent"))
        key = m.group("key").strip().strip("'\"")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = ".".join(k for _, k in stack)
        _, trailing = _strip_comment(m.group("rest"))
        notes = pending + ([trailing] if trailing else [])
        if notes:
            comments.setdefault(path, []).extend(notes)
        pending = []
        last_key = path
    return header, {k: " ".join(v) for k, v in comments.items()}


def render_value(value: Any) -> str:
    """A default as it would be written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def _flatten(node: Any, prefix: str, out: list[tuple[str, Any, bool]]) -> None:
    """(dotted path, value, is_mapping) in document order; a mapping's own row comes before its keys."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.append((path, None, True))
                _flatten(v, path, out)
            else:
                out.append((path, v, False))


def parse_option(path: str | Path, conf_dir: str | Path | None = None) -> Option:
    """Read one config file: header comment, Hydra package, and every key with its default and comment."""
    path = Path(path)
    text = path.read_text()
    package = None
    m = re.search(r"^# @package (\S+)", text, re.MULTILINE)
    if m:
        package = m.group(1)
    header, comments = _scan_comments(text)
    data = yaml.safe_load(text) or {}
    rows: list[tuple[str, Any, bool]] = []
    _flatten(data, "", rows)
    keys = []
    for dotted, value, is_mapping in rows:
        comment = comments.get(dotted, "")
        if is_mapping and not comment:
            continue
        keys.append(Key(dotted, "" if is_mapping else render_value(value), comment))
    rel = path.relative_to(conf_dir).as_posix() if conf_dir else path.name
    return Option(path.stem, rel, package, header, keys)


def _md_text(text: str) -> str:
    """Comment text safe inside a Markdown table cell."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _md_code(text: str) -> str:
    if not text:
        return ""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _render_header(header: list[str]) -> str:
    """Header comment lines as Markdown: prose joined into paragraphs, command lines as code blocks."""
    blocks: list[tuple[str, list[str]]] = []
    for line in header:
        kind = "code" if line.startswith(("  ", "python ", "NUCSEG_")) else "text"
        if not blocks or blocks[-1][0] != kind:
            blocks.append((kind, []))
        blocks[-1][1].append(line)
    out = []
    for kind, lines in blocks:
        if kind == "code":
            out.append("```bash\n" + "\n".join(line.strip() for line in lines) + "\n```")
        else:
            out.append(_md_text(" ".join(lines)))
    return "\n\n".join(out)


def render_option(option: Option, level: int = 2) -> str:
    """One option: heading, file, header comment, and a table of its keys."""
    hashes = "#" * level
    parts = [f"{hashes} `{option.name}`", ""]
    meta = f"File: `conf/{option.file}`"
    if option.package:
        meta += f" (package `{option.package}`)"
    if option.name.startswith("_"):
        meta += "; shared by the other options, not selected on its own"
    parts += [meta + ".", ""]
    if option.header:
        parts += [_render_header(option.header), ""]
    if option.keys:
        parts += ["| key | default | comment |", "|---|---|---|"]
        for key in option.keys:
            parts.append(f"| `{key.path}` | {_md_code(key.default)} | {_md_text(key.comment)} |")
        parts.append("")
    else:
        parts += ["No keys.", ""]
    return "\n".join(parts)


def group_default(conf_dir: str | Path, group: str) -> str | None:
    """The option `train.yaml` selects for a group (None when it selects none)."""
    train = Path(conf_dir) / "train.yaml"
    if not train.exists():
        return None
    for entry in (yaml.safe_load(train.read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict) and group in entry:
            value = entry[group]
            return None if value is None else str(value)
    return None


def render_group(conf_dir: str | Path, group: str) -> str:
    """The page of one config group: every option with its keys."""
    conf = Path(conf_dir)
    options = group_options(conf, group)
    selectable = [o for o in options if not o.startswith("_")]
    default = group_default(conf, group)
    parts = [f"# Config group `{group}`", ""]
    intro = f"Options: {', '.join(f'`{o}`' for o in selectable)}. Select one with `{group}=<option>`"
    intro += f"; `train` selects `{default}`." if default else "; `train` selects none by default."
    parts += [intro, "", "Generated from `conf/` when the documentation is built.", ""]
    for name in options:
        parts.append(render_option(parse_option(conf / group / f"{name}.yaml", conf)))
    return "\n".join(parts)


def render_root(conf_dir: str | Path) -> str:
    """The page of the root configs (`train.yaml`, `predict.yaml`, ...)."""
    conf = Path(conf_dir)
    parts = ["# Root configs", "",
             "One per command: `python -m nucseg.<command>` (or `nucseg <command>`) composes `conf/<command>.yaml`.",
             "Generated from `conf/` when the documentation is built.", ""]
    for name in root_configs(conf):
        parts.append(render_option(parse_option(conf / f"{name}.yaml", conf)))
    return "\n".join(parts)


def group_page(group: str) -> str:
    """Where a group's page goes, relative to the docs root."""
    return f"reference/config/{group.replace('/', '-')}.md"


def render_index(conf_dir: str | Path) -> str:
    """The overview: root configs and every group with its options and default."""
    conf = Path(conf_dir)
    parts = ["# Configuration reference", "",
             "Every config group, option and key under `conf/`, with its default and its comment, generated from",
             "the YAML files when the documentation is built. Any key can be overridden on the command line",
             "(`python -m nucseg.train data.crop_size=128`); a group is chosen with `group=option`.", "",
             "[Root configs](root.md): " + ", ".join(f"`{r}.yaml`" for r in root_configs(conf)) + ".", "",
             "| group | options | default in `train` |", "|---|---|---|"]
    for group in config_groups(conf):
        options = ", ".join(f"`{o}`" for o in group_options(conf, group) if not o.startswith("_"))
        link = group_page(group).removeprefix("reference/config/")
        parts.append(f"| [`{group}`]({link}) | {options} | {_md_code(group_default(conf, group) or '')} |")
    parts.append("")
    return "\n".join(parts)


def reference_pages(conf_dir: str | Path) -> dict[str, str]:
    """Every page of the configuration reference: {path relative to the docs root: markdown}."""
    pages = {"reference/config/index.md": render_index(conf_dir), "reference/config/root.md": render_root(conf_dir)}
    for group in config_groups(conf_dir):
        pages[group_page(group)] = render_group(conf_dir, group)
    return pages
