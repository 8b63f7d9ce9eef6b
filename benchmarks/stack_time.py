"""End to end: the wall time of one stack of a committed experiment, rerun now, with its floor beside it.

The stack is the stack group of one committed student (:func:`kdlib.lab.run.rerun_student`: the
students of its experiment's profile that trained beside it), rerun from its teacher's committed
logits into a temporary directory, with the precision its record names, on ``--device``. One line::

 STACK <experiment>/<profile> <S> students <hidden> x <steps> steps on <device>: <wall> s now |
   floor <f> s (<ms> ms/step) | committed <c> s on <device> (<date>) | metrics equal: <yes|no>

``floor``: what no engine can avoid, per step (``engine_efficiency.floor_parts``: the step's matrix
products in the run's precision, the optimiser step, the loss; timed here on synthetic data of the
stack's shape) times the stack's steps. ``wall`` includes what the record's ``wall_seconds`` includes
(training, evaluation, the per-epoch validation). A rerun on the record's kind of machine reproduces
its metrics exactly; elsewhere (another CPU, a GPU) only to within the cross-hardware tolerance
(``benchmarks/rerun_tolerance.py``).

    .venv/bin/python benchmarks/stack_time.py --experiment renyi_explore_poor --profile full
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import engine_efficiency as bench  # noqa: E402  (the floor's parts)

from kdlib.lab.config import StudentSpec  # noqa: E402
from kdlib.lab.records import decode_float  # noqa: E402
from kdlib.lab.run import rerun_student  # noqa: E402
from kdlib.lab.store import load_experiment_records, results_root  # noqa: E402


def stack_floor(specs: Sequence, batch: int, in_features: int, precision: str, repeats: int = 3) -> float:
    """Milliseconds per step of what no engine can avoid for ``specs`` stacked at ``batch``."""
    cfg = bench.Config("stack", batch, tuple(specs[0].hidden), tuple(specs), steps=5, in_features=in_features)
    sides = bench.Sides(cfg, precision, "fp32", in_features)
    parts = bench.floor_parts(sides)
    return sum(1e3 * min(bench.best_time(fn, cfg.steps) for _ in range(repeats)) for fn in parts.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="renyi_explore_poor")
    parser.add_argument("--profile", default="full")
    parser.add_argument("--student", type=int, default=0, help="whose stack: the n-th committed student (0)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    args = parser.parse_args(argv)
    path = results_root() / args.experiment / f"{args.profile}.jsonl"
    if not path.exists():
        parser.error(f"no committed results at {path}")
    students = load_experiment_records(path, kind="student")
    if not 0 <= args.student < len(students):
        parser.error(f"--student must be in [0, {len(students) - 1}], got {args.student}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device here")
    bench.DEVICE = torch.device(args.device)
    key = students[args.student]["key"]
    with tempfile.TemporaryDirectory() as tmp:
        before, after = rerun_student(key, Path(tmp) / "out", cache_dir=Path(tmp) / "cache",
                                      log=lambda m: None, device=args.device)
        stack = [r["config"] for f in (Path(tmp) / "out").glob("*/*.jsonl")
                 for r in load_experiment_records(f, kind="student")]
    conf, prov = after["config"], after["provenance"]
    specs = [StudentSpec(alpha=decode_float(c["alpha"]), T=decode_float(c["T"]), beta=decode_float(c["beta"]),
                         normalize_by_alpha=c["normalize_by_alpha"], reverse=c.get("reverse", False),
                         seed=c["seed"], hidden=tuple(c["model"]["hidden"])) for c in stack]
    n = conf["data"].get("transfer_size") or conf["data_info"]["n_train"]
    steps = conf["epochs"] * math.ceil(n / conf["batch_size"])
    precision = "bf16" if conf["dtype"].startswith("bf16") else "fp32"
    floor_ms = stack_floor(specs, conf["batch_size"], 784, precision)
    floor = f"floor {floor_ms * steps / 1e3:.1f} s ({floor_ms:.1f} ms/step)"
    same = {k: after["metrics"][k] for k in before["metrics"]} == before["metrics"]
    then = before["provenance"]
    print(f"STACK {conf['experiment']}/{conf['profile']} {prov['group_size']} students "
          f"{'x'.join(map(str, conf['model']['hidden']))} x {steps} steps on {prov['device_name']}: "
          f"{prov['wall_seconds']:.1f} s now | {floor} | committed {then['wall_seconds']:.1f} s "
          f"on {then.get('device_name', '?')} ({then.get('finished', '?')[:10]}) | "
          f"metrics equal: {'yes' if same else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
