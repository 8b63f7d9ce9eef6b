"""Command line: ``python -m kdlib list | run | report``.

``list``
    The experiments, one per line: name, then a short description.
``run NAME --profile smoke|cpu|full [--device auto|cpu|cuda] [--out DIR] [--cache DIR]
[--threads N] [--precision fp32|bf16|auto]``
    Runs (or resumes) an experiment; results go to ``DIR/NAME/PROFILE.jsonl`` (default
    ``DIR = results``; the ``smoke`` profile defaults to ``results/_scratch`` so it never
    touches committed results). Teachers are cached in ``--cache`` (default
    ``$KDLIB_CACHE_DIR`` or ``~/.cache/kdlib``).
``report NAME [--profile P] [--out DIR]``
    Summary tables (mean ± sample std over seeds, n, 95% t-interval) of the results files.

Errors (unknown experiment or profile, a results file that cannot be read or written, an
unusable ``--out`` or ``--cache``, a full disk, a missing dataset, CUDA requested but absent)
print one line on stderr and exit with status 2; finished runs are never lost.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kdlib.lab.config import PRECISIONS, DeviceUnavailableError
from kdlib.lab.data import DatasetNotFoundError
from kdlib.lab.experiments import (
    EXPERIMENTS,
    PROFILES,
    UnknownExperimentError,
    get_experiment,
)
from kdlib.lab.run import run_experiment
from kdlib.lab.store import SCRATCH, ResultsFileError, RunInProgressError, results_path
from kdlib.report.tables import report_text


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
                     help="CPU threads for torch (default: the profile's, smoke 1, else $KDLIB_THREADS or "
                          "the usable cores; recorded in each record)")
    run.add_argument("--precision", default=None, choices=PRECISIONS,
                     help="fp32, bf16 (autocast, fp32 master weights) or auto (bf16 where the hardware has "
                          "native bf16 matmuls); default: the profile's (smoke/cpu fp32, full auto). Part of "
                          "each run's key")
    report = sub.add_parser("report", help="summary table of an experiment's results")
    report.add_argument("name")
    report.add_argument("--profile", default=None, help="one profile (default: every profile with results)")
    report.add_argument("--out", default="results", help="results root (default results/)")
    report.add_argument("--all", action="store_true",
                        help="include records of earlier definitions of the profile (left out by default)")
    return parser


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
            default_out = Path("results") / SCRATCH if args.profile == "smoke" else Path("results")
            out = args.out if args.out is not None else default_out
            path = run_experiment(exp.name, args.profile, device=args.device, out=out, cache_dir=args.cache,
                                  threads=args.threads, precision=args.precision,
                                  log=lambda msg: print(msg, file=sys.stderr))
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
        print("\n\n".join(report_text(exp.name, p, args.all) for p in found))
        return 0
    except (UnknownExperimentError, ResultsFileError, DatasetNotFoundError, DeviceUnavailableError,
            RunInProgressError, ValueError) as e:
        print(f"kdlib: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. a full disk while the teacher is saved: one line, finished runs are kept
        print(f"kdlib: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; finished runs are "
              "saved, rerun the same command to resume", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `report ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("kdlib: interrupted; finished runs are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130
