"""A run killed with SIGKILL at random moments loses only the students in flight, and resumes.

A child process runs a tiny experiment (digits, 12 students one at a time, so records are
written throughout the run). It is killed at random moments: once during start-up, then
after a random number of further records plus a random fraction of a student's training.
After each kill the results file must load (a torn last line is dropped), hold only
complete records, keep every record that existed before, and repeat no key. A final
uninterrupted run must complete the set, every expected run exactly once, and a rerun
must find nothing left to do.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from kdlib.lab.profile import student_config, teacher_config
from kdlib.lab.run import run_experiment
from kdlib.lab.store import ResultsStore, run_key

PROFILE = textwrap.dedent('''
    import math
    from kdlib.lab.config import StudentSpec, TrainConfig
    from kdlib.lab.profile import Profile

    students = tuple(StudentSpec(alpha=a, T=T, beta=0.9, seed=s, hidden=(8,))
                     for s in (0, 1) for a in (0.5, 1.0, math.inf) for T in (2.0, 8.0))
    profile = Profile("digits", {"kind": "mlp", "hidden": [32]}, TrainConfig(epochs=1, batch_size=64),
                      TrainConfig(epochs=2, batch_size=32), students, max_group=1, threads=1)
''')
CHILD = PROFILE + textwrap.dedent('''
    import sys
    from kdlib.lab.run import run_experiment
    run_experiment("renyi_grid", "killtest", device="cpu", out=sys.argv[1], cache_dir=sys.argv[1],
                   profile_override=profile, log=lambda m: None)
''')


def start(script: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(out)], env={**os.environ, "TQDM_DISABLE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_at_random_times_loses_only_students_in_flight(tmp_path):
    scope: dict = {}
    exec(PROFILE, scope)
    profile = scope["profile"]
    tkey = run_key(teacher_config(profile))
    expected = {tkey} | {run_key(student_config("renyi_grid", "killtest", profile, s, tkey))
                         for s in profile.students}
    assert len(expected) == 13  # the teacher and 12 students

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out"
    store = ResultsStore(out / "renyi_grid" / "killtest.jsonl")
    rng = random.Random(20240131)
    seen: set[str] = set()
    counts = []
    for round_ in range(3):
        proc = start(script, out)
        if round_ == 0:
            time.sleep(rng.uniform(0.2, 1.0))  # during start-up
        else:
            target = len(seen) + rng.randint(1, 4)
            while lines(store.path) < target and proc.poll() is None:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next group
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        records = store.load()  # repairs a torn last line if the kill left one
        keys = [r["key"] for r in records]
        assert len(keys) == len(set(keys)), "a finished run was written twice"
        assert set(keys) <= expected
        assert seen <= set(keys), "a finished run was lost"
        assert all({"config", "metrics", "provenance"} <= r.keys() for r in records)
        seen = set(keys)
        counts.append(len(seen))
    assert 0 < counts[-1] < len(expected), f"the kills did not land inside the run: {counts}"

    proc = start(script, out)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    keys = [r["key"] for r in store.load()]
    assert sorted(keys) == sorted(expected), "the resumed run did not finish exactly the missing runs"
    size = store.path.stat().st_size
    run_experiment("renyi_grid", "killtest", device="cpu", out=out, cache_dir=out, profile_override=profile,
                   log=lambda m: None)
    assert store.path.stat().st_size == size  # nothing left to do, nothing written


def test_a_damaged_teacher_cache_gives_the_same_teacher_and_students(tmp_path):
    """Damaged cache files make the run retrain the teacher from its seed, never from cached weights."""
    scope: dict = {}
    exec(PROFILE, scope)
    profile = scope["profile"]
    kw = {"device": "cpu", "profile_override": profile, "log": lambda m: None}
    clean = run_experiment("renyi_grid", "killtest", out=tmp_path / "a", cache_dir=tmp_path / "cache", **kw)
    tkey = run_key(teacher_config(profile))
    cache_files = sorted((tmp_path / "cache" / "teachers").glob(f"{tkey}*"))
    logits = tmp_path / "cache" / "teachers" / f"{tkey}.logits.pt"
    logits.write_bytes(logits.read_bytes()[:-50])  # torn: the weights beside it are intact
    again = run_experiment("renyi_grid", "killtest", out=tmp_path / "b", cache_dir=tmp_path / "cache", **kw)

    def metrics(path):
        return {r["key"]: (r["metrics"]["test_accuracy"], r["metrics"]["final_train_loss"])
                for r in ResultsStore(path).load()}

    assert metrics(again) == metrics(clean) and len(metrics(clean)) == 13
    assert (tmp_path / "cache" / "teachers" / f"{tkey}.logits.pt.damaged").exists() and len(cache_files) >= 3
