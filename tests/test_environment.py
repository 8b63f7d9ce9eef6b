"""environment.yml (conda) and pyproject.toml (`make env`) describe the same environment.

pyproject.toml is the one dependency list; constraints.txt locks it; the Makefile and environment.yml
both install ``-e .[<all extras>]`` with ``-c constraints.txt``. These tests fail when the files drift
apart: a different Python, a missing extra, a different install line, a pin that the lock contradicts,
or an installed environment older than the pins.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def _conda_deps(env: dict) -> tuple[list[str], list[str]]:
    """The conda specs and the pip section of environment.yml."""
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected section {set(dep)} in environment.yml"
            pip += dep["pip"]
        else:
            conda.append(str(dep))
    return conda, pip


def _pip_options(lines: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split pip requirement lines into constraint files, editable targets and anything else."""
    constraints, editables, other = [], [], []
    for line in lines:
        m = re.fullmatch(r"(?:-c|--constraint)(?:\s+|=)(\S+)", line.strip())
        e = re.fullmatch(r"(?:-e|--editable)(?:\s+|=)(\S+)", line.strip())
        if m:
            constraints.append(m.group(1))
        elif e:
            editables.append(e.group(1).strip("\"'"))
        else:
            other.append(line)
    return constraints, editables, other


def _extras(target: str) -> tuple[str, set[str]]:
    m = re.fullmatch(r"([^\[\]]+)(?:\[([^\]]*)\])?", target)
    assert m, f"cannot parse install target {target!r}"
    return m.group(1), {x.strip() for x in (m.group(2) or "").split(",") if x.strip()}


def _all_pins(pyproject: dict) -> dict[str, Requirement]:
    project = pyproject["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for group in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in group]
    pins: dict[str, Requirement] = {}
    for r in reqs:
        name = canonicalize_name(r.name)
        assert name not in pins, f"{r.name} is listed twice in pyproject.toml"
        pins[name] = r
    return pins


def _lock() -> dict[str, str]:
    lock: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"constraints.txt: not an exact pin: {raw!r}"
        name = canonicalize_name(m.group(1))
        assert name not in lock, f"constraints.txt pins {name} twice"
        lock[name] = m.group(2)
    return lock


def test_python_version_agrees(env, pyproject):
    conda, _ = _conda_deps(env)
    pythons = [d for d in conda if re.match(r"python\b", d)]
    assert len(pythons) == 1, f"environment.yml must name python exactly once, got {pythons}"
    m = re.fullmatch(r"python\s*=?=?\s*(\d+\.\d+)(?:\.\*)?", pythons[0])
    assert m, f"environment.yml: expected 'python=X.Y', got {pythons[0]!r}"
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    assert Version(m.group(1)) in requires, f"python={m.group(1)} violates requires-python {requires}"
    running = Version(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert running in requires, f"this interpreter ({running}) violates requires-python {requires}"
    assert "pip" in conda, "environment.yml must install pip for its pip section"


def test_pip_section_installs_the_package_with_every_extra_under_the_lock(env, pyproject):
    _, pip = _conda_deps(env)
    constraints, editables, other = _pip_options(pip)
    assert not other, f"environment.yml installs packages outside pyproject.toml: {other}"
    assert constraints == ["constraints.txt"], (
        f"environment.yml must use -c constraints.txt, got {constraints}"
    )
    assert len(editables) == 1, f"environment.yml must install the package once in editable mode: {editables}"
    path, extras = _extras(editables[0])
    assert path == ".", "the editable install must be the repository root (conda runs pip there)"
    assert extras == set(pyproject["project"]["optional-dependencies"]), (
        f"environment.yml installs extras {sorted(extras)}, pyproject.toml defines "
        f"{sorted(pyproject['project']['optional-dependencies'])}"
    )


def test_makefile_installs_the_same_thing(env):
    _, pip = _conda_deps(env)
    _, env_editables, _ = _pip_options(pip)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    lines = [ln for ln in makefile.splitlines() if "$(BIN)/python -m pip install" in ln and " -e " in ln]
    assert len(lines) == 1, f"expected one editable install line in the Makefile, got {lines}"
    make_constraints = re.findall(r"(?:-c|--constraint)[ =](\S+)", lines[0])
    make_target = re.search(r"-e\s+(\S+)", lines[0]).group(1).strip("\"'")
    assert make_constraints == ["constraints.txt"]
    assert _extras(make_target) == _extras(env_editables[0]), (make_target, env_editables[0])


def test_every_pin_in_pyproject_is_in_the_lock(pyproject):
    pins, lock = _all_pins(pyproject), _lock()
    problems = []
    for name, req in pins.items():
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            problems.append(f"{req}: pyproject.toml pins must be exact (==)")
        elif name not in lock:
            problems.append(f"{req}: missing from constraints.txt")
        elif lock[name] != specs[0].version:
            problems.append(f"{req}: constraints.txt has {name}=={lock[name]}")
    assert not problems, "\n".join(problems)


def test_installed_environment_matches_the_pins(pyproject):
    """Catches a stale environment (`make env` re-installs when pyproject.toml or the lock change)."""
    stale = []
    for name, req in _all_pins(pyproject).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            stale.append(f"{req}: not installed")
            continue
        if Version(installed) not in req.specifier:
            stale.append(f"{req}: installed {installed}")
    assert not stale, "environment out of date (run `make env`):\n" + "\n".join(stale)


def test_pip_accepts_the_pip_section_as_conda_runs_it(env, tmp_path):
    """Conda writes the pip section to a requirements file next to environment.yml and runs
    ``pip install -r`` from that folder. Do the same (dry run, offline, on a copy of the project
    metadata) so that pip itself parses the constraint line and resolves the extras."""
    for name in ("pyproject.toml", "README.md", "constraints.txt", "environment.yml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "kdlib").mkdir()
    (tmp_path / "kdlib" / "__init__.py").write_text("")
    _, pip = _conda_deps(env)
    (tmp_path / "condaenv.test.requirements.txt").write_text("\n".join(pip) + "\n")
    report = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--dry-run",
        "--no-index",
        "--no-deps",
        "--no-build-isolation",
    ]
    cmd += ["--quiet", "--report", str(report), "-r", "condaenv.test.requirements.txt"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    installs = json.loads(report.read_text())["install"]
    assert [i["metadata"]["name"] for i in installs] == ["kdlib"]
    assert set(installs[0]["requested_extras"]) == set(_extras(_pip_options(pip)[1][0])[1])
