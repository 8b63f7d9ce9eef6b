"""nbval really compares: a notebook whose stored output was changed fails, the unchanged one passes.

The notebooks are checked by pytest itself (pyproject.toml: ``--nbval --nbval-current-env
--nbval-sanitize-with tests/nbval_sanitize.cfg``). These tests run that same configuration in a
subprocess on a copy of a committed notebook, so a configuration that silently stopped comparing
(``--nbval-lax``, a sanitizer that swallows numbers, notebooks not collected) is caught.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
from nbval.plugin import get_sanitize_patterns

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "ch1_temperature_scaling.ipynb"
SANITIZE = ROOT / "tests" / "nbval_sanitize.cfg"
STORED = "horse     5.4   0.9933   0.6850"  # a line the notebook prints (thesis Figure 1.1 example)


def _pytest(*args: str | Path, rootdir: Path) -> subprocess.CompletedProcess:
    """Run pytest with the repository's configuration (addopts included) in a fresh interpreter,
    from the repository root (the sanitizer path in addopts is relative to it)."""
    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(rootdir)]
    cmd += ["-p", "no:cacheprovider", "-q", *map(str, args)]
    env = {**os.environ, "TQDM_DISABLE": "1", "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _summary(done: subprocess.CompletedProcess) -> dict[str, int]:
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", tail)}


def _stream_cell(nb, text: str) -> int:
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and text in out.get("text", ""):
                return i
    raise AssertionError(f"no stored output contains {text!r}")


def test_pyproject_runs_nbval_strictly_with_the_sanitizer():
    opts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    addopts = opts["addopts"].split()
    assert "--nbval" in addopts and "--nbval-lax" not in addopts
    assert "--nbval-current-env" in addopts
    assert addopts[addopts.index("--nbval-sanitize-with") + 1] == "tests/nbval_sanitize.cfg"
    assert "notebooks" in opts["testpaths"]
    assert {"_build", ".venv"} <= set(opts["norecursedirs"])


def test_sanitizer_masks_only_what_legitimately_varies():
    patterns = get_sanitize_patterns(SANITIZE.read_text())
    assert 1 <= len(patterns) <= 4, (
        "keep the sanitizer minimal: every pattern is something nbval stops checking"
    )

    def sanitize(s: str) -> str:
        for regex, replace in patterns:
            s = re.sub(regex, replace, s)
        return s

    # Memory addresses vary from run to run.
    assert sanitize("<function f at 0x7f3a2c1b9d30>") == sanitize("<function f at 0x55d1e04a7f10>")
    # Glued PNGs are no more compared than plain image/png outputs are.
    assert sanitize("iVBORw0KGgoAAAANSUhEUgAA\nAAB=") == sanitize("iVBORw0KGgoBBBBBBBB\n")
    # Numbers, text and figure reprs are still compared.
    for text in (STORED, "0.6850", "1e-05", "<Figure size 960x320 with 3 Axes>", "tensor([0.6850, 0.1867])"):
        assert sanitize(text) == text
    assert sanitize("0.6850") != sanitize("0.6851")


@pytest.fixture(scope="module")
def notebook_copy(tmp_path_factory) -> Path:
    if not NOTEBOOK.is_file():
        pytest.fail(f"{NOTEBOOK} is missing")
    path = tmp_path_factory.mktemp("nbval") / NOTEBOOK.name
    shutil.copy(NOTEBOOK, path)
    return path


def test_unchanged_notebook_passes(notebook_copy):
    done = _pytest(notebook_copy, rootdir=notebook_copy.parent)
    counts = _summary(done)
    assert done.returncode == 0 and counts.get("passed", 0) >= 5 and not counts.get("failed"), done.stdout[
        -3000:
    ]


def test_changed_stored_output_fails(notebook_copy, tmp_path):
    nb = nbformat.read(notebook_copy, as_version=4)
    idx = _stream_cell(nb, STORED)
    for out in nb.cells[idx]["outputs"]:
        if out.get("output_type") == "stream":
            out["text"] = out["text"].replace("0.6850", "0.6851")  # one digit of one stored number
    edited = tmp_path / notebook_copy.name
    nbformat.write(nb, edited)

    done = _pytest(edited, rootdir=tmp_path)
    counts = _summary(done)
    assert done.returncode == 1, done.stdout[-3000:]
    assert counts.get("failed") == 1, f"exactly the edited cell must fail: {counts}\n{done.stdout[-3000:]}"
    code_idx = sum(c.cell_type == "code" for c in nb.cells[:idx])  # nbval numbers the code cells from 0
    assert f"{edited.name}::Cell {code_idx}" in done.stdout, done.stdout[-3000:]
    assert "0.6851" in done.stdout and "0.6850" in done.stdout, "nbval should report both outputs"


def test_pytest_does_not_collect_build_or_venv_copies(tmp_path):
    """The book's executed copies (_build/jupyter_execute) and the virtualenv are never collected."""
    for folder in ("notebooks", "tests", "_build/jupyter_execute", ".venv/lib/site-packages/pkg"):
        (tmp_path / folder).mkdir(parents=True)
    shutil.copy(NOTEBOOK, tmp_path / "notebooks" / "a.ipynb")
    shutil.copy(NOTEBOOK, tmp_path / "_build" / "jupyter_execute" / "b.ipynb")
    (tmp_path / "tests" / "test_x.py").write_text("def test_x():\n    assert True\n")
    (tmp_path / ".venv" / "lib" / "site-packages" / "pkg" / "test_y.py").write_text(
        "def test_y():\n    pass\n"
    )
    (tmp_path / "_build" / "test_z.py").write_text("def test_z():\n    pass\n")

    cmd = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path)]
    cmd += ["-p", "no:cacheprovider", "--collect-only", "-q", "."]  # "." : recurse everywhere allowed
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    collected = [ln for ln in done.stdout.splitlines() if "::" in ln]
    assert any(ln.startswith("tests/test_x.py::") for ln in collected), done.stdout
    assert any(ln.startswith("notebooks/a.ipynb::") for ln in collected), done.stdout
    assert not [ln for ln in collected if ln.startswith(("_build", ".venv"))], done.stdout
