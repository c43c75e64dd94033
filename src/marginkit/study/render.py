"""`marginkit study render`: every study table and plot in docs/ regenerated from committed raw rows.

A study writes one row per (cell, seed, variant) to a gzipped CSV under docs/study/ (`write_rows`).
A doc marks each generated table with a pair of comments,

    <!-- generated:NAME -->
    ...table made by the study's renderer...
    <!-- /generated:NAME -->

and `render(docs_dir)` rebuilds every block (and plot) from the rows alone. `render(check=True)` changes
nothing and lists the blocks whose text differs from what the rows give: tests/test_study_docs.py runs it,
so a number in a docs table that the rows do not give fails CI.

Adding a study: a function `(docs_dir) -> {doc file name: {block name: markdown}}` that reads its rows and
writes its plots, listed in RENDERERS (as "module:function", imported only when rendering).
"""

from __future__ import annotations

import csv
import gzip
import importlib
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RenderConfig", "RENDERERS", "write_rows", "read_rows", "replace_block", "read_block", "render"]

# "module:function" -> (docs_dir: Path, plots: bool) -> {doc name: {block name: markdown}}
RENDERERS: list[str] = [
    "marginkit.study.margin_map.report:render_docs",
    "marginkit.study.real.report:render_docs",
    "marginkit.study.bon_world:render_docs",
    "marginkit.study.world_pipeline:render_docs",
    "marginkit.study.rl_compare.report:render_docs",
]



@dataclass
class RenderConfig:
    """`marginkit study render`."""

    docs: str = field(default="docs", metadata={"help": "The docs folder (rows under <docs>/study/)."})
    check: bool = field(default=False, metadata={
        "help": "Change nothing; exit 1 and name each generated block whose text differs from what the rows give."})
    plots: bool = field(default=True, metadata={"help": "Also redraw the plots (not with --check)."})


_BEGIN = "<!-- generated:{name} -->"
_END = "<!-- /generated:{name} -->"


def write_rows(path: str | Path, rows: Sequence[dict[str, Any]], digits: int = 6) -> Path:
    """Write rows to a gzipped CSV (columns: the union of keys, in first-seen order; floats rounded to
    `digits` significant digits, None as empty). Written to a temporary name first, then renamed;
    the gzip header carries no timestamp, so the same rows give the same bytes."""
    path = Path(path)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k), digits) for k in columns})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    tmp.replace(path)
    return path


def _cell(value: Any, digits: int) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}g}"
    return value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `write_rows` file, numbers parsed back (ints as int, others as float, "" as None)."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _markers(name: str) -> tuple[str, str]:
    return _BEGIN.format(name=name), _END.format(name=name)


def read_block(text: str, name: str) -> str:
    """The content between the markers of block `name` (without the marker lines). Raises KeyError."""
    begin, end = _markers(name)
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.S)
    if match is None:
        raise KeyError(f"no generated block {name!r} (markers {begin} ... {end})")
    return match.group(1)


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with block `name`'s content replaced by `content` (a trailing newline is added)."""
    begin, end = _markers(name)
    read_block(text, name)  # raises when absent
    body = content if content.endswith("\n") else content + "\n"
    pattern = re.escape(begin) + r"\n.*?" + re.escape(end)
    return re.sub(pattern, lambda _m: f"{begin}\n{body}{end}", text, count=1, flags=re.S)


def block_names(text: str) -> list[str]:
    return re.findall(r"<!-- generated:([\w.-]+) -->", text)


def _renderers(names: Iterable[str]) -> list[Callable[..., dict[str, dict[str, str]]]]:
    out = []
    for dotted in names:
        module, _, func = dotted.partition(":")
        out.append(getattr(importlib.import_module(module), func))
    return out


def render(docs_dir: str | Path = "docs", check: bool = False, plots: bool = True,
           renderers: Iterable[str] | None = None) -> list[str]:
    """Rebuild every generated block in `docs_dir` from the rows (and the plots, unless `plots` is False
    or `check`). Returns "doc#block" for each block that changed (check=True: that would change, nothing
    written). Raises KeyError when a renderer names a block its doc does not have."""
    docs = Path(docs_dir)
    changed: list[str] = []
    for fn in _renderers(RENDERERS if renderers is None else renderers):
        for doc, blocks in fn(docs, plots=plots and not check).items():
            path = docs / doc
            text = path.read_text(encoding="utf-8")
            new = text
            for name, content in blocks.items():
                new = replace_block(new, name, content)
                if read_block(new, name) != read_block(text, name):
                    changed.append(f"{doc}#{name}")
            if new != text and not check:
                path.write_text(new, encoding="utf-8")
    return changed
