"""kdlib.lab.store: strict JSON with alpha = inf, atomic appends, torn-line repair.

The summaries of the records are tested in test_report.py.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import socket
import subprocess

import pytest

import kdlib.lab.provenance as P
import kdlib.lab.store as R


def record(key: str, alpha: float = 1.0, acc: float = 0.9, seed: int = 0, **cfg) -> dict:
    return {"schema": 1, "key": key, "kind": "student",
            "config": {"alpha": alpha, "T": 4.0, "beta": 0.9, "seed": seed, "label": "distilled",
                       "model": {"kind": "mlp", "hidden": [30, 30]}, "normalize_by_alpha": False, **cfg},
            "metrics": {"test_accuracy": acc}, "provenance": {}}


def test_alpha_inf_round_trips_through_strict_json(tmp_path):
    assert R.encode_float(math.inf) == "inf" and R.encode_float(-math.inf) == "-inf"
    assert R.encode_float(math.nan) == "nan" and R.encode_float(0.5) == 0.5
    assert R.decode_float("inf") == math.inf and math.isnan(R.decode_float("nan"))
    with pytest.raises(ValueError, match="inf"):
        R.decode_float("infinity")
    line = R.dumps(record("a", alpha=math.inf))
    assert '"alpha":"inf"' in line and "Infinity" not in line
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    store = R.ResultsStore(tmp_path / "r.jsonl")
    store.append(record("a", alpha=math.inf))
    assert R.load_records(store.path)[0]["config"]["alpha"] == math.inf


def test_run_key_is_canonical_and_sensitive():
    a = {"alpha": 1.0, "T": 4.0, "model": {"hidden": [30, 30], "kind": "mlp"}}
    b = {"model": {"kind": "mlp", "hidden": [30, 30]}, "T": 4.0, "alpha": 1.0}
    assert R.run_key(a) == R.run_key(b) and len(R.run_key(a)) == 16
    assert R.run_key(a) != R.run_key({**a, "T": 2.0})


def test_append_and_load(tmp_path):
    store = R.ResultsStore(tmp_path / "deep" / "dir" / "r.jsonl")
    assert store.load() == [] and not store.path.exists()  # nothing created by reading
    for i in range(3):
        store.append(record(f"k{i}"))
    assert [r["key"] for r in store.load()] == ["k0", "k1", "k2"] and store.keys() == {"k0", "k1", "k2"}
    assert store.path.read_bytes().count(b"\n") == 3
    with pytest.raises(ValueError, match="key"):
        store.append({"config": {}})


def test_torn_last_line_is_tolerated_and_repaired(tmp_path):
    store = R.ResultsStore(tmp_path / "r.jsonl")
    store.append(record("k0"))
    store.append(record("k1"))
    whole = store.path.read_bytes()
    torn = R.dumps(record("k2")).encode()[:37]  # a write cut short by a crash
    store.path.write_bytes(whole + torn)
    assert [r["key"] for r in R.load_records(store.path)] == ["k0", "k1"]
    assert store.path.read_bytes() == whole + torn  # load_records never writes
    assert [r["key"] for r in store.load()] == ["k0", "k1"]
    assert store.path.read_bytes() == whole  # load() repaired it
    store.path.write_bytes(whole + torn)
    store.append(record("k3"))  # append repairs first, so the new line is not glued to the torn one
    assert [r["key"] for r in store.load()] == ["k0", "k1", "k3"]


def test_damaged_middle_line_or_directory_is_an_error(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text(R.dumps(record("k0")) + "\n{not json\n" + R.dumps(record("k1")) + "\n")
    with pytest.raises(R.ResultsFileError, match="line 2"):
        R.ResultsStore(p).load()
    p.write_text('{"no": "key"}\n')
    with pytest.raises(R.ResultsFileError, match="line 1: not a result record"):
        R.ResultsStore(p).load()
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(R.ResultsFileError, match="cannot read"):
        R.ResultsStore(tmp_path / "d.jsonl").load()
    with pytest.raises(R.ResultsFileError, match="no results file"):
        R.load_records(tmp_path / "missing.jsonl")


def _writer(path: str, who: int, n: int) -> None:
    store = R.ResultsStore(path)
    for i in range(n):
        store.append(record(f"w{who}-{i}", acc=i / n, padding="x" * 5000))


def test_concurrent_writers_never_interleave(tmp_path):
    path = str(tmp_path / "r.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    keys = [r["key"] for r in R.ResultsStore(path).load()]
    assert sorted(keys) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))


def test_a_hypothesis_file_is_checked_against_the_commits_the_records_ran_from(tmp_path):
    from kdlib.lab.prereg import check_hypothesis_preceded, hypothesis_preceded

    repo = tmp_path / "repo"
    (repo / "hypotheses").mkdir(parents=True)

    def commit(message):
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True, capture_output=True)
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", message],
                       cwd=repo, check=True, capture_output=True)
        return P.git_state(repo)["commit"]

    subprocess.run(["git", "init", "-q"], cwd=repo, check=True, capture_output=True)
    (repo / "code.py").write_text("x = 1\n")
    before = commit("code")  # a run from here would not have had the hypotheses
    h = repo / "hypotheses" / "h.json"
    h.write_text('{"arms": 1}')
    written = commit("hypotheses")
    (repo / "code.py").write_text("x = 2\n")
    later = commit("more code")
    assert P.file_at_commit(h, written) == b'{"arms": 1}' and P.file_at_commit(h, before) is None
    with pytest.raises(LookupError, match="cannot read commit"):
        P.file_at_commit(h, "0" * 40)
    def ran(provenance: dict) -> dict:
        return R.make_record("student", "k", {"alpha": 1.0, "T": 2.0, "beta": 0.9, "seed": 0},
                             {"test_accuracy": 0.5}, provenance)

    records = [ran({"git_commit": c}) for c in (written, later, written)]
    assert hypothesis_preceded(records, h) == {written: True, later: True}
    unknown = [ran({"git_commit": "f" * 40}), ran({})]
    assert hypothesis_preceded([*records, *unknown], h) == {written: True, later: True, "f" * 40: None,
                                                            "?": None}
    assert hypothesis_preceded([ran({"git_commit": before})], h) == {before: False}
    assert check_hypothesis_preceded(records, h).endswith("started from (2 commits)")
    assert check_hypothesis_preceded(records[:1], h).endswith("started from (1 commit)")  # one, singular
    partly = check_hypothesis_preceded([*records, *unknown], h)
    assert partly.endswith("(2 commits; some are not in this clone's history)")
    with pytest.raises(ValueError, match=f"without h.json as committed now: {before[:10]}"):
        check_hypothesis_preceded([*records, ran({"git_commit": before})], h)
    h.write_text('{"arms": 2}')  # edited after the runs: no commit held this version
    assert hypothesis_preceded(records, h) == {written: False, later: False}


def test_git_state_and_environment(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert P.git_state(plain) == {"commit": None, "dirty": None}
    tmp_path = tmp_path / "repo"
    tmp_path.mkdir()

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    state = P.git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False
    (tmp_path / "untracked.txt").write_text("b")
    assert P.git_state(tmp_path)["dirty"] is False
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "x.jsonl").write_text("{}\n")
    git("add", "results/x.jsonl")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "r")
    (tmp_path / "results" / "x.jsonl").write_text("{}\n{}\n")  # a run appending its records
    assert P.git_state(tmp_path)["dirty"] is False
    assert P.git_state(tmp_path / "results")["dirty"] is False  # from any directory of the repository
    (tmp_path / "f.txt").write_text("changed")
    assert P.git_state(tmp_path)["dirty"] is True
    assert P.git_state(tmp_path / "results")["dirty"] is True
    env = P.environment("cpu")
    assert env["device"] == "cpu" and env["torch"] and env["python"].count(".") == 2
    assert socket.gethostname() not in json.dumps(env) and os.getcwd() not in json.dumps(env)
    assert P.utc_now().endswith("Z") and len(P.utc_now()) == 20


def test_append_never_duplicates_a_key(tmp_path):
    store = R.ResultsStore(tmp_path / "r.jsonl")
    assert store.append(record("abc", padding='"key":"zzz"'))  # an escaped look-alike in a value
    assert store.append(record("zzz", teacher_key="abc"))  # "teacher_key" is not "key"
    assert not store.append(record("abc", acc=0.1))
    assert [r["key"] for r in store.load()] == ["abc", "zzz"]


def test_run_lock_refuses_a_second_writer(tmp_path):
    target = tmp_path / "out" / "x.jsonl"
    with R.run_lock(target):
        with pytest.raises(R.RunInProgressError, match="another kdlib run"):
            with R.run_lock(tmp_path / "out" / ".." / "out" / "x.jsonl"):
                pass
        with R.run_lock(tmp_path / "out" / "y.jsonl"):
            pass  # another file is free
    with R.run_lock(target):
        pass  # released
    assert not target.parent.exists()  # a run that wrote nothing leaves nothing behind
    with R.run_lock(target):
        R.ResultsStore(target).append(record("k"))
    assert sorted(p.name for p in target.parent.iterdir()) == [".x.jsonl.lock", "x.jsonl"]


@pytest.mark.parametrize("broken,problem", [
    ({"metrics": {}}, "metrics.test_accuracy missing"),
    ({"config": None}, "field 'config' missing"),
    ({"kind": "ghost"}, "kind must be"),
    ({"schema": "1"}, "field 'schema'"),
])
def test_a_record_lacking_a_field_is_refused_not_taken_as_done(tmp_path, broken, problem):
    p = tmp_path / "r.jsonl"
    p.write_text(R.dumps(record("k0")) + "\n" + R.dumps({**record("k1"), **broken}) + "\n")
    with pytest.raises(R.ResultsFileError, match=f"line 2: not a result record .*{problem}"):
        R.ResultsStore(p).keys()


def test_duplicated_lines_count_once(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path, keys in ((a, ["k0", "k1"]), (b, ["k1", "k2"])):
        for k in keys:
            R.ResultsStore(path).append(record(k, acc=0.5 if path == b else 0.9))
    merged = tmp_path / "m.jsonl"
    merged.write_bytes(a.read_bytes() + b.read_bytes() + a.read_bytes())  # cat a b a
    got = R.load_records(merged)
    assert [r["key"] for r in got] == ["k0", "k1", "k2"]
    assert got[1]["metrics"]["test_accuracy"] == 0.9  # the first record of a key wins


def read_only(monkeypatch, path):
    """Make ``path`` read-only for this process, also for root (who ignores the mode bits)."""
    real_open, real_access = os.open, os.access
    writes = os.O_WRONLY | os.O_RDWR | os.O_APPEND

    def fake_open(p, flags, *a, **kw):
        if str(p) == str(path) and flags & writes:
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, flags, *a, **kw)

    monkeypatch.setattr(R.os, "open", fake_open)
    monkeypatch.setattr(R.os, "access", lambda p, m: False if str(p) == str(path) and m & os.W_OK
                        else real_access(p, m))


def test_read_only_results_file_reads_and_refuses_writes_clearly(tmp_path, monkeypatch):
    store = R.ResultsStore(tmp_path / "r.jsonl")
    store.append(record("k0"))
    read_only(monkeypatch, store.path)
    assert store.keys() == {"k0"}
    with pytest.raises(R.ResultsFileError, match="cannot write results file .*Permission denied"):
        store.append(record("k1"))
    with pytest.raises(R.ResultsFileError, match="cannot write results file"):
        store.check_writable()


def test_a_full_disk_leaves_no_partial_line_and_says_so(tmp_path, monkeypatch):
    store = R.ResultsStore(tmp_path / "r.jsonl")
    store.append(record("k0"))
    before = store.path.read_bytes()
    real_write = os.write

    def write_half_then_fail(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(R.os, "write", write_half_then_fail)
    with pytest.raises(R.ResultsFileError, match="No space left on device; the records already in it"):
        store.append(record("k1"))
    monkeypatch.undo()
    assert store.path.read_bytes() == before and store.keys() == {"k0"}


def test_check_writable_refuses_a_path_below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(R.ResultsFileError, match="cannot write results file"):
        R.ResultsStore(tmp_path / "f" / "exp" / "cpu.jsonl").check_writable()
    monkey_free = R.ResultsStore(tmp_path / "ok" / "cpu.jsonl")
    monkey_free.check_writable()
    with pytest.raises(R.ResultsFileError, match="MiB free"):
        monkey_free.check_writable(min_free=1 << 62)



def test_merge_writes_through_a_symlinked_results_file(tmp_path):
    """The link stays a link and its target gets the shard records (replacing the link lost them)."""
    target = tmp_path / "elsewhere" / "cpu.jsonl"
    R.ResultsStore(target).append(record("k0"))
    target.chmod(0o640)
    link = R.results_path(tmp_path / "out", "exp", "cpu")
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    R.ResultsStore(R.results_path(tmp_path / "out", "exp", "cpu", R.Shard(0, 2))).append(record("k1"))
    R.ResultsStore(R.results_path(tmp_path / "out", "exp", "cpu", R.Shard(1, 2))).append(record("k2"))
    added, removed = R.merge_shard_files(link)
    assert added == 2 and len(removed) == 2
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [r["key"] for r in R.load_records(target)] == ["k0", "k1", "k2"]
    assert target.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in target.parent.iterdir()) == ["cpu.jsonl"]  # no temporary left


def test_atomic_write_through_a_symlink_replaces_the_target_and_refuses_a_dangling_one(tmp_path):
    target, link = tmp_path / "t" / "f.json", tmp_path / "f.json"
    R.atomic_write(target, b"old")
    link.symlink_to(target)
    R.atomic_write(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    target.unlink()
    with pytest.raises(FileNotFoundError, match="a symbolic link to .*which does not exist"):
        R.atomic_write(link, b"newer")
    assert link.is_symlink() and not target.exists()


def test_a_dangling_symlink_as_results_file_is_refused_before_any_work(tmp_path):
    link = R.results_path(tmp_path, "exp", "cpu")
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "gone" / "cpu.jsonl")
    with pytest.raises(R.ResultsFileError, match="symbolic link to .*which does not exist"):
        R.ResultsStore(link).check_writable()
    R.ResultsStore(R.results_path(tmp_path, "exp", "cpu", R.Shard(0, 2))).append(record("k1"))
    with pytest.raises(R.ResultsFileError, match="which does not exist; the shard files are kept"):
        R.merge_shard_files(link)
    assert link.is_symlink() and R.shard_files(link)


def test_a_run_into_a_dangling_symlink_stops_before_its_teacher(tmp_path, capsys):
    from kdlib.cli import main

    out, cache = tmp_path / "out", tmp_path / "cache"
    link = R.results_path(out, "hinton", "smoke")
    link.parent.mkdir(parents=True)
    link.symlink_to(tmp_path / "gone" / "smoke.jsonl")
    assert main(["run", "hinton", "--profile", "smoke", "--device", "cpu", "--out", str(out),
                 "--cache", str(cache)]) == 2
    assert "which does not exist" in capsys.readouterr().err
    assert not list(cache.rglob("*.pt"))  # no teacher was trained


def _student_line(**change) -> bytes:
    rec = {"schema": 1, "key": "k", "kind": "student",
           "config": {"alpha": 1.0, "T": 2.0, "beta": 0.9, "seed": 0},
           "metrics": {"test_accuracy": 0.5}, "provenance": {}}
    for path, value in change.items():
        *parents, last = path.split("__")
        node = rec
        for p in parents:
            node = node[p]
        node[last] = value
    return json.dumps(rec).encode()


@pytest.mark.parametrize("line, problem", [
    (_student_line(schema=99), "schema must be 1"),
    (_student_line(schema=True), "field 'schema' missing or not a int"),
    (_student_line(metrics__test_accuracy=float("nan")), "metrics.test_accuracy must be a number in"),
    (_student_line(metrics__test_accuracy=float("inf")), "metrics.test_accuracy must be a number in"),
    (_student_line(metrics__test_accuracy=True), "metrics.test_accuracy must be a number in"),
    (_student_line(metrics__test_accuracy=7.5), "metrics.test_accuracy must be a number in"),
    (_student_line(metrics__test_accuracy="0.5"), "metrics.test_accuracy must be a number in"),
    (_student_line(metrics__teacher_agreement=2.0), "metrics.teacher_agreement must be a number in"),
    (_student_line(config__alpha="abc"), "config.alpha must be a number or 'inf'"),
    (_student_line(config__seed=1.5), "config.seed must be an integer"),
    (_student_line(config__dtype="float16"), "config.dtype must be one of"),
    (_student_line(key=""), "key is empty"),
    (b"[" * 100_000 + b"]" * 100_000, "not a JSON record (RecursionError"),
    (b"null", "not a JSON object"),
])
def test_a_record_is_checked_in_full_on_reading(tmp_path, capsys, line, problem):
    """A record that breaks the schema is refused with the file, the line and what is wrong, by every
    reader (the store, `report`, `run`): never a traceback, never a NaN row that a table then drops."""
    from kdlib.cli import main

    path = tmp_path / "hinton" / "smoke.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(line + b"\n")
    with pytest.raises(R.ResultsFileError, match=re.escape(f"{path}, line 1: ") + ".*" + re.escape(problem)):
        R.load_records(path)
    for argv in (["report", "hinton", "--profile", "smoke"], ["run", "hinton", "--profile", "smoke",
                                                               "--cache", str(tmp_path / "cache")]):
        assert main([*argv, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("kdlib: error:") and problem in err and len(err.splitlines()) == 1
    assert path.read_bytes() == line + b"\n"  # left as it was


def test_every_committed_record_passes_the_full_check():
    from kdlib.lab.records import parse_record

    files = sorted(R.results_root().glob("*/*.jsonl"))
    assert files
    n = 0
    for f in files:
        for i, raw in enumerate(f.read_bytes().splitlines(), start=1):
            if raw.strip():
                parse_record(json.loads(raw), f"{f}:{i}")
                n += 1
    assert n > 1500
