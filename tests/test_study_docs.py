"""Every generated table in docs/ equals what the committed rows give (`marginkit study render --check`), and the
row files and block markers behave as documented in study/render.py."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from marginkit.study.render import (
    RENDERERS,
    block_names,
    read_block,
    read_rows,
    render,
    replace_block,
    write_rows,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_docs_table_equals_what_the_committed_rows_give() -> None:
    stale = render(DOCS, check=True)
    assert stale == [], f"generated blocks out of date with their rows (run `marginkit study render`): {stale}"


def test_every_renderer_has_rows_and_fills_its_blocks() -> None:
    """No renderer silently returns nothing (a missing rows file would make the check above pass vacuously),
    and every generated block in docs/ is filled by some renderer."""
    import importlib

    filled: set[tuple[str, str]] = set()
    for dotted in RENDERERS:
        module, _, func = dotted.partition(":")
        docs = getattr(importlib.import_module(module), func)(DOCS, plots=False)
        assert docs, f"{dotted}: produced no blocks (are its committed rows missing?)"
        for doc, blocks in docs.items():
            for name, content in blocks.items():
                assert content.strip(), f"{dotted}: block {doc}#{name} is empty"
                filled.add((doc, name))
    for path in DOCS.glob("*.md"):
        for name in block_names(path.read_text(encoding="utf-8")):
            assert (path.name, name) in filled, f"{path.name}#{name}: no renderer fills this block"


def test_rows_round_trip_and_bytes_are_deterministic(tmp_path: Path) -> None:
    rows = [{"variant": "bt", "seed": 0, "acc": 0.123456789, "flag": True, "missing": None},
            {"variant": "label-0.5", "seed": 1, "acc": math.nan, "extra": 2.5}]
    a = write_rows(tmp_path / "a.csv.gz", rows)
    b = write_rows(tmp_path / "b.csv.gz", rows)
    assert a.read_bytes() == b.read_bytes()  # no timestamp in the gzip header
    back = read_rows(a)
    assert back[0] == {"variant": "bt", "seed": 0, "acc": 0.123457, "flag": 1, "missing": None, "extra": None}
    assert back[1]["variant"] == "label-0.5" and math.isnan(back[1]["acc"]) and back[1]["extra"] == 2.5
    with gzip.open(a, "rt") as f:
        assert f.readline().strip() == "variant,seed,acc,flag,missing,extra"


def test_blocks_are_replaced_between_their_markers_only() -> None:
    text = "intro\n<!-- generated:t -->\nold\n<!-- /generated:t -->\nafter\n"
    new = replace_block(text, "t", "| a |\n|---|")
    assert new == "intro\n<!-- generated:t -->\n| a |\n|---|\n<!-- /generated:t -->\nafter\n"
    assert read_block(new, "t") == "| a |\n|---|\n"
    assert block_names(new) == ["t"]
    with pytest.raises(KeyError, match="no generated block 'u'"):
        replace_block(text, "u", "x")


def test_check_reports_a_changed_number(tmp_path: Path) -> None:
    """A doc whose block was edited by hand is reported by check and rewritten by render."""
    docs = tmp_path / "docs"
    (docs / "study").mkdir(parents=True)
    write_rows(docs / "study" / "toy.csv.gz", [{"x": 1}, {"x": 2}])
    (docs / "toy.md").write_text("<!-- generated:sum -->\n4\n<!-- /generated:sum -->\n")
    import sys
    import types

    mod = types.ModuleType("toy_renderer")

    def render_docs(docs_dir: Path, plots: bool = True) -> dict[str, dict[str, str]]:
        rows = read_rows(Path(docs_dir) / "study" / "toy.csv.gz")
        return {"toy.md": {"sum": str(sum(r["x"] for r in rows))}}

    mod.render_docs = render_docs  # type: ignore[attr-defined]
    sys.modules["toy_renderer"] = mod
    try:
        assert render(docs, check=True, renderers=["toy_renderer:render_docs"]) == ["toy.md#sum"]
        assert "4" in (docs / "toy.md").read_text()  # check changes nothing
        assert render(docs, renderers=["toy_renderer:render_docs"]) == ["toy.md#sum"]
        assert read_block((docs / "toy.md").read_text(), "sum") == "3\n"
        assert render(docs, check=True, renderers=["toy_renderer:render_docs"]) == []
    finally:
        del sys.modules["toy_renderer"]
