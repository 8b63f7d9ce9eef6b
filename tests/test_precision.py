"""The same student in float32 and in bfloat16 is two runs with two keys, not two seeds: no report or book
table may pool them as if they were (the hardening issue's first item)."""

from __future__ import annotations

import pytest

from kdlib.cli import main
from kdlib.lab import results
from kdlib.lab.store import ResultsStore, make_record


def _student(seed: int, dtype: str, acc: float) -> dict:
    config = {"experiment": "hinton", "profile": "cpu", "alpha": 1.0, "T": 2.0, "beta": 0.9,
              "seed": seed, "normalize_by_alpha": False, "label": "distilled",
              "model": {"kind": "mlp", "hidden": [8]},
              "epochs": 2, "lr": 0.05, "optimizer": "sgd", "dtype": dtype}
    return make_record("student", f"s{seed}-{dtype}", config, {"test_accuracy": acc, "test_errors": 1},
                       {"git_commit": "a" * 40, "started": "2026-01-01T00:00:00Z",
                        "finished": "2026-01-01T00:01:00Z", "wall_seconds": 60.0})


@pytest.fixture
def mixed(tmp_path):
    """One seed trained twice, in fp32 and in bf16 (as `run --precision fp32` then `--precision bf16` do)."""
    store = ResultsStore(tmp_path / "hinton" / "cpu.jsonl")
    for rec in (_student(0, "float32", 0.80), _student(0, "bf16-autocast", 0.82)):
        store.append(rec)
    return tmp_path


def test_the_report_keeps_precisions_apart(mixed, capsys):
    assert main(["report", "hinton", "--profile", "cpu", "--all", "--out", str(mixed)]) == 0
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.strip().startswith("distilled")]
    assert len(rows) == 2, "one cell per precision, not one cell of n = 2"
    assert all(" 1 " in f" {' '.join(r)} " for r in rows)  # n = 1 in each
    assert "float32" in out and "bf16-autocast" in out
    assert "± " not in "".join(ln for ln in out.splitlines() if ln.strip().startswith("distilled"))


def test_a_frame_never_pools_precisions(mixed):
    res = results.load_results("hinton", "cpu", mixed)
    assert res.precisions == ["bf16-autocast", "float32"]
    with pytest.raises(ValueError, match="mix precisions bf16-autocast, float32; .* pass precision="):
        res.frame()
    fp32 = res.frame(precision="float32")
    assert len(fp32) == 1 and fp32["test_accuracy"].iloc[0] == 0.80 and set(fp32["precision"]) == {"float32"}
    with pytest.raises(ValueError, match="precision must be one of"):
        res.frame(precision="fp16")
    # a cell is a precision too: the frame of both keeps them in two cells
    both = results.student_frame(res.students)
    assert both.groupby(list(results.CELL_FIELDS)).size().tolist() == [1, 1]
