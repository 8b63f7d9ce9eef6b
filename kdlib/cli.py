"""Command line: ``python -m kdlib list | run | report``.

``list``
    The experiments, one per line: name, then a short description.
``run NAME --profile smoke|cpu|full [--device auto|cpu|cuda] [--out DIR] [--cache DIR]``
    Runs (or resumes) an experiment; results go to ``DIR/NAME/PROFILE.jsonl`` (default
    ``DIR = results``; the ``smoke`` profile defaults to ``results/_scratch`` so it never
    touches committed results). Teachers are cached in ``--cache`` (default
    ``$KDLIB_CACHE_DIR`` or ``~/.cache/kdlib``).
``report NAME [--profile P] [--out DIR]``
    Summary tables (mean ± sample std over seeds, n, 95% t-interval) of the results files.

Errors (unknown experiment or profile, unreadable results file, missing dataset, CUDA
requested but absent) print one message on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlib.data import DatasetNotFoundError
from kdlib.engine import DeviceUnavailableError
from kdlib.experiments import (
    EXPERIMENTS,
    PROFILES,
    UnknownExperimentError,
    expected_keys,
    get_experiment,
    results_path,
)
from kdlib.results import ResultsFileError, RunInProgressError, format_table, load_records, summarize

SCRATCH = Path("results") / "_scratch"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdlib", description="Rényi-distillation experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the experiments")
    run = sub.add_parser("run", help="run or resume an experiment")
    run.add_argument("name")
    run.add_argument("--profile", required=True, help=f"one of {', '.join(PROFILES)}")
    run.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda or cuda:N")
    run.add_argument("--out", default=None, help="results root (default results/, smoke: results/_scratch/)")
    run.add_argument("--cache", default=None, help="teacher cache directory")
    run.add_argument("--threads", type=int, default=None,
                     help="CPU threads for torch (default: the profile's, smoke 1, else torch's; "
                          "1 is often faster on a busy machine)")
    report = sub.add_parser("report", help="summary table of an experiment's results")
    report.add_argument("name")
    report.add_argument("--profile", default=None, help="one profile (default: every profile with results)")
    report.add_argument("--out", default="results", help="results root (default results/)")
    report.add_argument("--all", action="store_true",
                        help="include records of earlier definitions of the profile (left out by default)")
    return parser


def _fmt_mean_std(row: dict[str, Any], metric: str) -> str:
    mean, std = row["mean"], row["std"]
    if metric == "test_errors" or metric == "bias_shift":
        return f"{mean:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}")
    return f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}")


def report_text(name: str, path: Path, metrics: Sequence[str], include_stale: bool = False) -> str:
    """The report of one results file: provenance, teacher, per-cell summaries.

    Records that the current definition of the profile would not produce (see
    :func:`kdlib.experiments.expected_keys`) are left out unless ``include_stale``.
    """
    records = load_records(path)
    stale = 0
    if not include_stale and path.stem in get_experiment(name).profiles:
        keep = expected_keys(name, path.stem)
        stale = sum(r["key"] not in keep for r in records)
        records = [r for r in records if r["key"] in keep]
    teachers = [r for r in records if r.get("kind") == "teacher"]
    students = [r for r in records if r.get("kind") == "student"]
    lines = [f"== {name} / {path.stem}: {len(students)} student runs, {len(teachers)} teacher(s) =="]
    provs = [r.get("provenance", {}) for r in records]
    commits = sorted({f"{(p.get('git_commit') or '?')[:10]}{'+dirty' if p.get('git_dirty') else ''}"
                      for p in provs})
    devices = sorted({str(p.get("device_name")) for p in provs})
    dates = sorted(p.get("finished", "") for p in provs)
    if stale:
        lines.append(f"left out: {stale} records of an earlier definition of this profile "
                     "(--all includes them)")
    if records:
        lines.append(f"commits: {', '.join(commits)}; devices: {'; '.join(devices)}; "
                     f"finished {dates[0]} .. {dates[-1]}")
    for t in teachers:
        m = t["metrics"]
        lines.append(f"teacher {t['key']}: test accuracy {m['test_accuracy']:.4f}, "
                     f"test errors {m['test_errors']}")
    if not students:
        return "\n".join(lines)
    diverged = [r["config"] for r in students if r["metrics"].get("diverged")]
    if diverged:
        cells = sorted({f"alpha={c['alpha']:g} T={c['T']:g} beta={c['beta']:g}"
                        f"{' /alpha' if c.get('normalize_by_alpha') else ''}" for c in diverged})
        lines.append(f"diverged (non-finite training loss): {len(diverged)} runs: {'; '.join(cells)}")
    columns = ["label", "model", "alpha", "T", "beta", "normalize_by_alpha", "n"]
    first = summarize(students, metrics[0])
    extra = {m: {_ident(r): r for r in summarize(students, m)} for m in metrics}
    rows = []
    for r in first:
        row = {c: r.get(c) for c in columns}
        for c in ("alpha", "T", "beta"):
            row[c] = None if r.get("beta") == 0 and c != "beta" else f"{r.get(c):g}"
        row["normalize_by_alpha"] = "yes" if r.get("normalize_by_alpha") else "no"
        for m in metrics:
            got = extra[m].get(_ident(r))
            row[m] = _fmt_mean_std(got, m) if got else None
        row[f"{metrics[0]} ci95"] = r["ci95"]
        rows.append(row)
    lines.append(format_table(rows, columns[:6] + ["n", *metrics, f"{metrics[0]} ci95"]))
    return "\n".join(lines)


def _ident(row: dict[str, Any]) -> tuple:
    return tuple(str(row.get(k)) for k in ("label", "model", "alpha", "T", "beta", "normalize_by_alpha"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 error)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            for exp in EXPERIMENTS.values():
                print(f"{exp.name}\t{exp.description}")
            return 0
        exp = get_experiment(args.name)
        if args.command == "run":
            exp.profile(args.profile)  # validate before touching anything
            from kdlib.experiments import run_experiment

            out = args.out if args.out is not None else (SCRATCH if args.profile == "smoke" else "results")
            path = run_experiment(exp.name, args.profile, device=args.device, out=out, cache_dir=args.cache,
                                  threads=args.threads, log=lambda msg: print(msg, file=sys.stderr))
            print(f"results: {path}")
            return 0
        profiles = [args.profile] if args.profile else list(exp.profiles)
        if args.profile:
            exp.profile(args.profile)
        paths = [results_path(args.out, exp.name, p) for p in profiles]
        found = [p for p in paths if p.exists()]
        if not found:
            raise ResultsFileError(f"no results for {exp.name} under {args.out} "
                                   f"(looked for {', '.join(str(p) for p in paths)})")
        print("\n\n".join(report_text(exp.name, p, exp.report_metrics, args.all) for p in found))
        return 0
    except (UnknownExperimentError, ResultsFileError, DatasetNotFoundError, DeviceUnavailableError,
            RunInProgressError, ValueError) as e:
        print(f"kdlib: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `report ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("kdlib: interrupted; finished runs are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
