"""Optional system packages: a test that needs one skips with a how-to outside CI and fails under CI."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import conftest
import pytest


def test_needs_skips_outside_ci_and_fails_under_ci(monkeypatch):
    conftest.needs(True, "anything", "nothing to do")  # available: the test goes on
    monkeypatch.setattr(conftest, "UNDER_CI", False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed: apt-get install chromium"):
        conftest.needs(False, "chromium", "apt-get install chromium")
    monkeypatch.setattr(conftest, "UNDER_CI", True)
    with pytest.raises(pytest.fail.Exception, match="under CI this test must run"):
        conftest.needs(False, "chromium", "apt-get install chromium")


# ----------------------------------------------------------------------------- every use goes through it

TESTS = Path(__file__).resolve().parent
#: What marks a use of each optional system package in a test file; a ``needs(...)`` call whose text
#: matches the same pattern (or ``needs_fashion_mnist()``) is the guard of that package.
PACKAGES = {
    "Fashion-MNIST": re.compile(r"fashion[-_]mnist|rerun_student|[\"']rerun[\"']"
                                r"|[\"']--profile[\"'],\s*[\"'](cpu|full)[\"']"
                                r"|run_experiment\(\s*[^,()]+,\s*[\"'](cpu|full)[\"']", re.I),
    "Chromium": re.compile(r"chromium|playwright", re.I),
    "TeX": re.compile(r"xelatex|latexmk|pdflatex|texlive", re.I),
}
#: Functions (tests, fixtures, helpers) that name a package but do not use the installed one, each
#: with the reason; a test that takes such a fixture or calls such a helper is one too.
STAND_INS = {
    ("test_data.py", "no_data"): "hides every dataset; its tests make tiny IDX files or expect the error",
    ("test_cli.py", "test_missing_dataset"): "MNIST in an empty directory: the error is the point",
    ("test_report.py", "test_page_header_and_results_page"): "reads the committed records only",
    ("test_precision.py", "test_the_report_keeps_precisions_apart"):
        "reports synthetic records under the name of the cpu profile; trains nothing",
}


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _closure(name: str, direct: dict[str, bool], edges: dict[str, set[str]], seen: set[str]) -> bool:
    """Whether ``name`` or a function or fixture of the module it calls or takes has the property."""
    if direct.get(name):
        return True
    seen.add(name)
    return any(_closure(other, direct, edges, seen) for other in edges.get(name, ()) - seen)


def _calls(f: ast.AST) -> list[ast.Call]:
    return [c for c in ast.walk(f) if isinstance(c, ast.Call)]


def scan() -> dict[str, bool]:
    """``{"file::test: package": guarded}`` for each test that uses an optional package."""
    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        funcs = _functions(ast.parse(text))
        edges = {}
        for name, f in funcs.items():
            called = {c.func.id for c in _calls(f) if isinstance(c.func, ast.Name)}
            called |= {c.func.attr for c in _calls(f) if isinstance(c.func, ast.Attribute)}
            edges[name] = (called | {a.arg for a in f.args.args}) & set(funcs)
        stand_in = {name: (path.name, name) in STAND_INS for name in funcs}
        for package, pattern in PACKAGES.items():
            uses, guards = {}, {}
            for name, f in funcs.items():
                uses[name] = bool(pattern.search(ast.get_source_segment(text, f) or ""))
                guards[name] = any(pattern.search(ast.get_source_segment(text, c) or "") for c in _calls(f)
                                   if isinstance(c.func, ast.Name) and c.func.id.startswith("needs"))
            for name in funcs:
                if not name.startswith("test_") or _closure(name, stand_in, edges, set()):
                    continue
                if _closure(name, uses, edges, set()):
                    found[f"{path.name}::{name}: {package}"] = _closure(name, guards, edges, set())
    return found


def unguarded_uses() -> list[str]:
    """``file::test: package`` for each test that uses a package without going through its guard."""
    return [use for use, guarded in scan().items() if not guarded]


def test_every_test_that_uses_an_optional_package_goes_through_needs():
    """A test that reads Fashion-MNIST, starts Chromium or runs TeX must skip with a how-to outside
    CI (and fail under it): through :func:`conftest.needs` or :func:`conftest.needs_fashion_mnist`,
    itself or in a fixture or helper it uses. One that only names the package is listed in
    STAND_INS with the reason."""
    assert unguarded_uses() == []
    known = {"test_data.py::test_real_fashion_mnist: Fashion-MNIST",
             "test_pdf.py::test_pdf_builds_with_every_chapter: TeX",
             "test_book.py::test_browser_check_catches_planted_faults: Chromium"}
    assert known <= set(scan()), "the scan no longer sees the known uses"


def test_the_scan_finds_an_unguarded_use(tmp_path, monkeypatch):
    (tmp_path / "test_planted.py").write_text(
        "from conftest import needs, needs_fashion_mnist\n\n"
        "def _browser():\n    return 'chromium'\n\n"
        "def test_a(tmp_path):\n    load_dataset('fashion_mnist')\n\n"
        "def test_b():\n    needs_fashion_mnist()\n    load_dataset('fashion_mnist')\n\n"
        "def test_c():\n    _browser()\n\n"
        "def test_d():\n    needs(False, 'TeX (xelatex)', 'apt-get install texlive-xetex')\n    _browser()\n")
    monkeypatch.setattr(sys.modules[__name__], "TESTS", tmp_path)
    assert unguarded_uses() == ["test_planted.py::test_a: Fashion-MNIST", "test_planted.py::test_c: Chromium",
                                "test_planted.py::test_d: Chromium"]
