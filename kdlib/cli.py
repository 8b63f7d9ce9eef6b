"""Command line: ``python -m kdlib list | run | report | submit | status | merge | rerun | hypotheses``.

``list``
    The experiments, one per line: name, then a short description.
``run NAME --profile smoke|cpu|full [--device auto|cpu|cuda] [--out DIR] [--cache DIR]
[--threads N] [--precision fp32|bf16|auto]``
    Runs (or resumes) an experiment; results go to ``DIR/NAME/PROFILE.jsonl`` (default
    ``DIR = results``; the ``smoke`` profile defaults to ``results/_scratch`` so it never
    touches committed results). Teachers are cached in ``--cache`` (default
    ``$KDLIB_CACHE_DIR`` or ``~/.cache/kdlib``). ``--shard I/N`` runs shard I (0-based) of N
    into ``DIR/NAME/PROFILE.shard-I-of-N.jsonl`` and needs its teacher cached by
    ``--teachers-only``, which trains the teacher and nothing else.
``report NAME [--profile P] [--out DIR]``
    Summary tables (mean ± sample std over seeds, n, 95% t-interval) of the results files (an
    experiment's shard files included).
``submit NAME --profile P --shards N --cluster slurm|local [--out --cache --logs] [--partition
--gpus-per-task --cpus-per-task --time --array-parallelism --slurm-option KEY=VALUE]``
    The teacher job, then a job array over the shards with runs to do (:mod:`kdlib.lab.cluster`).
``status NAME --profile P [--out DIR] [--shards N]``
    Done and pending students per shard.
``merge NAME --profile P [--out DIR]``
    Folds the shard files into ``DIR/NAME/PROFILE.jsonl`` (atomically), then removes them.
``rerun KEY [--out DIR] [--cache DIR]``
    Reruns the committed student ``KEY`` (and the students stacked with it) into ``DIR``
    (default ``results/_scratch/rerun``) from its teacher's committed logits, and prints each
    metric of the committed record beside the rerun's (:func:`kdlib.lab.run.rerun_student`).
``hypotheses [--write] [--dir DIR]``
    Derives the confirmatory hypothesis files (``renyi_confirm_tuned``, ``omitted_class_tuned``,
    ``renyi_confirm_poor``) from the complete full-scale explorations by their committed rules
    (:func:`kdlib.lab.experiments.derive_hypotheses`) and prints them; ``--write`` writes them into
    ``DIR`` (default ``hypotheses/``), never over a file that differs (commit them before the runs).

Errors (unknown experiment or profile, a results file that cannot be read or written, an
unusable ``--out`` or ``--cache``, a full disk, a missing dataset, CUDA requested but absent)
print one line on stderr and exit with status 2; finished runs are never lost. So do a shard
whose teacher is not cached and, with ``--cluster local``, a job that failed (its log is named).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlib.lab.cache import TeacherCache
from kdlib.lab.config import PRECISIONS, PROFILES, DeviceUnavailableError
from kdlib.lab.data import DatasetNotFoundError
from kdlib.lab.experiments import (
    EXPERIMENTS,
    Experiment,
    UnknownExperimentError,
    derive_hypotheses,
    get_experiment,
)
from kdlib.lab.prereg import HYPOTHESES, hypotheses_dir
from kdlib.lab.run import rerun_student, run_experiment
from kdlib.lab.shards import CLUSTERS, ClusterError, experiment_status, teacher_keys
from kdlib.lab.store import (
    SCRATCH,
    ResultsFileError,
    RunInProgressError,
    Shard,
    atomic_write,
    experiment_files,
    merge_shard_files,
    results_path,
)
from kdlib.report.tables import report_text


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description="Rényi-distillation experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run or resume an experiment")
    submit_ = sub.add_parser("submit", help="submit an experiment: a teacher job, then a job array of shards")
    status = sub.add_parser("status", help="done and pending runs per shard")
    merge = sub.add_parser("merge", help="fold an experiment's shard files into its one results file")
    for p in (run, submit_, status, merge):
        p.add_argument("name")
        p.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)}")
        p.add_argument("--out", default=None,
                       help="results root (default results/, smoke: results/_scratch/)")
    for p in (run, submit_, status):
        p.add_argument("--cache", default=None, help="teacher cache directory")
    for p in (run, submit_):
        p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
        p.add_argument("--threads", type=int, default=None,
                       help="CPU threads for torch (default: the profile's, smoke 1, else $KDLIB_THREADS or "
                            "the usable cores; recorded in each record)")
        p.add_argument("--precision", default=None, choices=PRECISIONS,
                       help="fp32, bf16 (autocast, fp32 master weights) or auto (bf16 where the hardware has "
                            "native bf16 matmuls); default: the profile's (smoke/cpu fp32, full auto). Part "
                            "of each run's key")
    run.add_argument("--shard", default=None, metavar="I/N",
                     help="run only shard I (0-based) of N, into its own results file; its teacher must be "
                          "cached (--teachers-only)")
    run.add_argument("--teachers-only", action="store_true",
                     help="train the teacher into the cache and nothing else (the stage before the shards)")
    submit_.add_argument("--shards", type=int, required=True, help="number of shards (jobs of the array)")
    submit_.add_argument("--cluster", required=True, choices=CLUSTERS,
                         help="slurm, or local: the same jobs as processes on this machine")
    submit_.add_argument("--logs", default=None, help="job logs (default OUT/NAME/PROFILE.logs/)")
    submit_.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    submit_.add_argument("--gpus-per-task", type=int, default=0, help="GPUs per job (default 0)")
    submit_.add_argument("--cpus-per-task", type=int, default=2, help="CPU cores per job (default 2)")
    submit_.add_argument("--time", default="4:00:00",
                         help="time limit per job, as Slurm writes it (default 4:00:00)")
    submit_.add_argument("--array-parallelism", type=int, default=64,
                         help="most shards running at once (default 64)")
    submit_.add_argument("--slurm-option", action="append", default=[], metavar="KEY=VALUE",
                         help="a further #SBATCH option, e.g. account=myproject (repeatable)")
    status.add_argument("--shards", type=int, default=None,
                        help="the split to show (default: that of the shard files present, else 1)")
    rerun = sub.add_parser("rerun", help="rerun one committed student from its teacher's committed logits")
    rerun.add_argument("key", help="the run key of a student record under results/")
    rerun.add_argument("--out", default=str(Path("results") / SCRATCH / "rerun"),
                       help="where the rerun writes (default results/_scratch/rerun)")
    rerun.add_argument("--cache", default=None, help="teacher cache directory (teachers not committed)")
    hyp = sub.add_parser("hypotheses", help="derive the confirmatory hypothesis files from the exploration")
    hyp.add_argument("--write", action="store_true", help="write them (never over a file that differs)")
    hyp.add_argument("--dir", default=None, help="where (default: hypotheses/ of the repository)")
    report = sub.add_parser("report", help="summary table of an experiment's results")
    report.add_argument("name")
    report.add_argument("--profile", default=None, help="one profile (default: every profile with results)")
    report.add_argument("--out", default="results", help="results root (default results/)")
    report.add_argument("--all", action="store_true",
                        help="include records of earlier definitions of the profile (left out by default)")
    return parser


#: Options whose value may begin with "-" (``--shard -1/2``): argparse would take the value for an
#: option and say "expected one argument"; joined as ``--shard=-1/2`` the value reaches its own check.
_DASHED_VALUES = ("--shard",)


def _join_dashed_values(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _DASHED_VALUES and arg.startswith("-") and arg != "--":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 error, 130 interrupted).

    Output cut short by its reader (``kdlib report ... | head -1``) stops quietly with status 0.
    """
    args = _parser().parse_args(_join_dashed_values(sys.argv[1:] if argv is None else argv))
    try:
        status = _dispatch(args)
        sys.stdout.flush()  # inside the try: a reader that went away is a broken pipe here, not at exit
        return status
    except BrokenPipeError:  # e.g. `report ... | head`: stop quietly (a subclass of OSError: caught first)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (UnknownExperimentError, ResultsFileError, DatasetNotFoundError, DeviceUnavailableError,
            RunInProgressError, LookupError, ClusterError, ValueError) as e:
        print(f"kdlib: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk while the teacher is saved: one line, finished runs are kept
        hint = ("; finished runs are saved, rerun the same command to resume"
                if args.command in ("run", "submit", "merge", "rerun") else "")
        print(f"kdlib: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}{hint}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kdlib: interrupted; finished runs are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    """Carry out the parsed command; errors propagate to :func:`main`."""
    if args.command == "list":
        for exp in EXPERIMENTS.values():
            note = "" if exp.ready else f" (runs once {HYPOTHESES}/{exp.hypothesis}.json is committed)"
            print(f"{exp.name}\t{exp.description}{note}")
        return 0
    if args.command == "rerun":
        return _rerun(args.key, args.out, args.cache)
    if args.command == "hypotheses":
        return _hypotheses(args.write, args.dir)
    exp = get_experiment(args.name)
    if args.command == "report":
        return _report(exp, args.profile, args.out, args.all)
    exp.profile(args.profile)  # validate before touching anything
    default_out = Path("results") / SCRATCH if args.profile == "smoke" else Path("results")
    out = args.out if args.out is not None else default_out
    if args.command == "run":
        shard = Shard.parse(args.shard) if args.shard is not None else None
        path = run_experiment(exp.name, args.profile, device=args.device, out=out, cache_dir=args.cache,
                              threads=args.threads, precision=args.precision, shard=shard,
                              teachers_only=args.teachers_only,
                              log=lambda msg: print(msg, file=sys.stderr))
        print(f"{'teacher' if args.teachers_only else 'results'}: {path}")
    elif args.command == "submit":
        Resources, parse_time, submit = _cluster()
        resources = Resources(args.partition, args.gpus_per_task, args.cpus_per_task,
                              parse_time(args.time), args.array_parallelism,
                              dict(_key_value(o) for o in args.slurm_option))
        submit(exp.name, args.profile, args.shards, cluster=args.cluster, out=out, cache=args.cache,
               logs=args.logs, resources=resources, device=args.device, threads=args.threads,
               precision=args.precision)
        if args.cluster == "local":
            _status(exp.name, args.profile, out, args.shards, args.cache)
    elif args.command == "status":
        _status(exp.name, args.profile, out, args.shards, args.cache)
    else:
        target = results_path(out, exp.name, args.profile)
        added, removed = merge_shard_files(target)
        print(f"{target}: merged {len(removed)} shard files ({added} new records) and removed them"
              if removed else f"{target}: no shard files to merge")
        _status(exp.name, args.profile, out, 1)
    return 0


def _cluster() -> tuple[Any, Any, Any]:
    """``Resources``, ``parse_time`` and ``submit`` of :mod:`kdlib.lab.cluster`, imported only for
    ``submit``: it needs submitit, the ``cluster`` extra, which the other commands do without.

    Raises:
        ClusterError: submitit is not installed (the message says how to install it).
    """
    try:
        from kdlib.lab import cluster
    except ModuleNotFoundError as e:
        raise ClusterError(f"submit needs the cluster extra ({e.name} is not installed): "
                           "pip install -e '.[cluster]' (make test and make book install it)") from None
    return cluster.Resources, cluster.parse_time, cluster.submit


def _report(exp: Experiment, profile: str | None, out: str, include_stale: bool) -> int:
    """``report``: the tables of the profile asked for (default: every profile with results files)."""
    if profile:
        exp.profile(profile)
    paths = [results_path(out, exp.name, p) for p in ([profile] if profile else exp.profiles)]
    found = [p for p in paths if experiment_files(p)]
    if not found:
        raise ResultsFileError(f"no results for {exp.name} under {out} "
                               f"(looked for {', '.join(str(p) for p in paths)})")
    print("\n\n".join(report_text(exp.name, p, include_stale) for p in found))
    return 0


def _hypotheses(write: bool, directory: str | None) -> int:
    """``hypotheses``: print the derived hypothesis files; with ``write``, write those not yet there."""
    target = Path(directory) if directory is not None else hypotheses_dir()
    if target.exists() and not target.is_dir():
        raise ValueError(f"--dir must be a directory, but {target} exists and is not one")
    for name, h in derive_hypotheses().items():
        text = h.dumps()
        path = target / f"{name}.json"
        if not write:
            print(f"# {path}\n{text}")
            continue
        if path.exists():
            if path.read_text() != text:
                raise ValueError(f"{path} exists and differs from the derived file; a hypothesis file is "
                                 "never overwritten (if the rule or the records changed, say so in a commit)")
            print(f"{path}: unchanged")
            continue
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(path, text.encode())
        print(f"{path}: written; commit it before the runs")
    return 0


def _key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--slurm-option``; raises ValueError otherwise."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--slurm-option must be KEY=VALUE (e.g. account=myproject), got {text!r}")
    return key.strip(), value.strip()


def _rerun(key: str, out: str, cache: str | None) -> int:
    """Rerun student ``key``; print committed and rerun metrics side by side; 0 if all are equal."""
    before, after = rerun_student(key, out, cache_dir=cache)
    names = [k for k in before["metrics"] if not isinstance(before["metrics"][k], (dict, list))]
    same = True
    for k in names:
        a, b = before["metrics"][k], after["metrics"].get(k)
        same &= a == b
        print(f"{k:32s} committed {a!s:>24}  rerun {b!s:>24}  {'equal' if a == b else 'DIFFERENT'}")
    curves = before["metrics"].get("curves") == after["metrics"].get("curves")
    print(f"{'curves':32s} {'equal' if curves else 'DIFFERENT'}")
    verdict = "the rerun equals the committed record" if same and curves else "the rerun differs"
    print(f"student {key}: {verdict}")
    return 0 if same and curves else 1


def _status(name: str, profile: str, out: str | os.PathLike, shards: int | None,
            cache: str | None | bool = False) -> None:
    """Print done / pending students in all and per shard; whether the teacher is cached unless
    ``cache`` is ``False``."""
    rows = experiment_status(name, profile, out, shards)
    total, done = sum(r.students for r in rows), sum(r.done for r in rows)
    line = f"{name}/{profile}: {done} of {total} students done, {total - done} pending"
    if cache is not False:
        teachers, p = TeacherCache(cache), get_experiment(name).profile(profile)
        cached = sum(any(teachers.paths(k)[2].exists() for k in teacher_keys(p, t)) for t in p.teacher_seeds)
        line += f"; {cached} of {len(p.teacher_seeds)} teacher(s) in the cache {teachers.dir}"
    print(line)
    for r in rows:
        state = "complete" if not r.pending else f"{r.pending} pending"
        where = f"shard {r.shard}" if r.shard.count > 1 else "unsharded"
        print(f"  {where}: {r.done} of {r.students} done, {state}: {r.path}")
