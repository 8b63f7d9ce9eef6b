"""How far a committed student moves when it is rerun on other CPU kernels: the cross-hardware tolerance.

Reruns committed students of a ``full`` experiment from their teachers' committed logits
(:func:`kdlib.lab.run.rerun_student`, the same code as ``python -m kdlib rerun``) in a child process
whose torch is forced onto another CPU kernel set with ``ATEN_CPU_CAPABILITY`` (``avx2`` on an
AVX-512 machine: other vector widths, other summation orders, as on another CPU), and prints, per
student, the committed and rerun test accuracy and validation accuracy.

    .venv/bin/python benchmarks/rerun_tolerance.py --experiment hinton --width 30 --capability avx2

One student's stack group is rerun per ``--groups`` (the first groups of that width in the file).
The last line reads ``TOLERANCE <experiment> <capability>: max |test accuracy difference| <x> points
over <n> students``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, sys
from kdlib.lab.run import rerun_student
before, after = rerun_student(sys.argv[1], sys.argv[2], cache_dir=sys.argv[2], log=lambda m: None)
print(json.dumps({"before": before["metrics"], "after": after["metrics"],
                  "capability": after["provenance"].get("cpu_capability")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="hinton")
    parser.add_argument("--width", type=int, default=30, help="hidden width of the students to rerun")
    parser.add_argument("--capability", default="avx2", help="ATEN_CPU_CAPABILITY of the rerun")
    parser.add_argument("--groups", type=int, default=1, help="stack groups to rerun")
    parser.add_argument("--onednn-isa", default=None,
                        help="ONEDNN_MAX_CPU_ISA of the rerun (e.g. AVX2): oneDNN, which runs the bf16 and "
                             "fp32 matrix products, picks its kernels itself and ignores ATEN_CPU_CAPABILITY")
    args = parser.parse_args()

    from kdlib.lab.store import load_experiment_records, results_root

    records = load_experiment_records(results_root() / args.experiment / "full.jsonl", kind="student")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["config"]
        if c["model"]["hidden"][0] == args.width:
            groups.setdefault((c["seed"], c["teacher_key"], c["epochs"]), []).append(r)
    worst, n = 0.0, 0
    for members in list(groups.values())[: args.groups]:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "ATEN_CPU_CAPABILITY": args.capability, "TQDM_DISABLE": "1",
                   **({"ONEDNN_MAX_CPU_ISA": args.onednn_isa} if args.onednn_isa else {})}
            out = subprocess.run([sys.executable, "-c", CHILD, members[0]["key"], tmp], env=env,
                                 capture_output=True, text=True, check=True).stdout
            first = json.loads(out.strip().splitlines()[-1])
            # the whole group was rerun; read every member back from the rerun's file
            rerun = {}
            for line in open(os.path.join(tmp, args.experiment, "full.jsonl")):
                rec = json.loads(line)
                if rec.get("kind") == "student":
                    rerun[rec["key"]] = rec["metrics"]
        print(f"group seed {members[0]['config']['seed']}, rerun kernels {first['capability']}")
        for r in members:
            a, b = r["metrics"], rerun[r["key"]]
            d = 100 * (b["test_accuracy"] - a["test_accuracy"])
            worst, n = max(worst, abs(d)), n + 1
            c = r["config"]
            print(f"  {c['label']:9s} T={c['T']:<5g} test {100 * a['test_accuracy']:.2f} -> "
                  f"{100 * b['test_accuracy']:.2f} ({d:+.2f})  val {100 * a['final_val_accuracy']:.2f} -> "
                  f"{100 * b['final_val_accuracy']:.2f}")
    isa = f" oneDNN {args.onednn_isa}" if args.onednn_isa else ""
    print(f"TOLERANCE {args.experiment} {args.capability}{isa}: max |test accuracy difference| "
          f"{worst:.2f} points over {n} students")


if __name__ == "__main__":
    main()
