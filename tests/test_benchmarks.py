"""benchmarks/engine_efficiency.py: its code path on tiny sizes (not timed: only the output form)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "engine_efficiency.py"
LINE = re.compile(r"RESULT \S+ batch \d+ engine [\d.]+ GFLOP/s \| vmap (-|[\d.]+x) \| naive [\d.]+x \| "
                  r"[\d.]+% of (fp32|bf16) GEMM peak [\d.]+ GFLOP/s")


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("engine_efficiency", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize("students", [3, 0])
def test_engine_efficiency_runs_every_side_on_tiny_sizes(bench, students):
    specs = bench.student_specs(students, (8, 8))
    cfg = bench.Config("tiny", batch=8, hidden=(8, 8), specs=specs, steps=2, naive_models=2)
    result, times = bench.measure(cfg, "fp32", "fp32", repeats=1, peak={"fp32": 1.0, "bf16": 2.0},
                                  in_features=16)
    assert LINE.fullmatch(result), result
    assert ("vmap -" in result) == (students == 0) and "of bf16 GEMM peak 2.0" in result
    assert times.startswith("  ms/step: engine ") and ("scaled" in times) == (students == 3)


def test_engine_efficiency_configurations_are_the_issues(bench):
    names = [(c.name, c.batch, len(c.specs)) for c in bench.configs(quick=False)]
    assert names == [("students-2x800x60", 128, 60), ("students-2x800x60", 512, 60),
                     ("grid-2x100x303", 128, 303), ("poor-2x800x60", 128, 60), ("mnist1d-mlp-x360", 128, 360),
                     ("teacher-2x1200", 128, 0)]
    configs = bench.configs(quick=True)
    grid = configs[2].specs
    assert sorted({s.alpha for s in grid}) == [0.25, 0.5, 1.0, 2.0, 4.0, float("inf")]
    # the tuning stacks vary every arm, T, beta and the learning rate inside one stack
    for cfg in configs[3:5]:
        arms = {(s.alpha, s.reverse, s.normalize_by_alpha) for s in cfg.specs}
        assert arms == set(bench.ARMS) and len(cfg.lr_scale) == len(cfg.specs)
        assert {s.T for s in cfg.specs} == {2.0, 4.0, 8.0} and {s.beta for s in cfg.specs} == {0.5, 0.9, 1.0}
        assert set(cfg.lr_scale) == {0.5, 1.0, 2.0}
    assert configs[4].in_features == 40 and configs[4].hidden == (100, 100)


@pytest.mark.parametrize(("sizes", "students"), [((784, 800, 800, 10), 60), ((784, 1200, 1200, 10), 1),
                                                 ((16, 8, 5, 7, 3), 4)])
def test_step_matmuls_do_the_steps_work(bench, sizes, students):
    """The floor's products: 6 x weights x batch FLOP, less the first layer's input gradient."""
    B = 32
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
    flop = sum(2 * count * m * k * n for count, m, k, n in bench.step_matmuls(sizes, students, B))
    assert flop == students * B * (6 * sum(weights) - 2 * weights[0])


@pytest.mark.parametrize("students", [3, 0])
def test_engine_efficiency_floor_line(bench, students):
    specs = bench.student_specs(students, (8, 8))
    cfg = bench.Config("tiny", batch=8, hidden=(8, 8), specs=specs, steps=2, naive_models=2)
    lines = bench.measure(cfg, "fp32", "fp32", repeats=1, peak={"fp32": 1.0, "bf16": 2.0}, in_features=16,
                          floor=True)
    assert len(lines) == (4 if students else 3)  # a mixed stack adds its LOSS line
    floor = re.fullmatch(r"FLOOR tiny batch 8: matmuls ([\d.]+) \+ optimizer ([\d.]+) \+ loss ([\d.]+) "
                         r"= ([\d.]+) ms of the engine's [\d.]+ ms/step \| an engine at the floor: "
                         r"(vmap [\d.]+x, )?naive [\d.]+x", lines[2])
    assert floor, lines[2]
    parts = [float(v) for v in floor.groups()[:4]]
    assert abs(sum(parts[:3]) - parts[3]) <= 0.15 and (floor.group(5) is None) == (students == 0)
    if students:
        loss = re.fullmatch(r"LOSS tiny mixed ([\d.]+) ms \| kl-only ([\d.]+) ms \| ([\d.]+)x", lines[3])
        assert loss, lines[3]
        mixed, kl, ratio = (float(v) for v in loss.groups())
        assert mixed > 0 and kl > 0 and abs(ratio - mixed / kl) <= 0.01 + 0.005 * ratio


def test_kl_only_keeps_everything_but_the_soft_term(bench):
    specs = bench.student_specs(12, (8, 8))
    same = bench.kl_only(specs)
    assert bench.mixed(specs) and not bench.mixed(same)
    assert [(s.T, s.beta, s.seed) for s in same] == [(s.T, s.beta, s.seed) for s in specs]
    assert {(s.alpha, s.reverse, s.normalize_by_alpha) for s in same} == {(1.0, False, False)}


def test_dispatch_line_times_one_student_of_the_stack(bench):
    specs = bench.arm_specs(6, (8, 8))
    cfg = bench.Config("tiny", batch=8, hidden=(8, 8), specs=specs, steps=2, in_features=5,
                       lr_scale=bench.lr_cycle(6), dispatch=True)
    line = bench.dispatch_share(cfg, "fp32", 0.5, repeats=1)
    m = re.fullmatch(r"DISPATCH tiny: one student's step ([\d.]+) ms = ([\d.]+)% of the 6-student step "
                     r"\(500\.0 ms\)", line)
    assert m, line
    assert abs(float(m.group(2)) - float(m.group(1)) / 5) <= 0.06  # ms of 500 ms, in percent
