"""Forward + backward of the Rényi distillation loss against Hinton's KL loss written with torch's kl_div.

Run:  ``.venv/bin/python benchmarks/bench_losses.py`` (``--quick`` for a short run).

Every variant runs side by side in one process on the CPU: batch 256, 10 and 1000 classes,
float32, random logits of scale 3. Repeats are interleaved (each repeat times every variant once,
in a shuffled order) and the median of the repeats is reported, with the ratio to the baseline
measured in the same run. ``torch.set_num_threads`` is fixed (``--threads``, default 1) and printed.

Variants
--------
baseline ``kl_div``        T² · F.kl_div(log_softmax(s/T), softmax(t/T), "batchmean")   (soft term only)
``hinton``                  (1 − β)·CE + β·(the baseline): Hinton's full loss
``soft α``                 T² · mean renyi_divergence_logits(t, s, α, T)                (soft term only)
``DistillationLoss α``     the full kdlib loss, validate=True (default) and validate=False

The bar of the issue: the Rényi loss at α ≠ 1 within 2× of the KL loss. The table prints each
soft term against the ``kl_div`` baseline and each DistillationLoss against ``hinton`` (the same
structure: cross-entropy plus the soft term).
"""

from __future__ import annotations

import argparse
import math
import platform
import random
import statistics
import time

import torch
import torch.nn.functional as F

from kdlib import DistillationLoss, renyi_divergence_logits

B = 256
T = 4.0
BETA = 0.9


def make_inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = (3 * torch.randn(B, n, generator=g)).requires_grad_()
    t = 3 * torch.randn(B, n, generator=g)
    y = torch.randint(0, n, (B,), generator=g)
    return s, t, y


def variants():
    def kl_soft(s, t, y):
        return T * T * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")

    def hinton(s, t, y):
        return (1 - BETA) * F.cross_entropy(s, y) + BETA * kl_soft(s, t, y)

    out = {"kl_div (baseline)": kl_soft, "hinton": hinton}
    for a in (1.0, 2.0, 0.5, math.inf):
        name = "inf" if math.isinf(a) else f"{a:g}"
        out[f"soft α={name}"] = lambda s, t, y, a=a: T * T * renyi_divergence_logits(t, s, a, T).mean()
    for a in (1.0, 2.0, 0.5, math.inf):
        name = "inf" if math.isinf(a) else f"{a:g}"
        out[f"DistillationLoss α={name}"] = DistillationLoss(a, T, BETA)
        out[f"DistillationLoss α={name} validate=False"] = DistillationLoss(a, T, BETA, validate=False)
    return out


def time_once(fn, s, t, y, iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        loss = fn(s, t, y)
        torch.autograd.grad(loss, s)
    return (time.perf_counter() - start) / iters


def bench(n: int, reps: int, target_s: float, rng: random.Random) -> dict[str, float]:
    s, t, y = make_inputs(n)
    fns = variants()
    for fn in fns.values():  # warm up
        time_once(fn, s, t, y, 3)
    base = time_once(fns["kl_div (baseline)"], s, t, y, 20)
    iters = max(5, int(target_s / max(base, 1e-6)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            samples[k].append(time_once(fns[k], s, t, y, iters))
    return {k: statistics.median(v) for k, v in samples.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--reps", type=int, default=15, help="interleaved repeats (default 15)")
    ap.add_argument("--target-ms", type=float, default=40.0, help="time per measurement (default 40 ms)")
    ap.add_argument("--quick", action="store_true", help="5 repeats of 10 ms: a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.target_ms = 5, 10.0
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"torch.get_num_threads() = {torch.get_num_threads()}, batch {B}, T = {T}, beta = {BETA}, "
        "float32, CPU"
    )
    print(f"interleaved repeats: {args.reps}, ~{args.target_ms:g} ms per measurement; median per variant\n")
    bar_ok = True
    for n in (10, 1000):
        med = bench(n, args.reps, args.target_ms / 1000, rng)
        base, hint = med["kl_div (baseline)"], med["hinton"]
        print(f"classes n = {n}")
        print(f"  {'variant':40s} {'µs / fwd+bwd':>13s} {'vs kl_div':>10s} {'vs hinton':>10s}")
        for k, v in med.items():
            ref = "" if not k.startswith("DistillationLoss") else f"{v / hint:9.2f}×"
            print(f"  {k:40s} {v * 1e6:13.1f} {v / base:9.2f}× {ref:>10s}")
            is_renyi = ("α=1 " not in k + " ") and ("soft" in k or "DistillationLoss" in k)
            if is_renyi:
                ratio = v / base if k.startswith("soft") else v / hint
                bar_ok &= ratio <= 2.0
        print()
    print(
        "bar (Rényi α ≠ 1 within 2× of KL: soft vs kl_div, DistillationLoss vs hinton):",
        "PASS" if bar_ok else "FAIL",
    )


if __name__ == "__main__":
    main()
