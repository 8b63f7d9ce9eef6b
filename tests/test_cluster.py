"""``submit`` checks everything its jobs are given before it creates a directory or submits a job.

A ``--threads``, ``--device`` or ``--precision`` that only the job itself checked made the teacher
job fail after submission (on Slurm the dependent array stayed held); a bad ``--cpus-per-task``
was refused only after the logs directory was made. Here submitit's executor is replaced by one
that fails the test when it is made, so nothing can be submitted.
"""

from __future__ import annotations

import pytest

import kdlib.lab.cluster as cluster
from kdlib.cli import main
from kdlib.lab.cluster import Resources, submit

NAME, PROFILE = "hinton", "smoke"


class Submitted(Exception):
    """Raised by the stand-in executor: the arguments got past every check."""


@pytest.fixture
def no_executor(monkeypatch):
    def executor(*args, **kwargs):
        raise Submitted

    monkeypatch.setattr(cluster.submitit, "AutoExecutor", executor)
    monkeypatch.setattr(cluster.shutil, "which", lambda name: f"/usr/bin/{name}")  # "sbatch is here"
    monkeypatch.delenv("KDLIB_THREADS", raising=False)


@pytest.mark.parametrize("extra, message", [
    (["--threads", "0"], "--threads must be an integer >= 1 and <= 1024, got 0"),
    (["--threads", "99999999999999999999"], "--threads must be an integer >= 1 and <= 1024"),
    (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    (["--device", "mps"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
    (["--device", "cuda"], "--device cuda needs GPUs in each job, but the jobs ask for none"),
    (["--device", "cuda:1", "--gpus-per-task", "1", "--cluster", "slurm"], "each job sees its 1 GPU(s)"),
    (["--device", "cuda", "--cluster", "slurm"], "--device cuda needs GPUs in each job"),
    (["--gpus-per-task", "99999999999999999999"], "the local jobs run on this machine, which has"),
    (["--cpus-per-task", "0"], "--cpus-per-task must be an integer >= 1, got 0"),
    (["--gpus-per-task", "-1"], "--gpus-per-task must be an integer >= 0, got -1"),
    (["--array-parallelism", "0"], "--array-parallelism must be an integer >= 1, got 0"),
    (["--partition", ""], "--partition must name a partition"),
])
def test_bad_job_arguments_are_refused_before_anything_is_created_or_submitted(tmp_path, capsys, no_executor,
                                                                              extra, message):
    out, logs, cache = tmp_path / "out", tmp_path / "logs", tmp_path / "cache"
    argv = ["submit", NAME, "--profile", PROFILE, "--shards", "2", "--cluster", "local", "--out", str(out),
            "--logs", str(logs), "--cache", str(cache), *extra]
    assert main(argv) == 2  # a Submitted exception here would mean a job was submitted
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("kdlib: error: ") and message in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_kdlib_threads_the_jobs_would_read_is_checked_before_submitting(tmp_path, no_executor, monkeypatch):
    monkeypatch.setenv("KDLIB_THREADS", "0")
    with pytest.raises(ValueError, match="KDLIB_THREADS must be an integer >= 1"):
        submit(NAME, "cpu", 1, cluster="local", out=tmp_path / "out", cache=tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cluster_, device, resources", [
    ("local", "auto", Resources()),
    ("local", "cpu", Resources(cpus_per_task=1)),
    ("slurm", "cuda", Resources(gpus_per_task=1)),  # no GPU here: the jobs run on the cluster's nodes
    ("slurm", "cuda:1", Resources(gpus_per_task=2)),
    ("slurm", "cuda", Resources(slurm_options={"gres": "gpu:a100:1"})),
    ("slurm", "cuda", Resources(slurm_options={"gpus_per_node": "1"})),
])
def test_good_job_arguments_reach_the_executor(tmp_path, no_executor, cluster_, device, resources):
    with pytest.raises(Submitted):
        submit(NAME, PROFILE, 2, cluster=cluster_, out=tmp_path / "out", cache=tmp_path / "cache",
               resources=resources, device=device, threads=2, precision="fp32")


@pytest.mark.parametrize("kwargs, message", [
    ({"time_min": 0}, r"--time \(in minutes\) must be an integer >= 1"),
    ({"cpus_per_task": 2.5}, "--cpus-per-task must be an integer >= 1, got 2.5"),
    ({"gpus_per_task": True}, "--gpus-per-task must be an integer >= 0, got True"),
    ({"slurm_options": {"account": 1}}, "--slurm-option must be KEY=VALUE strings"),
])
def test_resources_refuse_bad_values_when_made(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Resources(**kwargs)
