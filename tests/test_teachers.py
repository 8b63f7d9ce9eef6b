"""Several teachers per profile, input jitter, committed teacher logits, per-student epochs, ECE and
the share of the gap closed (the pieces of the full-scale Hinton experiment)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import needs_fashion_mnist

from kdlib.lab.analysis import gap_closed
from kdlib.lab.cache import CommittedTeachers
from kdlib.lab.config import StudentSpec, TrainConfig
from kdlib.lab.data import random_translate
from kdlib.lab.experiments import EXPERIMENTS
from kdlib.lab.metrics import evaluate_logits, expected_calibration_error
from kdlib.lab.profile import Profile, student_config, teacher_config
from kdlib.lab.results import student_frame, teacher_frame
from kdlib.lab.run import run_experiment
from kdlib.lab.shards import stack_groups
from kdlib.lab.store import ResultsFileError, load_records, make_record, run_key

# ----------------------------------------------------------------------------- jitter


def test_random_translate_moves_each_image_by_its_own_shift_and_fills_the_border():
    torch.manual_seed(3)
    x = torch.rand(64, 2, 7, 9) + 1.0  # all values > 1, so fill = 0 is recognisable
    y = random_translate(x, 2, fill=0.0)
    seen = set()
    for b in range(64):
        matches = []
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                want = torch.zeros_like(x[b])
                src = x[b][:, max(0, -dy):7 - max(0, dy), max(0, -dx):9 - max(0, dx)]
                want[:, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
                if torch.equal(y[b], want):
                    matches.append((dy, dx))
        assert len(matches) == 1, f"image {b} is not one translation of its input"
        seen.add(matches[0])
    assert len(seen) > 15, "64 images should draw most of the 25 shifts"
    assert torch.equal(random_translate(x, 0, fill=0.0), x)


def test_random_translate_refuses_bad_input():
    with pytest.raises(ValueError, match="max_shift"):
        random_translate(torch.zeros(2, 1, 4, 4), -1, 0.0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_translate(torch.zeros(2, 16), 1, 0.0)


def test_jitter_is_validated_and_keeps_old_keys():
    assert "jitter" not in TrainConfig(epochs=1).to_dict()
    assert TrainConfig(epochs=1, jitter=2).to_dict()["jitter"] == 2
    with pytest.raises(ValueError, match="jitter"):
        TrainConfig(epochs=1, jitter=-1)


# ----------------------------------------------------------------------------- several teachers


def test_full_hinton_has_three_teachers_of_five_seeds_each():
    p = EXPERIMENTS["hinton"].profile("full")
    assert p.teacher_seeds == (0, 1, 2) and p.commit_teacher_logits and p.teacher_train.jitter == 2
    for t in p.teacher_seeds:
        assert {s.seed for s in p.students if s.teacher == t} == {s for s in range(15) if s % 3 == t}
    keys = {run_key(teacher_config(p, "bf16", t)) for t in p.teacher_seeds}
    assert len(keys) == 3, "each teacher seed is its own run"
    for group in stack_groups(p.students, p.max_group):
        assert len({(p.students[i].seed, p.students[i].teacher, p.students[i].hidden) for i in group}) == 1


def test_budget_study_students_differ_only_in_epochs():
    p = EXPERIMENTS["hinton_budget"].profile("full")
    budgets = EXPERIMENTS["hinton_budget"].sizes["budgets"].full
    assert sorted({s.epochs for s in p.students}) == list(budgets) == [10, 20, 30, 40]
    tkey = run_key(teacher_config(p, "bf16"))
    configs = [student_config("hinton_budget", "full", p, s, tkey, "bf16") for s in p.students]
    assert [c["epochs"] for c in configs] == [s.epochs for s in p.students]
    assert len({run_key(c) for c in configs}) == len(configs)
    assert len(stack_groups(p.students, p.max_group)) == len(budgets)
    with pytest.raises(ValueError, match="epochs"):
        StudentSpec(epochs=0)


def test_data_poor_students_learn_from_three_percent_of_the_transfer_set():
    p = EXPERIMENTS["hinton_data_poor"].profile("full")
    assert p.transfer_size == 1_620 == round(0.03 * 54_000)
    assert p.teacher_seeds == EXPERIMENTS["hinton"].profile("full").teacher_seeds
    same = teacher_config(EXPERIMENTS["hinton"].profile("full"), "bf16", 1)
    assert teacher_config(p, "bf16", 1) == same, "the data-poor students learn from the same teachers"


# ----------------------------------------------------------------------------- committed logits


def _logits(rows):
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(n, 10, generator=g) * 5 for k, n in rows.items()}


def test_committed_logits_round_trip_as_float16_and_refuse_changes(tmp_path):
    rows = {"train": 30, "val": 7, "test": 11}
    logits = _logits(rows)
    store = CommittedTeachers(tmp_path)
    teacher = make_record("teacher", "abc", {"seed": 0}, {"test_accuracy": 0.9}, {"x": 1})
    used, record = store.save("abc", logits, teacher)
    info = record["provenance"]["teacher_logits"]
    assert info["rows"] == rows and info["dtype"] == "float16" and record["provenance"]["x"] == 1
    for k in rows:
        assert torch.equal(used[k], logits[k].half().float()), "students train from the float16 values"
    loaded, rec = store.load("abc", rows, 10)
    assert rec == record and all(torch.equal(loaded[k], used[k]) for k in rows)
    with pytest.raises(ResultsFileError, match="needs"):
        store.load("abc", {"train": 31, "val": 6, "test": 11}, 10)
    npy = store.paths("abc")[0]
    data = bytearray(npy.read_bytes())
    data[-1] ^= 1
    npy.write_bytes(bytes(data))
    with pytest.raises(ResultsFileError, match="SHA-256"):
        store.load("abc", rows, 10)
    for damaged in ("null", "[]", '{"key": "abc"}'):  # a record that is not one: a clear error, no traceback
        store.paths("abc")[1].write_text(damaged)
        with pytest.raises(ResultsFileError, match="is not a teacher record"):
            store.load("abc", rows, 10)


def _two_teacher_profile() -> Profile:
    students = tuple(StudentSpec(alpha=1.0, T=T, beta=b, seed=s, hidden=(16,), teacher=s % 2,
                                 label="alone" if b == 0 else "distilled")
                     for s in (0, 1, 2) for T, b in ((1.0, 0.0), (4.0, 0.9)))
    return Profile("digits", {"kind": "mlp", "hidden": [32], "dropout": 0.1},
                   TrainConfig(epochs=3, batch_size=64, jitter=1), TrainConfig(epochs=2, batch_size=64),
                   students, threads=1, commit_teacher_logits=True)


def test_students_rerun_from_committed_logits_without_the_teacher_equal_their_records(tmp_path):
    p = _two_teacher_profile()
    out, cache = tmp_path / "results", tmp_path / "cache"
    path = run_experiment("hinton", "twoteachers", device="cpu", out=out, cache_dir=cache,
                          profile_override=p, log=lambda m: None)
    records = load_records(path)
    teachers = [r for r in records if r["kind"] == "teacher"]
    assert [r["config"]["seed"] for r in teachers] == [0, 1] and teachers[0]["config"]["jitter"] == 1
    shas = {r["key"]: r["provenance"]["teacher_logits"]["sha256"] for r in teachers}
    students = [r for r in records if r["kind"] == "student"]
    assert len(students) == 6
    for r in students:
        assert r["provenance"]["teacher_logits_sha256"] == shas[r["config"]["teacher_key"]]
        assert 0 <= r["metrics"]["test_ece"] <= 1
    # no teacher cache, no results: only the committed logits remain; the students come out the same
    shutil.rmtree(cache)
    path.unlink()
    rerun = load_records(run_experiment("hinton", "twoteachers", device="cpu", out=out, cache_dir=cache,
                                        profile_override=p, log=lambda m: None))
    assert not (cache / "teachers").exists() or not any((cache / "teachers").glob("*.pt")), \
        "no teacher was trained again"
    again = {r["key"]: r["metrics"] for r in rerun if r["kind"] == "student"}
    assert again == {r["key"]: r["metrics"] for r in students}
    frame = teacher_frame(rerun)
    assert frame["teacher"].tolist() == [0, 1] and frame["jitter"].tolist() == [1, 1]


# ----------------------------------------------------------------------------- ECE and the gap closed


def _two_models(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(2, n, 10)`` of two random models (scale 3: confidences over the whole range) and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, n, 10, generator=g) * 3, torch.randint(0, 10, (n,), generator=g)


def test_expected_calibration_error_matches_a_direct_loop():
    z, y = _two_models(seed=1, n=500)
    ece = expected_calibration_error(z, y, bins=10)
    for s in range(2):
        conf, pred = torch.softmax(z[s].double(), -1).max(-1)
        total = 0.0
        for k in range(10):
            m = (conf > k / 10) & (conf <= (k + 1) / 10)
            if m.any():
                acc = (pred[m] == y[m]).double().mean().item()
                total += m.sum().item() / 500 * abs(acc - conf[m].mean().item())
        assert ece[s].item() == pytest.approx(total, abs=1e-12)
    assert evaluate_logits(z[0], y, 10)[0]["test_ece"] == pytest.approx(ece[0].item())
    broken = z.clone()
    broken[1, 7, 3] = math.nan  # a diverged student has no ECE; the others keep theirs
    with_nan = expected_calibration_error(broken, y, bins=10)
    assert math.isnan(with_nan[1]) and with_nan[0] == ece[0]
    sharp = torch.nn.functional.one_hot(y, 10).double() * 50  # right and certain: ECE 0
    assert expected_calibration_error(sharp, y).item() == pytest.approx(0.0, abs=1e-12)


def test_reliability_diagram_matches_a_direct_loop_and_gives_the_ece():
    from kdlib.lab.metrics import reliability

    z, y = _two_models(seed=2, n=400)
    diagrams = reliability(z, y, bins=10)
    for s in range(2):
        conf, pred = torch.softmax(z[s].double(), -1).max(-1)
        d = diagrams[s]
        for k in range(10):
            m = (conf > k / 10) & (conf <= (k + 1) / 10)
            assert d["count"][k] == int(m.sum())
            if m.any():
                assert d["confidence"][k] == pytest.approx(conf[m].mean().item(), abs=1e-12)
                assert d["accuracy"][k] == pytest.approx((pred[m] == y[m]).double().mean().item(), abs=1e-12)
            else:
                assert d["confidence"][k] is None and d["accuracy"][k] is None
        ece = sum(c * abs(a - f) for c, a, f in zip(d["count"], d["accuracy"], d["confidence"], strict=True)
                  if c) / 400
        assert ece == pytest.approx(expected_calibration_error(z[s], y, bins=10).item(), abs=1e-12)
    assert sum(diagrams[0]["count"]) == 400
    assert evaluate_logits(z[0], y, 10)[0]["test_reliability"] == reliability(z[0], y)[0]
    broken = z.clone()
    broken[1, 0, 0] = math.inf
    assert set(reliability(broken, y)[1]["count"]) == {None}


def _gap_frames(shift: float):
    rng = np.random.default_rng(0)
    seeds = np.arange(12)
    alone = pd.DataFrame({"seed": seeds, "test_accuracy": 0.80 + 0.002 * rng.standard_normal(12)})
    keys = [f"t{s % 3}" for s in seeds]
    teachers = pd.DataFrame({"teacher_key": ["t0", "t1", "t2"], "test_accuracy": [0.90, 0.91, 0.89]})
    tacc = teachers.set_index("teacher_key")["test_accuracy"]
    dist = pd.DataFrame({"seed": seeds, "teacher_key": keys,
                         "test_accuracy": alone["test_accuracy"] + shift * (tacc[keys].to_numpy()
                                                                            - alone["test_accuracy"])})
    return dist, alone, teachers


def test_gap_closed_recovers_a_known_share_and_brackets_it():
    dist, alone, teachers = _gap_frames(0.5)
    out = gap_closed(dist, alone, teachers, resamples=2000)
    assert out["share"] == pytest.approx(0.5, abs=1e-9)
    assert out["ci_low"] <= 0.5 <= out["ci_high"] and out["ci_high"] - out["ci_low"] < 0.05
    assert all(v == pytest.approx(0.5, abs=1e-9) for v in out["per_teacher"].values())
    assert out["n"] == 12 and out["teachers"] == 3
    noisy = dist.assign(test_accuracy=dist["test_accuracy"] + np.resize([0.01, -0.01], 12))
    wide = gap_closed(noisy, alone, teachers, resamples=2000)
    assert wide["ci_high"] - wide["ci_low"] > out["ci_high"] - out["ci_low"]
    with pytest.raises(ValueError, match="student alone"):
        gap_closed(dist, alone[alone["seed"] != 4], teachers, resamples=10)


def test_student_frame_carries_the_teacher_of_each_run():
    config = {"label": "distilled", "model": {"kind": "mlp", "hidden": [8]}, "alpha": 1.0, "T": 4.0,
              "beta": 0.9, "seed": 3, "epochs": 5, "teacher_key": "tk"}
    rec = make_record("student", "k", config, {"test_accuracy": 0.5, "test_ece": 0.1}, {})
    row = student_frame([rec]).iloc[0]
    assert row["teacher_key"] == "tk" and row["test_ece"] == 0.1 and math.isnan(row["test_ce"])
    assert json.loads(json.dumps({"e": int(row["epochs"])})) == {"e": 5}


def test_a_committed_full_scale_student_reruns_exactly_from_the_committed_logits(tmp_path):
    """The committed claim: a 2×30 student of results/hinton/full.jsonl (and the students stacked
    with it), rerun from its teacher's committed float16 logits without the teacher, reproduces its
    record exactly, on the same kind of machine (same torch, CPU kernels and instruction set)."""
    from kdlib.lab.config import default_threads
    from kdlib.lab.provenance import environment
    from kdlib.lab.run import rerun_student
    from kdlib.lab.store import load_experiment_records, results_root

    path = results_root() / "hinton" / "full.jsonl"
    if not path.exists():
        pytest.skip("no committed full-scale Hinton results")
    students = [r for r in load_experiment_records(path, kind="student")
                if r["config"]["model"]["hidden"] == [30, 30] and r["config"]["label"] == "alone"]
    assert students, "the full-scale results hold 2x30 students"
    target = students[0]
    # the rerun trains with the thread count a run uses (the test session itself uses one thread)
    here, there = {**environment("cpu"), "threads": default_threads()}, target["provenance"]
    same = all(here.get(k) == there.get(k) for k in ("torch", "cpu_capability", "cpu_isa", "threads"))
    if not same or there.get("device") != "cpu":
        pytest.skip("the record comes from another kind of machine; see the README for the tolerance")
    needs_fashion_mnist()  # the rerun trains on the real data
    before, after = rerun_student(target["key"], tmp_path / "rerun", cache_dir=tmp_path / "cache",
                                  log=lambda m: None)
    assert not (tmp_path / "cache" / "teachers").exists(), "the teacher came from the committed logits"
    assert after["provenance"]["teacher_logits_sha256"] == before["provenance"]["teacher_logits_sha256"]
    # every metric the record holds is reproduced (code newer than the record may record more)
    assert {k: after["metrics"][k] for k in before["metrics"]} == before["metrics"]


def test_committed_teachers_and_model_descriptions(tmp_path):
    from kdlib.lab.results import committed_teachers
    from kdlib.report.book import describe_model

    assert describe_model({"kind": "cnn", "width": 32, "hidden": 256, "dropout": 0.3}) == \
        "CNN, conv 32-64, hidden 256"
    assert describe_model({"kind": "mlp", "hidden": [1200, 1200]}) == "MLP, hidden layers 1200-1200"
    store = CommittedTeachers(tmp_path)
    for seed, acc in ((1, 0.9), (0, 0.8)):
        record = make_record("teacher", f"k{seed}",
                             {"seed": seed, "model": {"kind": "cnn"}, "epochs": 3, "jitter": 2,
                              "experiment": "hinton", "profile": "full"},
                             {"test_accuracy": acc, "test_errors": 10, "final_val_accuracy": acc,
                              "curves": {"val_accuracy": [acc], "train_loss": [1.0]}},
                             {"wall_seconds": 1.0})
        store.save(f"k{seed}", _logits({"train": 4, "val": 2, "test": 2}), record)
    frame = committed_teachers(tmp_path)
    assert frame["teacher"].tolist() == [0, 1] and frame["test_accuracy"].tolist() == [0.8, 0.9]
    assert frame["model"].iloc[0] == {"kind": "cnn"} and frame["jitter"].tolist() == [2, 2]
