"""kdlib.lab: the table of scales, run keys of the committed results, precision and threads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import kdlib.lab.config as C
from kdlib.lab.config import PROFILES, StudentSpec, TrainConfig
from kdlib.lab.data import load_dataset
from kdlib.lab.experiments import (
    BIG,
    DATA_POOR,
    EXPERIMENTS,
    EXPLORE_SEEDS,
    OMIT_WIDTH,
    SCALES,
    expected_keys,
    get_experiment,
)
from kdlib.lab.models import StackedMLP
from kdlib.lab.profile import student_config, teacher_config
from kdlib.lab.store import run_key
from kdlib.lab.train import distillation_objective, fit

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_builds_at_every_scale(name):
    for profile in PROFILES:
        p = EXPERIMENTS[name].profile(profile)
        assert p.students and p.student_train.epochs >= 1
        assert p.dataset == (SCALES[profile].dataset or p.dataset)


def test_committed_records_keep_their_keys():
    """Every committed record is a run of the current definition of its profile (keys are stable)."""
    files = sorted(RESULTS.glob("*/*.jsonl"))
    assert files, "no committed results found"
    for path in files:
        keys = {json.loads(line)["key"] for line in path.read_text().splitlines() if line.strip()}
        missing = keys - expected_keys(path.parent.name, path.stem)
        assert not missing, f"{path}: {len(missing)} records no longer match their experiment's definition"


def test_precision_is_part_of_the_key():
    p = EXPERIMENTS["renyi_grid"].profile("smoke")
    fp32, bf16 = run_key(teacher_config(p, "fp32")), run_key(teacher_config(p, "bf16"))
    assert fp32 != bf16 and teacher_config(p)["dtype"] == "float32"
    s = p.students[1]
    keys = {run_key(student_config("renyi_grid", "smoke", p, s, t, prec)) for t, prec in ((fp32, "fp32"),
                                                                                           (bf16, "bf16"))}
    assert len(keys) == 2 and keys < expected_keys("renyi_grid", "smoke")


def test_resolve_precision(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(C, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert C.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(C, "cpu_flags", lambda: {"avx2"})
    assert C.resolve_precision("auto", cpu) == "fp32" and C.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        C.resolve_precision("fp16", cpu)


def test_default_threads(monkeypatch):
    monkeypatch.setenv("KDLIB_THREADS", "3")
    assert C.default_threads() == 3
    monkeypatch.setenv("KDLIB_THREADS", "0")
    with pytest.raises(ValueError, match="KDLIB_THREADS must be an integer >= 1"):
        C.default_threads()
    monkeypatch.delenv("KDLIB_THREADS")
    assert C.default_threads() >= 1

    monkeypatch.setenv("KDLIB_THREADS", "99999999999999999999")  # torch.set_num_threads would overflow
    with pytest.raises(ValueError, match=f"KDLIB_THREADS must be an integer >= 1 and <= {C.MAX_THREADS}"):
        C.default_threads()


@pytest.mark.parametrize("threads", [0, -1, C.MAX_THREADS + 1, 99999999999999999999, 2.0, True, "4", None])
def test_check_threads_refuses_what_torch_set_num_threads_cannot_take(threads):
    with pytest.raises(ValueError, match=f"threads must be an integer >= 1 and <= {C.MAX_THREADS}, got"):
        C.check_threads(threads)


def test_check_threads_returns_an_int_in_range():
    assert C.check_threads(1) == 1 and C.check_threads(C.MAX_THREADS) == C.MAX_THREADS
    assert type(C.check_threads(torch.tensor(3).item())) is int


@pytest.mark.parametrize("device, want", [("auto", None), ("cpu", torch.device("cpu")),
                                          ("cuda", torch.device("cuda")), ("cuda:7", torch.device("cuda:7"))])
def test_check_device_does_not_need_the_device_here(device, want):
    assert C.check_device(device) == want  # cuda:7 is fine: the jobs that use it run elsewhere


@pytest.mark.parametrize("device", ["tpu", "mps", "meta", "CPU", "cuda:-1", "", None])
def test_check_device_and_resolve_device_refuse_unknown_and_non_cpu_cuda_devices(device):
    for check in (C.check_device, C.resolve_device):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got"):
            check(device)


def test_bf16_training_keeps_fp32_weights_and_learns():
    s = load_dataset("digits")
    specs = [C.StudentSpec(alpha=a, T=4.0, beta=0.9, seed=i, hidden=(32, 32))
             for i, a in enumerate((1.0, 2.0))]
    teacher = torch.randn(len(s.y_train), 10, generator=torch.Generator().manual_seed(0))
    teacher[torch.arange(len(s.y_train)), s.y_train] += 6.0  # a teacher that knows the labels
    cfg = C.TrainConfig(epochs=6, batch_size=64, lr=0.05)
    curves = {}
    for precision in ("fp32", "bf16"):
        model = StackedMLP(64, (32, 32), 10, [sp.seed for sp in specs])
        curves[precision] = fit(model, s.x_train, distillation_objective(s.y_train, teacher, specs), cfg,
                                data_seed=0, val=(s.x_val, s.y_val), precision=precision)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    for acc32, acc16 in zip(curves["fp32"]["val_accuracy"], curves["bf16"]["val_accuracy"], strict=True):
        assert acc16[-1] > 0.85 and abs(acc16[-1] - acc32[-1]) < 0.05


HYPOTHESIS = {
    "experiment": "renyi_confirm_tuned",
    "reference": {"arm": "KL", "alpha": 1.0, "normalize_by_alpha": False, "reverse": False,
                  "lr": 0.05, "T": 2.0},
    "arms": [{"arm": "α=4", "alpha": 4.0, "normalize_by_alpha": False, "reverse": False,
              "lr": 0.0125, "T": 2.0, "hypothesis": "greater"},
             {"arm": "α=∞", "alpha": "inf", "normalize_by_alpha": False, "reverse": False,
              "lr": 0.05, "T": 4.0, "hypothesis": "equivalent"}],
    "teachers": [3, 4, 5], "seeds": [100, 101, 102, 103], "metric": "test_accuracy",
    "smallest_effect": 0.003, "level": 0.05, "correction": "holm",
}


def test_a_confirmation_builds_exactly_the_students_of_its_hypothesis_file(tmp_path, monkeypatch):
    import json
    import math

    from kdlib.lab.prereg import load_hypothesis

    monkeypatch.setenv("KDLIB_HYPOTHESES_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="write and commit the hypotheses"):
        get_experiment("renyi_confirm_tuned").profile("full")
    (tmp_path / "renyi_confirm_tuned.json").write_text(json.dumps(HYPOTHESIS))
    p = get_experiment("renyi_confirm_tuned").profile("full")
    assert p.teacher_seeds == (4, 5, 3)  # seed 100 -> teacher 100 % 3 = 1 -> seed 4, ...
    assert len(p.students) == 4 * 4  # per seed: alone, the reference and two arms
    inf = [s for s in p.students if math.isinf(s.alpha)]
    assert len(inf) == 4 and {(s.T, s.lr) for s in inf} == {(4.0, 0.05)}
    assert {s.lr for s in p.students if s.alpha == 4.0} == {0.0125}
    assert p.student_train.warmup_epochs == 1.0 and p.gradient_probe > 0
    assert len(load_hypothesis("renyi_confirm_tuned").students((32, 32), smoke=True)) == 2 * 4
    # the data-poor confirmation: the same students as the big student on the data-poor transfer set

    with pytest.raises(FileNotFoundError, match="write and commit the hypotheses of 'renyi_confirm_poor'"):
        get_experiment("renyi_confirm_poor").profile("full")
    poor_file = {**HYPOTHESIS, "experiment": "renyi_confirm_poor"}
    (tmp_path / "renyi_confirm_poor.json").write_text(json.dumps(poor_file))
    poor = get_experiment("renyi_confirm_poor").profile("full")
    big = BIG.full
    assert poor.teacher_seeds == p.teacher_seeds and len(poor.students) == len(p.students)
    assert [(s.alpha, s.T, s.lr, s.seed, s.teacher) for s in poor.students] == [
        (s.alpha, s.T, s.lr, s.seed, s.teacher) for s in p.students]
    assert {s.hidden for s in poor.students} == {big}
    assert poor.transfer_size == DATA_POOR.transfer_size.full == 1_620
    assert poor.student_train.epochs == DATA_POOR.epochs.full == 100
    assert {s.optimizer for s in poor.students} == {None}  # no optimizer field: SGD, keys as before
    # the Adam confirmation of the data-poor student: the same students, every one with Adam

    with pytest.raises(FileNotFoundError, match="renyi_confirm_adam_poor"):
        get_experiment("renyi_confirm_adam_poor").profile("full")
    adam_file = {**HYPOTHESIS, "experiment": "renyi_confirm_adam_poor", "optimizer": "adam"}
    (tmp_path / "renyi_confirm_adam_poor.json").write_text(json.dumps(adam_file))
    adam = get_experiment("renyi_confirm_adam_poor").profile("full")
    assert [(s.alpha, s.T, s.lr, s.seed, s.teacher, s.hidden) for s in adam.students] == [
        (s.alpha, s.T, s.lr, s.seed, s.teacher, s.hidden) for s in poor.students]
    assert {s.optimizer for s in adam.students} == {"adam"}
    assert {adam.student_train_of(s).optimizer for s in adam.students} == {"adam"}
    assert (adam.transfer_size, adam.student_train.epochs) == (1_620, 100)
    (tmp_path / "renyi_confirm_adam_poor.json").write_text(json.dumps({**adam_file, "optimizer": "rmsprop"}))
    with pytest.raises(ValueError, match="'optimizer' must be one of sgd, adam"):
        get_experiment("renyi_confirm_adam_poor").profile("full")


_REF, _ARM = HYPOTHESIS["reference"], HYPOTHESIS["arms"][0]


@pytest.mark.parametrize("content, match", [
    # damaged files: each refused with a message naming the file, never a traceback
    ("", "not a readable JSON hypothesis file"),
    ("{", "not a readable JSON hypothesis file"),
    (b"\xff\xfe", "not a readable JSON hypothesis file"),
    ("[1, 2]", "must hold a JSON object, got list"),
    ("null", "must hold a JSON object, got NoneType"),
    ("[" * 100_000 + "]" * 100_000, "not a readable JSON hypothesis file"),
    # fields missing, of the wrong type or outside their range
    ({"seeds": []}, "field 'seeds' must be a non-empty list"),
    ({"seeds": ["100", "101"]}, "each of 'seeds' must be an integer"),
    ({"seeds": [100.0, 101.0]}, "each of 'seeds' must be an integer"),
    ({"seeds": [True]}, "each of 'seeds' must be an integer"),
    ({"seeds": [100, 100]}, "'seeds' repeats a value"),
    ({"teachers": ["3"]}, "each of 'teachers' must be an integer"),
    ({"teachers": [3, 3]}, "'teachers' repeats a value"),
    ({"level": "0.05"}, "field 'level' must be a number in"),
    ({"level": 1.5}, "field 'level' must be a number in"),
    ({"smallest_effect": True}, "field 'smallest_effect' must be a number"),
    ({"metric": None}, "field 'metric' must be a non-empty string"),
    ({"correction": "bonferroni"}, "field 'correction' must be one of holm"),
    ({"arms": []}, "field 'arms' must be a non-empty list"),
    ({"arms": "α=4"}, "field 'arms' must be a non-empty list"),
    ({"arms": [1]}, "arm 1 must be a JSON object"),
    ({"reference": None}, "reference must be a JSON object"),
    ({"arms": [{**_REF, "hypothesis": "greater"}]}, "arm 1 is the reference itself"),
    ({"arms": [{**_ARM, "hypothesis": "better"}]}, "field 'hypothesis' must be one of"),
    ({"reference": {**_REF, "hypothesis": "greater"}}, "the reference takes no hypothesis"),
    ({"reference": {**_REF, "lr": "fast"}}, "field 'lr' must be a number"),
    ({"arms": [{**_ARM, "alpha": "abc"}]}, "field 'alpha' \\(or the string \"inf\"\\) must be a number"),
    ({"arms": [{**_ARM, "alpha": True}]}, "field 'alpha'"),
    ({"arms": [{**_ARM, "alpha": -1.0}]}, "field 'alpha'"),
    ({"arms": [{**_ARM, "reverse": "no"}]}, "field 'reverse' must be true or false"),
    ({"arms": [{**_ARM, "arm": "KL"}]}, "field 'arm' is 'KL' but the fields describe 'α=4'"),
    ({"arms": [{**_ARM, "alpha": "inf", "arm": "α=∞", "normalize_by_alpha": True}]}, "normalize_by_alpha"),
    ({"optimizer": "rmsprop"}, "field 'optimizer' must be one of sgd, adam"),
    ({"sd_estimates": [1]}, "field 'sd_estimates' must map names to numbers"),
    ({"runs_needed": 2.5}, "field 'runs_needed' must be an integer"),
])
def test_a_damaged_hypothesis_file_is_refused_with_a_message_naming_it(tmp_path, content, match):
    import json

    from kdlib.lab.prereg import HypothesisFileError, load_hypothesis

    path = tmp_path / "renyi_confirm_tuned.json"
    if isinstance(content, dict):
        path.write_text(json.dumps({**HYPOTHESIS, **content}))
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(HypothesisFileError, match=match) as info:
        load_hypothesis("renyi_confirm_tuned", tmp_path)
    assert str(path) in str(info.value)


def test_a_hypothesis_file_round_trips_through_its_type(tmp_path):
    import json

    from kdlib.lab.config import Arm
    from kdlib.lab.prereg import Hypothesis, load_hypothesis

    (tmp_path / "h.json").write_text(json.dumps(HYPOTHESIS, indent=1, ensure_ascii=False) + "\n")
    h = load_hypothesis("h", tmp_path)
    assert h.arms[1].arm == Arm(math.inf) and h.arms[1].hypothesis == "equivalent" and h.reference.lr == 0.05
    assert h.runs() == [(100, 4), (101, 5), (102, 3), (103, 4)] and h.runs(smoke=True) == h.runs()[:2]
    assert h.dumps() == (tmp_path / "h.json").read_text()
    assert Hypothesis.from_json(json.loads(h.dumps())) == h


def test_the_adam_check_and_the_tuned_omitted_class_follow_their_hypothesis_files(tmp_path, monkeypatch):
    import json

    from kdlib.lab import experiments as E

    monkeypatch.setenv("KDLIB_HYPOTHESES_DIR", str(tmp_path))
    for name in ("renyi_adam", "omitted_class_tuned"):
        assert not E.get_experiment(name).ready
        with pytest.raises(FileNotFoundError, match="write and commit the hypotheses"):
            E.get_experiment(name).profile("full")
    (tmp_path / "renyi_confirm_tuned.json").write_text(json.dumps(HYPOTHESIS))
    adam = E.get_experiment("renyi_adam").profile("full")
    # the reference and two arms, at their own T, each at the three Adam rates, on the exploration's teachers
    assert len(adam.students) == 3 * 3 * len(EXPLORE_SEEDS.full)
    assert {s.optimizer for s in adam.students} == {"adam"}
    assert {s.lr for s in adam.students} == set(E.ADAM_LRS)
    assert {(s.alpha, s.T) for s in adam.students} == {(1.0, 2.0), (4.0, 2.0), (float("inf"), 4.0)}
    assert adam.teacher_seeds == (0, 1, 2)
    # the data-poor twin: the same students from its own file, as big students on the data-poor transfer set
    with pytest.raises(FileNotFoundError, match="renyi_confirm_poor"):
        E.get_experiment("renyi_adam_poor").profile("full")
    (tmp_path / "renyi_confirm_poor.json").write_text(json.dumps(HYPOTHESIS))
    poor = E.get_experiment("renyi_adam_poor").profile("full")
    # the same students at the three rates (their records keep their keys), and two larger rates
    def fields(students):
        return [(s.alpha, s.T, s.lr, s.seed, s.teacher, s.optimizer) for s in students]

    assert fields(s for s in poor.students if s.lr in E.ADAM_LRS) == fields(adam.students)
    assert E.ADAM_LRS_POOR[:3] == E.ADAM_LRS and min(E.ADAM_LRS_POOR[3:]) > max(E.ADAM_LRS)
    assert len(poor.students) == 3 * len(E.ADAM_LRS_POOR) * len(EXPLORE_SEEDS.full)
    assert {s.hidden for s in poor.students} == {BIG.full}
    assert (poor.transfer_size, poor.student_train.epochs) == (1_620, 100)
    (tmp_path / "omitted_class_tuned.json").write_text(json.dumps({**HYPOTHESIS, "teachers": [0, 1, 2],
                                                                   "metric": "omitted_class_auroc"}))
    omit = E.get_experiment("omitted_class_tuned").profile("full")
    assert omit.omit_class == 3 and omit.bias_shifts == E.BIAS_SHIFTS
    assert len(omit.students) == 4 * 4
    assert {s.hidden for s in omit.students} == {OMIT_WIDTH.full}
    assert omit.student_train.warmup_epochs == 1.0
    control = E.get_experiment("omitted_class_kl_T").profile("full")
    # KL at its lr at the arms' other temperature (4; the file's KL is at 2), every seed, its teacher
    assert [(s.alpha, s.T, s.lr, s.seed, s.teacher) for s in control.students] == [
        (1.0, 4.0, 0.05, seed, [0, 1, 2][seed % 3]) for seed in HYPOTHESIS["seeds"]]
    assert control.omit_class == 3 and {s.hidden for s in control.students} == {OMIT_WIDTH.full}


def test_a_file_defined_experiment_is_resolved_when_asked_for_not_at_import(tmp_path, monkeypatch, capsys):
    from kdlib.cli import main
    from kdlib.lab import experiments as E

    defined = {e.name: e.hypothesis for e in E.EXPERIMENTS.values() if e.hypothesis is not None}
    assert set(defined) >= {"renyi_confirm_tuned", "renyi_adam", "renyi_confirm_poor", "renyi_adam_poor",
                            "renyi_confirm_adam_poor", "omitted_class_tuned", "omitted_class_kl_T"}
    before = dict(E.EXPERIMENTS)
    monkeypatch.setenv("KDLIB_HYPOTHESES_DIR", str(tmp_path))  # a clone before any file is written
    assert E.EXPERIMENTS == before, "the registry does not depend on which files exist"
    for name, file in defined.items():
        e = E.get_experiment(name)  # known, and says what it needs when built
        assert not e.ready
        with pytest.raises(FileNotFoundError, match=f"{file}.json does not exist: write and commit"):
            e.profile("smoke")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"(runs once hypotheses/{defined['renyi_adam']}.json is committed)" in out
    assert {e.name for e in E.experiments_ready()} == set(E.EXPERIMENTS) - set(defined)


def test_a_new_experiment_is_one_declaration(tmp_path, monkeypatch):
    """A throwaway experiment, declared in a few lines (its arms, sizes per scale, data regime and
    training), runs its smoke profile through the one engine and store, with nothing else edited."""
    from kdlib.lab import experiments as E
    from kdlib.lab.config import ARMS
    from kdlib.lab.results import load_results
    from kdlib.lab.run import run_experiment

    throwaway = E.Experiment(
        "throwaway", "two arms at two learning rates, data-poor", E.tuned_students,
        {"arms": E.same(ARMS[:2]), "temperatures": E.same((2.0,)), "lrs": E.same((0.05, 0.1)),
         "seeds": E.same((0,)), "hidden": E.same((8,))},
        regime=E.DataRegime(transfer_size=E.PerScale(300, 3000, 3000), epochs=E.same(2)), training=E.TUNED)
    monkeypatch.setitem(E.EXPERIMENTS, throwaway.name, throwaway)
    p = E.get_experiment("throwaway").profile("smoke")
    assert (p.transfer_size, p.student_train.epochs, p.student_train.warmup_epochs) == (300, 2, 1.0)
    assert len(p.students) == 2 * (1 + 2)  # per learning rate: the student alone and the two arms
    run_experiment("throwaway", "smoke", device="cpu", out=tmp_path, cache_dir=tmp_path, log=lambda m: None)
    res = load_results("throwaway", "smoke", tmp_path)
    assert {r.key for r in res.records} == E.expected_keys("throwaway", "smoke", precisions=("fp32",))
    assert set(res.frame()["arm"]) == {"alone", "KL", "reverse KL"}


def test_run_keys_drop_a_new_fields_default_in_one_place():
    """key_fields is the one rule: fields marked ALWAYS_KEYED are always in a config, fields reaching the
    key elsewhere never, and any other (every field added after the first records) only when it
    differs from its default, so a new option leaves every committed key as it was."""
    from dataclasses import dataclass, field

    from kdlib.lab.config import ALWAYS_KEYED, KEYED_ELSEWHERE, StudentSpec, TrainConfig, key_fields

    @dataclass(frozen=True)
    class Config:
        old: int = field(default=1, metadata=ALWAYS_KEYED)
        via: int = field(default=2, metadata=KEYED_ELSEWHERE)
        new: float = 0.0
        widths: tuple[int, ...] = (3,)

    assert key_fields(Config()) == {"old": 1}
    assert key_fields(Config(new=0.5, via=9, widths=(4, 4))) == {"old": 1, "new": 0.5, "widths": [4, 4]}
    assert set(key_fields(TrainConfig(epochs=3))) == {"epochs", "batch_size", "lr", "optimizer", "momentum",
                                                       "weight_decay", "schedule"}
    assert key_fields(TrainConfig(epochs=3, jitter=2))["jitter"] == 2
    assert set(key_fields(StudentSpec())) == {"alpha", "T", "beta", "seed", "normalize_by_alpha", "label"}
    assert key_fields(StudentSpec(reverse=True))["reverse"] is True


@pytest.mark.parametrize("build, match", [
    (lambda: StudentSpec(T=10**400), "T must be a finite number > 0, got 10000000000000000000..."),
    (lambda: StudentSpec(lr=10**400), "lr must be a finite number > 0 or None"),
    (lambda: StudentSpec(alpha=10**400), r"alpha must be in \(0, inf\]"),
    (lambda: StudentSpec(beta=True), r"beta must be in \[0, 1\]"),
    (lambda: TrainConfig(epochs=1, lr=10**400), "need lr > 0"),
    (lambda: TrainConfig(epochs=1, weight_decay=10**400), "need lr > 0"),
])
def test_a_number_beyond_floats_range_is_a_value_error_not_an_overflow(build, match):
    with pytest.raises(ValueError, match=match) as info:
        build()
    assert len(str(info.value)) < 200


def test_the_order_infinity_is_still_accepted():
    assert StudentSpec(alpha=math.inf).alpha == math.inf and StudentSpec(alpha=4).alpha == 4


def test_a_new_data_field_of_a_profile_keeps_every_key_at_its_default():
    """The data part of a run's config follows the same rule: a data field added later (here a seed that
    resamples the transfer set) leaves every key as it was at its default and changes it otherwise."""
    from dataclasses import dataclass, field, replace

    from kdlib.lab.profile import Profile, data_config
    from kdlib.lab.store import run_key

    @dataclass(frozen=True)
    class WithSubsets(Profile):
        transfer_seed: int | None = field(default=None, metadata={"data": "student"})

    p = get_experiment("renyi_grid").profile("smoke")
    q = WithSubsets(**{f: getattr(p, f) for f in p.__dataclass_fields__})
    s = p.students[1]
    assert student_config("x", "smoke", q, s, "t") == student_config("x", "smoke", p, s, "t")
    assert teacher_config(q) == teacher_config(p)
    resampled = replace(q, transfer_seed=3)
    assert data_config(resampled, "student")["transfer_seed"] == 3
    assert "transfer_seed" not in data_config(resampled, "teacher")
    keyed = run_key(student_config("x", "smoke", resampled, s, "t"))
    assert keyed != run_key(student_config("x", "smoke", p, s, "t"))
    assert data_config(p, "teacher") == {"dataset": p.dataset, "split_seed": 0, "val_fraction": 0.1,
                                         "val_size": p.val_size, "train_size": p.teacher_train_size}
