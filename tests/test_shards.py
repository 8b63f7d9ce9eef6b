"""Sharded runs (issue 14): shards, the teacher stage, submit (local and a stand-in Slurm), status, merge.

One unsharded smoke run of ``hinton`` (a teacher and 6 students in two stack groups, the 2x64
and the 2x16 students) is the reference. Against it: the union of its two shards, one of them
killed with SIGKILL mid-group and resumed, equals it key for key and metric for metric; so does
``submit --cluster local --shards 2``; the report over the shard files equals its report, and
``merge`` folds them into the one file. The Slurm path runs against stand-in ``sbatch``/``srun``
scripts that keep the job scripts submitit writes, so what Slurm would be asked is checked.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kdlib.cli import main
from kdlib.lab.cluster import parse_time
from kdlib.lab.config import StudentSpec
from kdlib.lab.experiments import expected_keys, get_experiment
from kdlib.lab.run import run_experiment
from kdlib.lab.shards import plan_shards, shard_profile, stack_groups, student_cost
from kdlib.lab.store import (
    ResultsStore,
    RunInProgressError,
    Shard,
    load_experiment_records,
    load_records,
    merge_shard_files,
    results_path,
    run_lock,
    shard_files,
)
from kdlib.report.tables import report_text

ROOT = Path(__file__).resolve().parents[1]
NAME, PROFILE = "hinton", "smoke"
ENV = {**os.environ, "TQDM_DISABLE": "1"}


def by_key(path: Path) -> dict[str, dict]:
    return {r["key"]: r for r in load_experiment_records(path)}


def assert_same_runs(got: dict[str, dict], want: dict[str, dict]) -> None:
    assert set(got) == set(want)
    for key, rec in want.items():
        assert got[key]["config"] == rec["config"], key
        assert got[key]["metrics"] == rec["metrics"], key  # curves included: same numbers on this machine


def one_error_line(capsys) -> str:
    """The one error line on stderr (a busy-machine warning may stand before it)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("warning: this machine")]
    assert len(lines) == 1 and lines[0].startswith("kdlib: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, cache) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("unsharded")
    path = run_experiment(NAME, PROFILE, device="cpu", out=out, cache_dir=cache, log=lambda m: None)
    records = by_key(path)
    assert len(records) == 7 and set(records) == expected_keys(NAME, PROFILE, precisions=("fp32",))
    return records


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, cache, unsharded) -> dict:
    """Shard 0 killed mid-group by SIGKILL, then both shards run through the command line."""
    out = tmp_path_factory.mktemp("sharded")
    shard0 = results_path(out, NAME, PROFILE, Shard(0, 2))
    proc = subprocess.Popen([sys.executable, "-m", "kdlib", "run", NAME, "--profile", PROFILE,
                             "--shard", "0/2", "--out", str(out), "--cache", str(cache)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (shard0.exists() and shard0.read_bytes().count(b"\n") >= 1) and proc.poll() is None:
        assert time.monotonic() < deadline, "the shard never wrote its teacher record"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # the teacher record is written; the 2x64 group is training
    proc.wait(timeout=30)
    killed = [r["kind"] for r in ResultsStore(shard0).load(repair=False)]
    argv = ["--profile", PROFILE, "--out", str(out), "--cache", str(cache)]
    resumed = [main(["run", NAME, "--shard", s, *argv]) for s in ("0/2", "1/2")]
    return {"out": out, "killed": killed, "rc": resumed}


# ----------------------------------------------------------------------------- the plan

def test_plan_keeps_stack_groups_whole_and_balances_cost():
    specs = [StudentSpec(alpha=a, T=2.0, seed=s, hidden=h) for h in ((800, 800), (30, 30), (100,))
             for s in (0, 1, 2) for a in (0.5, 1.0, 2.0)]
    groups = stack_groups(specs, max_group=2)
    assert sorted(i for g in groups for i in g) == list(range(len(specs)))
    for count in (1, 2, 3, 5, len(groups)):
        plan = plan_shards(specs, 2, count)
        assert plan == plan_shards(specs, 2, count)  # deterministic
        assert sorted(i for part in plan for i in part) == list(range(len(specs)))
        owner = {i: k for k, part in enumerate(plan) for i in part}
        assert all(len({owner[i] for i in g}) == 1 for g in groups)  # a stack group is never split
        loads = [sum(student_cost(specs[i]) for i in part) for part in plan]
        biggest = max(sum(student_cost(specs[i]) for i in g) for g in groups)
        assert max(loads) - min(loads) <= biggest  # within one group of each other
    with pytest.raises(ValueError, match="never split"):
        plan_shards(specs, 2, len(groups) + 1)
    p = get_experiment(NAME).profile(PROFILE)
    parts = [shard_profile(p, Shard(i, 2)).students for i in range(2)]
    assert sorted(map(repr, parts[0] + parts[1])) == sorted(map(repr, p.students))
    assert {s.hidden for s in parts[0]} == {(64, 64)} and {s.hidden for s in parts[1]} == {(16, 16)}


@pytest.mark.parametrize("text, minutes", [("90", 90), ("4:00:00", 240), ("1-12:00:00", 2160),
                                           ("0:30", 1), ("2-0", 2880), ("1:00:01", 61)])
def test_parse_time_reads_slurm_time_limits(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("argv, message", [
    (["run", NAME, "--profile", PROFILE, "--shard", "2/2"], "0 <= I < N"),
    (["run", NAME, "--profile", PROFILE, "--shard", "half"], "I/N"),
    (["run", NAME, "--profile", PROFILE, "--shard", "0/2", "--teachers-only"], "takes no shard"),
    (["run", "renyi_grid", "--profile", PROFILE, "--shard", "0/2"], "1 stack group"),
    (["submit", NAME, "--profile", PROFILE, "--shards", "3", "--cluster", "local"], "between 1 and 2"),
    (["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "local", "--time", "soon"],
     "Slurm time"),
    (["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "local", "--slurm-option", "qos"],
     "KEY=VALUE"),
])
def test_bad_shard_arguments_are_one_line_and_write_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out), "--cache", str(tmp_path / "cache")]) == 2
    assert message in one_error_line(capsys)
    assert not out.exists()


# ----------------------------------------------------------------------------- teachers first

@pytest.mark.slow
def test_a_shard_never_trains_its_teacher_and_the_teacher_stage_fills_the_cache(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = ["--profile", PROFILE, "--out", str(out), "--cache", str(cache)]
    assert main(["run", NAME, "--shard", "1/2", *argv]) == 2
    line = one_error_line(capsys)
    assert "not in the teacher cache" in line and "--teachers-only" in line
    assert not out.exists() and not list(cache.rglob("*.json"))  # nothing trained, nothing written
    assert main(["run", NAME, "--teachers-only", *argv]) == 0
    assert len(list((cache / "teachers").glob("*.json"))) == 1
    assert not out.exists()  # the teacher stage writes the cache only


# ----------------------------------------------------------------------------- shards = one run

@pytest.mark.slow
def test_a_killed_shard_resumes_and_two_shards_equal_the_unsharded_run(sharded, unsharded, capsys):
    assert sharded["killed"] == ["teacher"], "the kill should have hit the first group in training"
    assert sharded["rc"] == [0, 0]
    out = sharded["out"]
    files = shard_files(results_path(out, NAME, PROFILE))
    assert list(files) == [Shard(0, 2), Shard(1, 2)]
    assert not results_path(out, NAME, PROFILE).exists()  # shards write only their own files
    students = [{r["key"] for r in load_records(f, "student")} for f in files.values()]
    assert len(students[0]) == len(students[1]) == 3 and not students[0] & students[1]
    assert_same_runs(by_key(results_path(out, NAME, PROFILE)), unsharded)
    capsys.readouterr()
    assert main(["status", NAME, "--profile", PROFILE, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 of 6 students done, 0 pending" in text
    assert "shard 0/2: 3 of 3 done, complete" in text and "shard 1/2: 3 of 3 done, complete" in text


@pytest.mark.slow
def test_report_over_shard_files_equals_the_unsharded_report_and_merge_folds_them(sharded, unsharded,
                                                                                   tmp_path, capsys):
    out = sharded["out"]
    store = ResultsStore(results_path(tmp_path, NAME, PROFILE))
    for rec in unsharded.values():
        store.append(rec)

    def without_times(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.startswith("commits:")]

    main_path = results_path(out, NAME, PROFILE)
    over_shards = report_text(NAME, main_path)
    assert without_times(over_shards) == without_times(report_text(NAME, store.path))
    capsys.readouterr()
    assert main(["report", NAME, "--profile", PROFILE, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == over_shards

    with run_lock(results_path(out, NAME, PROFILE, Shard(1, 2))):  # a shard job still running
        with pytest.raises(RunInProgressError):
            merge_shard_files(main_path)
    assert len(shard_files(main_path)) == 2 and not main_path.exists()

    assert main(["merge", NAME, "--profile", PROFILE, "--out", str(out)]) == 0
    assert "merged 2 shard files (7 new records) and removed them" in capsys.readouterr().out
    assert not shard_files(main_path)
    assert_same_runs(by_key(main_path), unsharded)
    assert main_path.read_bytes().count(b"\n") == 7  # the teacher record of both shards, once
    assert report_text(NAME, main_path) == over_shards
    assert main(["merge", NAME, "--profile", PROFILE, "--out", str(out)]) == 0
    assert "no shard files to merge" in capsys.readouterr().out


# ----------------------------------------------------------------------------- submit

@pytest.mark.slow
def test_submit_local_equals_the_unsharded_run(tmp_path, cache, unsharded, capsys):
    out = tmp_path / "out"
    argv = ["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "local", "--out", str(out),
            "--cache", str(cache), "--time", "10"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "teacher job " in text and "shard 0/2: job " in text and "shard 1/2: job " in text
    logs = results_path(out, NAME, PROFILE).with_suffix(".logs")
    assert str(logs) in text and list(logs.glob("*_log.out"))
    assert "6 of 6 students done" in text
    assert_same_runs(by_key(results_path(out, NAME, PROFILE)), unsharded)
    assert main(argv) == 0  # submitting again: nothing is missing, nothing is submitted
    assert "nothing submitted" in capsys.readouterr().out


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """``sbatch`` that keeps each job script and answers with job ids 1000, 1001, ...; a no-op ``srun``."""
    bin_, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_.mkdir()
    jobs.mkdir()
    (bin_ / "sbatch").write_text('#!/bin/sh\nn=$(cat "$FAKE_SLURM/next" 2>/dev/null || echo 1000)\n'
                                 'echo $((n + 1)) > "$FAKE_SLURM/next"\ncp "$1" "$FAKE_SLURM/$n.sh"\n'
                                 'echo "Submitted batch job $n"\n')
    (bin_ / "srun").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(jobs))
    return jobs


@pytest.mark.slow
def test_submit_slurm_asks_for_a_teacher_job_then_an_array_that_depends_on_it(tmp_path, fake_slurm, unsharded,
                                                                               capsys):
    def submit(out: Path) -> str:
        assert main(["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "slurm",
                     "--out", str(out), "--cache", str(tmp_path / "cache"), "--partition", "gpu",
                     "--gpus-per-task", "1", "--cpus-per-task", "8", "--time", "1-02:00:00",
                     "--array-parallelism", "4", "--slurm-option", "account=proj"]) == 0
        return capsys.readouterr().out

    out = tmp_path / "out"
    text = submit(out)
    assert "teacher job 1000" in text and "shard jobs: array 1001 of 2, held until afterok:1000" in text
    assert "shard 0/2: job 1001_0" in text and "shard 1/2: job 1001_1" in text
    teacher, array = (fake_slurm / "1000.sh").read_text(), (fake_slurm / "1001.sh").read_text()
    for script in (teacher, array):
        for line in ("--partition=gpu", "--gpus-per-task=1", "--cpus-per-task=8", "--time=1560",
                     "--account=proj"):
            assert f"#SBATCH {line}\n" in script
        assert str(results_path(out, NAME, PROFILE).with_suffix(".logs")) in script
    assert "#SBATCH --dependency=afterok:1000\n" in array and "--dependency" not in teacher
    assert "#SBATCH --array=0-1%2\n" in array and "--array" not in teacher
    pickles = list(results_path(out, NAME, PROFILE).with_suffix(".logs").glob("*submitted.pkl"))
    assert len(pickles) == 3 and all(f.stat().st_size < 2048 for f in pickles)  # strings, not data

    # shard 0 finished earlier: submitting again sends shard 1 alone
    again = tmp_path / "again"
    shard0 = ResultsStore(results_path(again, NAME, PROFILE, Shard(0, 2)))
    p = get_experiment(NAME).profile(PROFILE)
    for key in expected_keys(NAME, PROFILE, shard_profile(p, Shard(0, 2)), ("fp32",)):
        shard0.append(unsharded[key])
    text = submit(again)
    assert "teacher job 1002" in text and "shard jobs: job 1003, held until afterok:1002" in text
    assert "shard 1/2: job 1003" in text and "shard 0/2" not in text
    assert "#SBATCH --dependency=afterok:1002\n" in (fake_slurm / "1003.sh").read_text()


@pytest.mark.slow
def test_a_file_system_without_flock_still_takes_a_shard_run(tmp_path, cache, unsharded, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    store = ResultsStore(results_path(tmp_path, NAME, PROFILE, Shard(1, 2)))
    with run_lock(store.path):
        for rec in unsharded.values():
            assert store.append(rec)
            assert not store.append(rec)
    assert set(by_key(results_path(tmp_path, NAME, PROFILE))) == set(unsharded)


def test_a_job_the_scheduler_refuses_is_one_line(tmp_path, fake_slurm, capsys):
    (fake_slurm.parent / "bin" / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    assert main(["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "slurm",
                 "--partition", "nope", "--out", str(tmp_path / "out"),
                 "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("kdlib: error: the scheduler refused the teacher job: "
                       "sbatch: error: invalid partition specified: nope")


def test_submit_slurm_without_sbatch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "slurm",
                 "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == 2
    assert "sbatch is not on this machine's PATH" in one_error_line(capsys)
