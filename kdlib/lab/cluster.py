"""Submitting an experiment as cluster jobs through submitit: the teacher, then an array of shards.

Needs the ``cluster`` extra (``pip install -e '.[cluster]'``, which ``make`` installs): submitit.

:func:`submit` is ``python -m kdlib submit``. It submits two things with submitit
(https://github.com/facebookincubator/submitit), on Slurm or, with ``cluster="local"``, as
processes on this machine (no Slurm, no network: what CI runs):

1. the **teacher job**: ``run_experiment(..., teachers_only=True)`` fills the shared teacher cache;
2. a **job array** over the shards that still have runs to do, each ``run_experiment(...,
   shard=Shard(i, N))`` into its own results file. On Slurm the array depends on the teacher
   job (``--dependency=afterok:<teacher>``); locally it starts when the teacher job has ended
   well, and :func:`submit` waits for it.

Jobs receive strings only (experiment, profile, directories, ``"I/N"``); they rebuild the
profile from its name, so what submitit pickles is a few hundred bytes. A job that times out or
is preempted is requeued by submitit (:class:`Task` is checkpointable) and resumes from its
records; a failed or cancelled job is rerun by submitting again, which runs only what is
missing. The results directory, the teacher cache, the logs and this repository (with its
Python environment) must be on a file system every node sees.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
import torch
from submitit.core.utils import FailedJobError, FailedSubmissionError
from submitit.helpers import Checkpointable

from kdlib.lab.cache import CacheError, TeacherCache
from kdlib.lab.config import PRECISIONS, check_device, check_threads, default_threads
from kdlib.lab.experiments import get_experiment
from kdlib.lab.run import run_experiment
from kdlib.lab.shards import CLUSTERS, ClusterError, experiment_status, plan_shards
from kdlib.lab.store import Shard, results_path


class Task(Checkpointable):
    """What one job runs: the teacher stage (``shard=None``) or one shard, given as strings.

    Checkpointable: on a timeout or a preemption submitit requeues the job with the same
    arguments, and :func:`~kdlib.lab.run.run_experiment` skips the runs it finished.
    """

    def __call__(self, name: str, profile: str, out: str, cache: str, shard: str | None = None,
                 device: str = "auto", threads: int | None = None, precision: str | None = None) -> str:
        """Run the stage; returns the path it wrote (results file, or the teacher's cache record).

        Raises:
            Whatever :func:`~kdlib.lab.run.run_experiment` raises; submitit marks the job failed.
        """
        path = run_experiment(name, profile, device=device, out=out, cache_dir=cache, threads=threads,
                              precision=precision, shard=Shard.parse(shard) if shard else None,
                              teachers_only=shard is None, log=lambda m: print(m, flush=True))
        return str(path)


def parse_time(text: str) -> int:
    """A Slurm time limit (``MM``, ``HH:MM:SS``, ``D-HH:MM``, ``D-HH:MM:SS``, ...) in whole minutes.

    Raises:
        ValueError: not one of Slurm's formats, or not positive.
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if m is None:
        raise ValueError(f"--time must be a Slurm time such as 90, 4:00:00 or 1-12:00:00, got {text!r}")
    days, a, b, c = (int(g) if g else 0 for g in m.groups())
    if m.group(1) is None and m.group(3) is None:  # MM
        minutes = a
    elif m.group(1) is None and m.group(4) is None:  # MM:SS
        minutes = a + (b > 0)
    elif m.group(1) is None:  # HH:MM:SS
        minutes = 60 * a + b + (c > 0)
    else:  # D-HH[:MM[:SS]]
        minutes = 1440 * days + 60 * a + b + (c > 0)
    if minutes < 1:
        raise ValueError(f"--time must be at least one minute, got {text!r}")
    return minutes


@dataclass(frozen=True)
class Resources:
    """What each job asks the scheduler for (the teacher job and every shard alike).

    Attributes:
        partition: Slurm partition (``None``: the cluster's default).
        gpus_per_task: GPUs per job (0: none; ``--device auto`` then uses the CPU).
        cpus_per_task: CPU cores per job (torch uses them all: the cores the job may use).
        time_min: time limit in minutes (:func:`parse_time`).
        array_parallelism: most shards running at once.
        slurm_options: further ``#SBATCH`` options, e.g. ``{"account": "proj", "qos": "high"}``.

    Raises:
        ValueError: a count below its minimum (``gpus_per_task >= 0``, ``cpus_per_task``, ``time_min``
            and ``array_parallelism >= 1``, all integers), an empty ``partition``, or an option whose
            key or value is not a string.
    """

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 2
    time_min: int = 240
    array_parallelism: int = 64
    slurm_options: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:  # checked here, so submit() refuses before it creates or submits
        for name, option, low in (("gpus_per_task", "--gpus-per-task", 0),
                                  ("cpus_per_task", "--cpus-per-task", 1),
                                  ("time_min", "--time (in minutes)", 1),
                                  ("array_parallelism", "--array-parallelism", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{option} must be an integer >= {low}, got {value!r}")
        if self.partition is not None and not (isinstance(self.partition, str) and self.partition.strip()):
            raise ValueError(f"--partition must name a partition (or be left out), got {self.partition!r}")
        if not all(isinstance(k, str) and k and isinstance(v, str) for k, v in self.slurm_options.items()):
            raise ValueError(f"--slurm-option must be KEY=VALUE strings, got {self.slurm_options!r}")

    def requests_gpus(self) -> bool:
        """Whether each job is given GPUs: ``gpus_per_task``, or a Slurm option such as ``gres=gpu:1``."""
        keys = {k.replace("_", "-"): v for k, v in self.slurm_options.items()}
        return bool(self.gpus_per_task or any(k.startswith("gpus") for k in keys)
                    or "gpu" in keys.get("gres", "") or "gpu" in keys.get("tres-per-task", ""))

    def parameters(self, name: str) -> dict[str, Any]:
        """``update_parameters`` keywords of a :class:`submitit.AutoExecutor` (job name ``name``)."""
        params: dict[str, Any] = {"name": name, "timeout_min": self.time_min,
                                  "cpus_per_task": self.cpus_per_task,
                                  "slurm_array_parallelism": self.array_parallelism,
                                  "slurm_additional_parameters": dict(self.slurm_options)}
        if self.gpus_per_task:
            params["slurm_gpus_per_task"] = self.gpus_per_task
            params["local_gpus_per_node"] = self.gpus_per_task
        if self.partition:
            params["slurm_partition"] = self.partition
        return params


@dataclass
class Submission:
    """The jobs :func:`submit` made: the ``teacher`` job, the ``shards`` jobs (one per shard run) and
    the ``logs`` directory (submitit's folder: ``<job id>_<task>_log.out``/``.err`` per job)."""

    teacher: submitit.Job | None
    shards: dict[Shard, submitit.Job]
    logs: Path


def submit(name: str, profile: str, shards: int, *, cluster: str, out: str | os.PathLike,
           cache: str | os.PathLike | None = None, logs: str | os.PathLike | None = None,
           resources: Resources = Resources(), device: str = "auto", threads: int | None = None,
           precision: str | None = None, log: Callable[[str], None] = print) -> Submission:
    """Submit experiment ``name`` at ``profile`` as a teacher job and an array of ``shards`` shard jobs.

    Only shards with runs still to do are submitted (after a preemption or a failure, submitting
    again reruns only what is missing); when none has, nothing is submitted. Directories are
    made absolute, since jobs may start elsewhere. ``logs`` defaults to
    ``<out>/<name>/<profile>.logs``. With ``cluster="local"`` the jobs run on this machine and
    this function returns when they have ended.

    Everything the jobs are given is checked before any directory is made or any job submitted:
    ``threads`` (:func:`~kdlib.lab.config.check_threads`; when ``None``, ``$KDLIB_THREADS``),
    ``precision``, ``device`` (:func:`~kdlib.lab.config.check_device`: torch must know it, and a
    ``cuda`` device needs GPUs in each job, ``resources.gpus_per_task`` or a Slurm ``gres``/``gpus``
    option; it need not be present on this machine unless ``cluster="local"``), the shard count
    and the directories.

    Raises:
        ValueError: unknown cluster, a bad shard count (:func:`~kdlib.lab.shards.plan_shards`), a
            directory that is a file, ``threads`` not in ``[1, MAX_THREADS]``, an unknown
            ``precision`` or ``device``, a ``cuda`` device for jobs given no GPU (or an index beyond
            their GPUs), or (local) more GPUs per job than this machine has.
        kdlib.lab.experiments.UnknownExperimentError: unknown experiment or profile.
        kdlib.lab.cache.CacheError: the cache is not a directory.
        ClusterError: ``cluster="slurm"`` on a machine without ``sbatch``; (local) the teacher job or
            a shard job failed, the message names its log.
    """
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}")
    p = get_experiment(name).profile(profile)
    _check_job_arguments(cluster, resources, device, threads, precision, p.threads)
    plan_shards(p.students, p.max_group, shards)  # refuse a bad count before submitting anything
    out = _absolute_dir(out, "out")
    cache_dir = TeacherCache(_absolute_dir(cache, "cache") if cache is not None else None).root.resolve()
    TeacherCache(cache_dir).check()
    if logs is None:
        logs = results_path(out, name, profile).with_suffix(".logs")
    logs = _absolute_dir(logs, "logs")
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ClusterError("sbatch is not on this machine's PATH: submit from the cluster's login node "
                           "(or use --cluster local)")
    todo = [row.shard for row in experiment_status(name, profile, out, shards, p) if row.pending]
    if not todo:
        log(f"{name}/{profile}: every run of the {shards} shard(s) is done in {out}; nothing submitted")
        return Submission(None, {}, logs)
    logs.mkdir(parents=True, exist_ok=True)
    executor = submitit.AutoExecutor(folder=logs, cluster=cluster)
    executor.update_parameters(**resources.parameters(f"kdlib-{name}-{profile}-teacher"))
    common = {"device": device, "threads": threads, "precision": precision}
    try:
        teacher = executor.submit(Task(), name, profile, str(out), str(cache_dir), None, **common)
    except (FailedJobError, FailedSubmissionError) as e:
        raise ClusterError(f"the scheduler refused the teacher job: {_last(str(e))}") from None
    log(f"teacher job {teacher.job_id}: the teacher of {name}/{profile} into {cache_dir}; "
        f"log {teacher.paths.stdout}")
    if cluster == "local":  # no scheduler to hold the array back: wait here
        _wait([teacher], "the teacher job")
    params = resources.parameters(f"kdlib-{name}-{profile}-shard")
    after = f"afterok:{teacher.job_id}"
    params["slurm_additional_parameters"] = {**params["slurm_additional_parameters"], "dependency": after}
    executor.update_parameters(**params)
    try:
        jobs = executor.map_array(Task(), *zip(*[(name, profile, str(out), str(cache_dir), str(s), device,
                                                  threads, precision) for s in todo], strict=True))
    except (FailedJobError, FailedSubmissionError) as e:
        raise ClusterError(f"the scheduler refused the shard jobs (the teacher job {teacher.job_id} is "
                           f"submitted; cancel it or submit again): {_last(str(e))}") from None
    if cluster == "slurm":
        first = jobs[0].job_id
        what = f"array {first.split('_')[0]} of {len(jobs)}" if len(jobs) > 1 else f"job {first}"
        log(f"shard jobs: {what}, held until {after}; results in {out / name}")
    else:
        log(f"shard jobs: {len(jobs)} processes, started after the teacher job; results in {out / name}")
    for shard, job in zip(todo, jobs, strict=True):
        log(f"  shard {shard}: job {job.job_id}, log {job.paths.stdout}")
    if cluster == "local":
        _wait(jobs, "shard job")
    return Submission(teacher, dict(zip(todo, jobs, strict=True)), logs)


def _check_job_arguments(cluster: str, resources: Resources, device: str, threads: int | None,
                         precision: str | None, profile_threads: int | None) -> None:
    """Refuse, before anything is created or submitted, what would make every job fail when it starts.

    The jobs run elsewhere (Slurm) or with only the GPUs they ask for (local: ``CUDA_VISIBLE_DEVICES``
    lists ``gpus_per_task`` of this machine's GPUs), so a ``cuda`` device is checked against the GPUs
    each job is given rather than against this machine (except locally, where the jobs take this
    machine's GPUs).
    """
    if not isinstance(resources, Resources):
        raise ValueError(f"resources must be a Resources, got {type(resources).__name__}")
    if threads is not None:
        check_threads(threads, "--threads")
    elif profile_threads is None:
        default_threads()  # the jobs read $KDLIB_THREADS (Slurm passes the environment on): check it here
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dev = check_device(device)
    if dev is not None and dev.type == "cuda":
        if not (resources.gpus_per_task if cluster == "local" else resources.requests_gpus()):
            raise ValueError(f"--device {device} needs GPUs in each job, but the jobs ask for none: "
                             "pass --gpus-per-task N (or use --device auto or cpu)")
        if resources.gpus_per_task and (dev.index or 0) >= resources.gpus_per_task:
            raise ValueError(f"--device {device}: each job sees its {resources.gpus_per_task} GPU(s) as "
                             f"cuda:0 to cuda:{resources.gpus_per_task - 1}")
    if cluster == "local" and resources.gpus_per_task > torch.cuda.device_count():
        raise ValueError(f"--gpus-per-task {resources.gpus_per_task}: the local jobs run on this machine, "
                         f"which has {torch.cuda.device_count()} GPU(s)")


def _absolute_dir(path: str | os.PathLike, name: str) -> Path:
    """``path`` made absolute; refuses ``""`` and paths of existing non-directories."""
    if not str(path).strip():
        raise ValueError(f"{name} must name a directory, got an empty path")
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise (CacheError if name == "cache" else ValueError)(
            f"{name} must be a directory, but {path} exists and is not one")
    return path


def _wait(jobs: Sequence[submitit.Job], what: str) -> None:
    """Wait for local ``jobs``; raise :class:`ClusterError` naming the first that failed and its log."""
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception:  # submitit's FailedJobError and UncompletedJobError: the log has the cause
            failed.append(job)
    if failed:
        job = failed[0]
        raise ClusterError(f"{what} {job.job_id} failed ({len(failed)} of {len(jobs)}): "
                             f"{_last_line(job.paths.stderr)} (log {job.paths.stderr})")


def _last_line(path: Path) -> str:
    """The last line of a job's log that names an error (else its last non-empty line)."""
    try:
        return _last(path.read_text(errors="replace"))
    except OSError:
        return "no log"


def _last(text: str) -> str:
    """The last line of ``text`` that names an error (else its last non-empty line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"[\w.]*(Error|Exception|error)\b", ln)]
    return (errors or lines or ["no message"])[-1]

