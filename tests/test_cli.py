"""python -m kdlib list | run | report: a smoke run end to end, and every bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from kdlib.cli import main
from kdlib.lab.experiments import EXPERIMENTS, get_experiment
from kdlib.lab.run import run_experiment
from kdlib.lab.store import load_records, results_path, run_key, run_lock


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """``run renyi_grid --profile smoke`` from a fresh directory, without --out."""
    cwd = tmp_path_factory.mktemp("cwd")
    before, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(cwd)
    try:
        rc = main(["run", "renyi_grid", "--profile", "smoke", "--cache", str(cwd / "cache")])
    finally:
        os.chdir(before)
        torch.set_num_threads(threads)
    return rc, cwd


def test_smoke_run_writes_to_scratch_and_resumes(smoke_run, capsys, monkeypatch):
    rc, cwd = smoke_run
    assert rc == 0
    path = cwd / "results" / "_scratch" / "renyi_grid" / "smoke.jsonl"
    records = load_records(path)
    students = [r for r in records if r["kind"] == "student"]
    assert len(students) == len(get_experiment("renyi_grid").profile("smoke").students) == 17
    assert sum(r["kind"] == "teacher" for r in records) == 1
    assert {r["config"]["alpha"] for r in students} == {0.5, 1.0, math.inf}
    first = students[0]
    for field in ("experiment", "profile", "dataset", "model", "alpha", "T", "beta", "seed", "epochs",
                  "normalize_by_alpha", "lr", "batch_size", "teacher_key", "data_info"):
        assert field in first["config"]
    for field in ("test_accuracy", "test_errors", "per_class_accuracy", "final_train_loss", "curves"):
        assert field in first["metrics"]
    assert len(first["metrics"]["curves"]["val_accuracy"]) == first["config"]["epochs"]
    for field in ("git_commit", "git_dirty", "device_name", "torch", "python", "started", "finished",
                  "wall_seconds", "threads", "cpu_isa", "cpu_capability", "precision",
                  "teacher_logits_sha256"):
        assert field in first["provenance"]
    assert first["provenance"]["threads"] == 1 and first["provenance"]["precision"] == "fp32"  # smoke's
    # the students learn: the alone baseline and KL are far above chance on the 10 digits
    best = max(r["metrics"]["test_accuracy"] for r in students)
    assert best > 0.9
    # rerunning finds every run finished and writes nothing
    size = path.stat().st_size
    monkeypatch.chdir(cwd)
    assert main(["run", "renyi_grid", "--profile", "smoke", "--cache", str(cwd / "cache")]) == 0
    assert path.stat().st_size == size
    capsys.readouterr()
    assert main(["report", "renyi_grid", "--out", str(cwd / "results" / "_scratch")]) == 0
    report = capsys.readouterr().out
    assert "renyi_grid / smoke: 17 student runs, 1 teacher(s)" in report
    assert len([ln for ln in report.splitlines() if ln.strip().startswith(("distilled", "alone"))]) == 17
    assert " inf " in report and "± " not in report  # one seed: no spread to show


def test_list(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[0] for ln in lines] == list(EXPERIMENTS)
    assert {"hinton", "renyi_grid", "omitted_class"} <= {ln.split()[0] for ln in lines}
    assert all(len(ln.split("\t")) == 2 and ln.split("\t")[1] for ln in lines)


@pytest.mark.parametrize("argv,message", [
    (["run", "nope", "--profile", "smoke"], "experiment must be one of"),
    (["run", "hinton", "--profile", "huge"], "profile must be one of"),
    (["run", "hinton", "--profile", "smoke", "--threads", "0"], "threads must be an integer >= 1"),
    (["run", "hinton", "--profile", "smoke", "--threads", "9" * 20], "threads must be an integer"),
    (["report", "hinton"], "no results for hinton"),
    (["report", "hinton", "--profile", "huge"], "profile must be one of"),
])
def test_bad_input_fails_cleanly(tmp_path, capsys, argv, message):
    rc = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.startswith("kdlib: error:")
    assert not (tmp_path / "out").exists()


def test_cuda_requested_but_absent(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["run", "hinton", "--profile", "smoke", "--device", "cuda", "--out", str(tmp_path / "out")])
    assert rc == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_dataset(tmp_path, capsys, monkeypatch):
    for var in ("KDLIB_MNIST_DIR", "KDLIB_DOWNLOAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KDLIB_DATA_DIR", str(tmp_path / "empty"))
    rc = main(["run", "hinton_mnist", "--profile", "cpu", "--out", str(tmp_path / "out"),
               "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert rc == 2 and "mnist files not found" in err and "KDLIB_MNIST_DIR" in err
    assert not (tmp_path / "out").exists()


def test_unreadable_results_file_is_left_alone(tmp_path, capsys):
    path = tmp_path / "out" / "hinton" / "smoke.jsonl"
    path.parent.mkdir(parents=True)
    good = json.dumps({"schema": 1, "key": "a", "kind": "student",
                       "config": {"alpha": 1.0, "T": 2.0, "beta": 0.9, "seed": 0},
                       "metrics": {"test_accuracy": 0.5}, "provenance": {}}).encode()
    damaged = good + b"\nthis is not json\n" + good + b"\n"
    path.write_bytes(damaged)
    for argv in (["run", "hinton", "--profile", "smoke"], ["report", "hinton"]):
        assert main([*argv, "--out", str(tmp_path / "out"), *(["--cache", str(tmp_path)] if argv[0] == "run"
                                                                else [])]) == 2
        assert "line 2" in capsys.readouterr().err
        assert path.read_bytes() == damaged


def test_module_entry_point_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "kdlib", "run", "nope", "--profile", "smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().startswith(
        "kdlib: error: experiment must be one of hinton, hinton_budget, hinton_data_poor, renyi_grid")


def test_report_leaves_out_records_of_another_definition(smoke_run, tmp_path, capsys):
    _, cwd = smoke_run
    src = cwd / "results" / "_scratch" / "renyi_grid" / "smoke.jsonl"
    out = tmp_path / "out"
    dst = out / "renyi_grid" / "smoke.jsonl"
    dst.parent.mkdir(parents=True)
    old = json.loads(src.read_text().splitlines()[1])
    old["config"]["epochs"] += 5  # as if the profile had been redefined since
    old["key"] = run_key({k: v for k, v in old["config"].items() if k != "data_info"})
    dst.write_text(src.read_text() + json.dumps(old) + "\n")
    assert main(["report", "renyi_grid", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "17 student runs" in text and "left out: 1 records" in text
    assert main(["report", "renyi_grid", "--out", str(out), "--all"]) == 0
    assert "18 student runs" in capsys.readouterr().out


def test_a_second_run_into_the_same_file_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    with run_lock(results_path(out, "hinton", "smoke")):
        rc = main(["run", "hinton", "--profile", "smoke", "--out", str(out),
                   "--cache", str(tmp_path / "cache")])
    assert rc == 2 and "another kdlib run is writing" in capsys.readouterr().err
    assert not out.exists()


def test_transfer_set_larger_than_the_data_is_refused(tmp_path):
    p = get_experiment("hinton").profile("smoke")
    too_big = dataclasses.replace(p, transfer_size=10**6)
    with pytest.raises(ValueError, match="transfer_size must be in"):
        run_experiment("hinton", "smoke", device="cpu", out=tmp_path / "out", cache_dir=tmp_path,
                       profile_override=too_big, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def one_error_line(capsys) -> str:
    """The one error line on stderr (a busy-machine warning may stand before it)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning: this machine")]
    assert len(lines) == 1 and lines[0].startswith("kdlib: error:"), lines
    return lines[0]


@pytest.mark.parametrize("where,value,message", [
    ("--out", "FILE", "out must be a directory"),
    ("--out", "/dev/null", "out must be a directory"),
    ("--out", "", "out must name a directory, got an empty path"),
    ("--cache", "FILE", "cache must be a directory"),
    ("--cache", "/dev/null", "cache must be a directory"),
    ("--cache", "", "cache must name a directory, got an empty path"),
])
def test_unusable_out_or_cache_is_one_line_and_exit_2(tmp_path, capsys, where, value, message):
    f = tmp_path / "a_file"
    f.write_text("keep me")
    value = str(f) if value == "FILE" else value
    argv = {"--out": str(tmp_path / "out"), "--cache": str(tmp_path / "cache"), where: value}
    rc = main(["run", "hinton", "--profile", "smoke", *(x for kv in argv.items() for x in kv)])
    assert rc == 2 and message in one_error_line(capsys)
    assert f.read_text() == "keep me" and not (tmp_path / "out").exists()


def test_read_only_out_is_refused_before_training_and_fine_when_nothing_is_left(smoke_run, tmp_path, capsys,
                                                                                monkeypatch):
    import kdlib.lab.store as store_module

    _, cwd = smoke_run
    done = cwd / "results" / "_scratch"
    real_open, real_access = os.open, os.access
    writes = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT

    def no_writes(path, flags, *a, **kw):
        if flags & writes:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(store_module.os, "open", no_writes)
    monkeypatch.setattr(store_module.os, "access", lambda p, m: False if m & os.W_OK else real_access(p, m))
    size = (done / "renyi_grid" / "smoke.jsonl").stat().st_size
    # every run is done: reading is all it takes
    argv = ["--out", str(done), "--cache", str(cwd / "cache")]
    assert main(["run", "renyi_grid", "--profile", "smoke", *argv]) == 0
    assert (done / "renyi_grid" / "smoke.jsonl").stat().st_size == size
    # runs remain: refused at once, before any training, in one line
    capsys.readouterr()
    rc = main(["run", "hinton", "--profile", "smoke", *argv])
    assert rc == 2 and "cannot write results file" in one_error_line(capsys)


def test_a_full_disk_while_the_teacher_is_saved_is_one_line(tmp_path, capsys, monkeypatch):
    import kdlib.lab.cache as cache_module
    import kdlib.lab.store as store_module

    def full(path, data):
        raise OSError(28, "No space left on device")

    for module in (store_module, cache_module):  # every atomic write fails
        monkeypatch.setattr(module, "atomic_write", full)
    rc = main(["run", "hinton", "--profile", "smoke", "--out", str(tmp_path / "out"),
               "--cache", str(tmp_path / "cache")])
    assert rc == 2 and "cannot write the teacher cache" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_report_of_a_file_with_every_line_twice_equals_the_report_of_the_file(smoke_run, tmp_path, capsys):
    _, cwd = smoke_run
    src = cwd / "results" / "_scratch" / "renyi_grid" / "smoke.jsonl"
    dst = tmp_path / "out" / "renyi_grid" / "smoke.jsonl"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(src.read_bytes() * 2)  # cat a.jsonl a.jsonl
    capsys.readouterr()
    assert main(["report", "renyi_grid", "--out", str(src.parents[1])]) == 0
    once = capsys.readouterr().out
    assert main(["report", "renyi_grid", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == once and "17 student runs" in once


def test_hypotheses_prints_writes_once_and_never_overwrites(tmp_path, capsys, monkeypatch):
    import kdlib.cli as cli

    class Derived:  # what derive_hypotheses returns: objects whose dumps() is the file's text
        def __init__(self, content: dict) -> None:
            self.content = content

        def dumps(self) -> str:
            return json.dumps(self.content, indent=1) + "\n"

    derived = {"renyi_confirm_tuned": Derived({"arms": [1], "sd": 0.002}),
               "omitted_class_tuned": Derived({"arms": [2]})}
    monkeypatch.setattr(cli, "derive_hypotheses", lambda: derived)
    assert main(["hypotheses", "--dir", str(tmp_path)]) == 0
    assert '"sd": 0.002' in capsys.readouterr().out and not list(tmp_path.iterdir())  # prints only
    assert main(["hypotheses", "--write", "--dir", str(tmp_path)]) == 0
    assert "written; commit it before the runs" in capsys.readouterr().out
    assert json.loads((tmp_path / "renyi_confirm_tuned.json").read_text()) == {"arms": [1], "sd": 0.002}
    assert main(["hypotheses", "--write", "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(": unchanged") == 2
    derived["omitted_class_tuned"] = Derived({"arms": [3]})  # records or rule changed since
    assert main(["hypotheses", "--write", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlib: error:") and "never overwritten" in err and len(err.splitlines()) == 1
    assert json.loads((tmp_path / "omitted_class_tuned.json").read_text()) == {"arms": [2]}
    monkeypatch.setattr(cli, "derive_hypotheses", lambda: (_ for _ in ()).throw(ValueError("not complete")))
    assert main(["hypotheses"]) == 2 and "not complete" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["report", "renyi_grid"], ["list"]])
def test_a_closed_pipe_stops_the_output_quietly(argv):
    """`kdlib report ... | head -1`: the reader goes away, so the next write fails with EPIPE; the
    command stops with status 0 and says nothing (the reader is closed here before the first write,
    which makes the broken pipe certain whatever the output's size)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "kdlib", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


def test_a_shard_given_with_a_minus_sign_names_the_shard_rule(tmp_path, capsys):
    rc = main(["run", "hinton", "--profile", "smoke", "--shard", "-1/2", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("kdlib: error:") and "a shard is I/N" in err and "-1/2" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()


def test_hypotheses_into_a_file_says_dir_must_be_a_directory(tmp_path, capsys, monkeypatch):
    import kdlib.cli as cli

    monkeypatch.setattr(cli, "derive_hypotheses", lambda: {})
    (tmp_path / "file").write_text("x")
    assert main(["hypotheses", "--write", "--dir", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--dir must be a directory" in err and "finished runs" not in err and len(err.splitlines()) == 1


def test_submitit_is_needed_by_submit_only(tmp_path, capsys, monkeypatch):
    """submitit is the optional `cluster` extra: the command line imports it for `submit` alone, and
    says how to install it when it is missing."""
    import subprocess
    import sys

    import kdlib.lab

    probe = "import sys, kdlib.cli; print('submitit' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "kdlib.lab.cluster", raising=False)
    monkeypatch.delattr(kdlib.lab, "cluster", raising=False)
    rc = main(["submit", "hinton", "--profile", "smoke", "--shards", "2", "--cluster", "local",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "submit needs the cluster extra (submitit is not installed)" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    assert main(["list"]) == 0
