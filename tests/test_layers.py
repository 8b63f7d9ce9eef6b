"""kdlib's modules import one way: the math, then the statistics, then the lab in the order of its data
flow (the order kdlib/lab/__init__.py documents), then the report, then the command line. A module
imports only modules before it, so there is no cycle, not even one through a lazy import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

KDLIB = Path(__file__).resolve().parents[1] / "kdlib"
#: Every module of kdlib, in the one order its imports may follow (earlier ones are imported by later ones).
ORDER = [
    "kdlib._validation", "kdlib.divergences", "kdlib.functional", "kdlib.losses", "kdlib.symbolic", "kdlib",
    "kdlib.stats",
    *(f"kdlib.lab.{m}" for m in ("config", "data", "models", "metrics", "train", "records", "store",
                                 "provenance", "cache", "results", "analysis", "prereg", "profile",
                                 "experiments", "shards", "run", "cluster")), "kdlib.lab",
    "kdlib.report.tables", "kdlib.report.figures", "kdlib.report.book", "kdlib.report",
    "kdlib.cli", "kdlib.__main__",
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(KDLIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The kdlib modules ``path`` imports anywhere (``from kdlib.lab import store``: ``kdlib.lab.store``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("kdlib")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdlib"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.add(sub if sub in ORDER else node.module)
    return out


def test_every_module_is_placed_in_the_order():
    assert sorted(_module(p) for p in KDLIB.rglob("*.py")) == sorted(ORDER)


@pytest.mark.parametrize("path", sorted(KDLIB.rglob("*.py")), ids=lambda p: _module(p))
def test_a_module_imports_only_modules_before_it(path):
    me = _module(path)
    later = {m for m in _imports(path) if m != me and ORDER.index(m) > ORDER.index(me)
             and not (me.startswith(m + ".") or m == "kdlib")}
    assert not later, f"{me} imports {sorted(later)}, which come after it"


def test_the_check_finds_a_planted_backward_import(tmp_path, monkeypatch):
    planted = tmp_path / "kdlib" / "lab" / "config.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from kdlib.report.tables import book_table\n")
    monkeypatch.setattr(__import__(__name__), "KDLIB", tmp_path / "kdlib")
    assert _module(planted) == "kdlib.lab.config"
    with pytest.raises(AssertionError, match=r"imports \['kdlib.report.tables'\]"):
        test_a_module_imports_only_modules_before_it(planted)
