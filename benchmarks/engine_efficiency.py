"""How much of the machine the training engine uses, against the recipes a PyTorch user would write.

One process, side by side, for each configuration:

* **engine**: :func:`kdlib.lab.train.fit` on a :class:`~kdlib.lab.models.StackedMLP` (students;
  objective :func:`~kdlib.lab.train.distillation_objective`) or on the teacher
  :func:`~kdlib.lab.models.hinton_teacher` (objective :func:`~kdlib.lab.train.cross_entropy_objective`),
  with ``precision="auto"`` (bf16 autocast where the CPU multiplies bfloat16 natively; the
  header says what it resolved to);
* **vmap**: the ``torch.func`` model-ensembling recipe: the same students as ``nn.Sequential``
  MLPs, ``stack_module_state`` + ``functional_call`` + ``vmap`` for the forward pass, the same
  loss (:func:`~kdlib.lab.train.distillation_objective` on the ``(S, B, C)`` logits), SGD
  with momentum on the stacked parameters (students only);
* **naive**: a plain loop, one model at a time: ``nn.Sequential`` MLP, ``kdlib.DistillationLoss``
  (or ``F.cross_entropy`` and ``nn.Dropout`` for the teacher), ``torch.optim.SGD`` with momentum,
  minibatches indexed from tensors in memory.

The baselines run in float32, as the recipes are written (``--baseline-precision same`` runs
them under the engine's autocast instead). Every side trains the same initial weights on the
same synthetic data of Fashion-MNIST's shape (784 inputs, 10 classes), batch ``B``, learning
rate 0.01; each side is timed over a fixed number of steps after a warm-up, ``--repeats`` times
in turn, and its fastest repeat counts (other processes only ever slow a repeat down).

Useful work: ``6 x parameters x samples`` FLOP per step (forward 2, backward 4). The peak is the
faster of float32 and bfloat16 square GEMMs measured in the same run. One line per configuration
(``vmap -`` for the teacher, which is one model), then the times it comes from::

 RESULT <config> batch <B> engine <G> GFLOP/s | vmap <x>x | naive <y>x | <p>% of <dtype> GEMM peak <P> GFLOP/s

``--floor`` adds a ``FLOOR`` line per configuration: the time of what any engine for it must do
(the step's matrix products in the engine's precision, the optimiser step, the loss; see
:func:`floor_parts`), and the ratios against vmap and naive of an engine that took only that long: a
target above them cannot be reached with these kernels on this machine.

glibc's ``malloc`` is tuned for every side alike (:func:`kdlib.lab.train.retain_freed_memory`,
applied at start), so the ratios measure the code, not the allocator. ``--quick``: a smoke check
of a few steps (its figures are not the benchmark's).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kdlib.lab.config import StudentSpec, TrainConfig, cpu_flags, resolve_precision
from kdlib.lab.experiments import get_experiment
from kdlib.lab.models import StackedMLP, hinton_teacher, init_mlp_params
from kdlib.lab.provenance import ISA_FLAGS, device_name
from kdlib.lab.train import (
    autocast,
    cross_entropy_objective,
    distillation_objective,
    fit,
    make_optimizer,
    retain_freed_memory,
)
from kdlib.losses import DistillationLoss

LR = 0.01
IN, CLASSES = 784, 10
#: The engine's teacher draws its dropout masks as new teachers do (kdlib.lab.models.Dropout; the committed
#: teachers keep "bits32", which their keys record)
TEACHER_MASK = "bits8"


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: S students of ``hidden`` (``specs``), or the teacher (``specs`` empty)."""

    name: str
    batch: int
    hidden: tuple[int, ...]
    specs: tuple[StudentSpec, ...] = ()
    steps: int = 10
    naive_models: int | None = None  # time the naive loop on this many models and scale (None: all)
    in_features: int = IN
    lr_scale: tuple[float, ...] | None = None  # the engine's learning rate per student (fit's lr_scale)
    dispatch: bool = False  # print a DISPATCH line (tiny models: the per-step cost that is not arithmetic)

    @property
    def teacher(self) -> bool:
        return not self.specs


def student_specs(n: int, hidden: tuple[int, ...]) -> tuple[StudentSpec, ...]:
    """``n`` students mixing 4 orders and 3 temperatures, each with its own seed."""
    cells = [(a, T) for a in (0.5, 1.0, 2.0, math.inf) for T in (2.0, 4.0, 8.0)]
    return tuple(StudentSpec(alpha=cells[i % 12][0], T=cells[i % 12][1], beta=0.9, seed=i, hidden=hidden)
                 for i in range(n))


#: The arms of the tuned comparisons (chapter 2): (order, reverse, divided by the order).
ARMS = ((1.0, False, False), (1.0, True, False), (0.25, False, False), (0.25, False, True),
        (0.5, False, False), (0.5, False, True), (2.0, False, False), (2.0, False, True), (4.0, False, False),
        (4.0, False, True), (math.inf, False, False))


def arm_specs(n: int, hidden: tuple[int, ...]) -> tuple[StudentSpec, ...]:
    """``n`` students of a tuning stack: the 11 arms of :data:`ARMS` in turn, T 2, 4, 8 in turn and beta
    0.5, 0.9, 1 every third student (a period of 9, prime to 11: over 99 students every arm meets every
    T and beta), seed 0 (one data order per stack)."""
    Ts, betas = (2.0, 4.0, 8.0), (0.5, 0.9, 1.0)
    return tuple(StudentSpec(alpha=ARMS[i % 11][0], reverse=ARMS[i % 11][1],
                             normalize_by_alpha=ARMS[i % 11][2], T=Ts[i % 3], beta=betas[(i // 3) % 3],
                             seed=0, hidden=hidden) for i in range(n))


def lr_cycle(n: int) -> tuple[float, ...]:
    """Learning-rate factors of ``n`` stacked students: 0.5, 1, 2 in turn (a x2-step grid)."""
    return tuple((0.5, 1.0, 2.0)[(i // 9) % 3] for i in range(n))


def configs(quick: bool) -> list[Config]:
    """The configurations of the speed issues (fewer steps and naive models with ``quick``).

    ``poor-2x800x60``: a data-poor tuning stack (the order-or-weight study: 2x800 students, every arm,
    T, beta and learning rate varying in one stack); ``mnist1d-mlp-x360``: MNIST-1D's published MLP
    (40-100-100-10), 360 students of every arm, T, beta and rate in one stack (a tuning grid of 11
    arms x 3 T x 3 beta x 3 rates is 297 students, plus the student alone and seeds).
    """
    grid = get_experiment("renyi_grid").profile("cpu").students  # 303 students 2x100, orders 0.25 ... inf
    students = student_specs(60, (800, 800))
    poor, mlp1d = arm_specs(60, (800, 800)), arm_specs(360, (100, 100))
    steps = (lambda full, short: short) if quick else (lambda full, short: full)
    return [Config("students-2x800x60", 128, (800, 800), students, steps(10, 2), steps(None, 4)),
            Config("students-2x800x60", 512, (800, 800), students, steps(4, 1), steps(15, 4)),
            Config("grid-2x100x303", 128, (100, 100), grid, steps(20, 4), steps(101, 8)),
            Config("poor-2x800x60", 128, (800, 800), poor, steps(10, 2), steps(15, 4), lr_scale=lr_cycle(60)),
            Config("mnist1d-mlp-x360", 128, (100, 100), mlp1d, steps(40, 4), steps(60, 8), in_features=40,
                   lr_scale=lr_cycle(360), dispatch=True),
            Config("teacher-2x1200", 128, (1200, 1200), (), steps(50, 10))]


def useful_flop(model: nn.Module, samples: int) -> float:
    """6 x parameters x samples."""
    return 6.0 * sum(p.numel() for p in model.parameters()) * samples


def sequential(sizes: Sequence[int], params: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
               dropout: float = 0.0, input_dropout: float = 0.0) -> nn.Sequential:
    """A plain ``nn.Sequential`` ReLU MLP, optionally loaded with ``init_mlp_params``-layout weights."""
    layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    net = nn.Sequential(*layers)
    if params is not None:
        with torch.no_grad():
            for lin, (w, bias) in zip([m for m in net if isinstance(m, nn.Linear)], params, strict=True):
                lin.weight.copy_(w.T)
                lin.bias.copy_(bias)
    return net


#: The device the benchmark runs on (``--device``); CUDA work is asynchronous, so every timing waits for it.
DEVICE = torch.device("cpu")


def sync() -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def best_time(fn: Callable[[], None], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls of ``fn`` (each waiting for the device)."""
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_peak(n: int = 2048, repeats: int = 3) -> dict[str, float]:
    """GFLOP/s of an ``n x n`` by ``n x n`` product in float32 and bfloat16 (fastest of ``repeats``)."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=DEVICE).to(dtype), torch.randn(n, n, device=DEVICE).to(dtype)
        a @ b  # warm-up
        out[name] = 2 * n**3 / best_time(lambda a=a, b=b: a @ b, repeats) / 1e9
    return out


class Sides:
    """The three implementations of one configuration, each a ``run(steps)`` closure on shared data."""

    def __init__(self, cfg: Config, precision: str, baseline_precision: str, in_features: int = IN) -> None:
        self.cfg, self.precision, self.baseline_precision = cfg, precision, baseline_precision
        B = cfg.batch
        n = B * (cfg.steps + 2)
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, in_features, generator=g).to(DEVICE)
        self.y = torch.randint(0, CLASSES, (n,), generator=g).to(DEVICE)
        self.t = (torch.randn(n, CLASSES, generator=g) * 3).to(DEVICE)
        self.sizes = [in_features, *cfg.hidden, CLASSES]
        if cfg.teacher:
            torch.manual_seed(0)
            self.model: nn.Module = hinton_teacher(in_features, CLASSES, hidden=cfg.hidden[0],
                                                   dropout_mask=TEACHER_MASK).to(DEVICE)
            self.objective = cross_entropy_objective(self.y)
        else:
            self.model = StackedMLP(in_features, cfg.hidden, CLASSES, [s.seed for s in cfg.specs]).to(DEVICE)
            self.objective = distillation_objective(self.y, self.t, cfg.specs)
        self.flop_per_step = useful_flop(self.model, B)

    def batches(self, steps: int) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        order = torch.randperm(len(self.y), generator=g)[: steps * self.cfg.batch].to(DEVICE)
        return list(order.split(self.cfg.batch))

    def engine(self, steps: int) -> None:
        train = TrainConfig(epochs=1, batch_size=self.cfg.batch, lr=LR)
        fit(self.model, self.x[: steps * self.cfg.batch], self.objective, train, data_seed=0,
            precision=self.precision, lr_scale=self.cfg.lr_scale)

    def _baseline_autocast(self):
        prec = self.precision if self.baseline_precision == "same" else "fp32"
        return autocast(DEVICE, prec)

    def vmap(self, steps: int) -> None:
        """torch.func ensembling: stacked nn.Sequential parameters, vmap(functional_call) forward."""
        if not hasattr(self, "_vmap"):  # set up once, outside the timed steps
            models = [sequential(self.sizes, init_mlp_params(self.sizes, s.seed)).to(DEVICE)
                      for s in self.cfg.specs]
            params, buffers = stack_module_state(models)
            base = copy.deepcopy(models[0]).to("meta")

            def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
                return functional_call(base, (p, b), (x,))

            opt = torch.optim.SGD(list(params.values()), lr=LR, momentum=0.9)
            self._vmap = (vmap(forward, in_dims=(0, 0, None)), params, buffers, opt)
        ensemble, params, buffers, opt = self._vmap
        for idx in self.batches(steps):
            with self._baseline_autocast():
                logits = ensemble(params, buffers, self.x[idx])
            loss = self.objective(logits.float(), idx).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def naive(self, steps: int) -> None:
        """One model at a time: nn.Sequential, DistillationLoss (or cross-entropy), SGD."""
        if not hasattr(self, "_naive"):  # set up once, outside the timed steps
            self._naive = []
            for spec in (self.cfg.specs or (None,))[: self.cfg.naive_models]:
                if spec is None:
                    torch.manual_seed(0)
                    model = sequential(self.sizes, dropout=0.5, input_dropout=0.2).to(DEVICE)
                    loss_fn: Callable = lambda z, idx: F.cross_entropy(z, self.y[idx])  # noqa: E731
                else:
                    model = sequential(self.sizes, init_mlp_params(self.sizes, spec.seed)).to(DEVICE)
                    kd = DistillationLoss(spec.alpha, spec.T, spec.beta)
                    loss_fn = lambda z, idx, kd=kd: kd(z, self.t[idx], self.y[idx])  # noqa: E731
                self._naive.append((model, loss_fn, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)))
        for model, loss_fn, opt in self._naive:
            model.train()
            for idx in self.batches(steps):
                with self._baseline_autocast():
                    z = model(self.x[idx])
                loss = loss_fn(z.float(), idx)
                opt.zero_grad()
                loss.backward()
                opt.step()

    def naive_scale(self) -> float:
        """Models the naive loop trains per step over the models it is timed on."""
        n = len(self.cfg.specs) or 1
        return n / min(n, self.cfg.naive_models or n)


def measure(cfg: Config, precision: str, baseline_precision: str, repeats: int, peak: dict[str, float],
            in_features: int | None = None, floor: bool = False) -> list[str]:
    """Time the three sides of ``cfg``; return its ``RESULT`` line and a line with the step times
    (and with ``floor`` a ``FLOOR`` line: the fastest time of each of :func:`floor_parts`, timed
    in turn with the sides, their sum, and the ratios of an engine that took exactly that long)."""
    sides = Sides(cfg, precision, baseline_precision, in_features or cfg.in_features)
    names = ["engine", "naive"] + ([] if cfg.teacher else ["vmap"])
    per_step = dict.fromkeys(names, math.inf)
    for name in names:  # warm-up: kernels, allocator, first touch of the weights
        getattr(sides, name)(1)
    parts = floor_parts(sides) if floor else {}
    floor_ms = dict.fromkeys(parts, math.inf)
    for _ in range(repeats):  # the sides in turn, so that a busy spell slows all of them
        for name in names:
            seconds = best_time(lambda n=name: getattr(sides, n)(cfg.steps), 1)
            per_step[name] = min(per_step[name], seconds / cfg.steps)
        for name, fn in parts.items():  # each part as often as the sides take steps
            floor_ms[name] = min(floor_ms[name], 1e3 * best_time(fn, cfg.steps))
    per_step["naive"] *= sides.naive_scale()
    gflops = sides.flop_per_step / per_step["engine"] / 1e9
    vmap_x = f"{per_step['vmap'] / per_step['engine']:.2f}x" if "vmap" in per_step else "-"
    dtype, best = max(peak.items(), key=lambda kv: kv[1])
    n_models = len(cfg.specs) or 1
    timed_on = min(n_models, cfg.naive_models or n_models)
    floor_lines = []
    if floor:
        total = sum(floor_ms.values())
        at_floor = ", ".join(f"{k} {1e3 * per_step[k] / total:.2f}x"
                             for k in ("vmap", "naive") if k in per_step)
        floor_lines = [f"FLOOR {cfg.name} batch {cfg.batch}: "
                       + " + ".join(f"{k} {v:.1f}" for k, v in floor_ms.items())
                       + f" = {total:.1f} ms of the engine's {1e3 * per_step['engine']:.1f} ms/step"
                       + f" | an engine at the floor: {at_floor}"]
        if cfg.specs and mixed(cfg.specs):
            floor_lines.append(loss_comparison(sides, max(repeats, 3)))
        if cfg.dispatch:
            floor_lines.append(dispatch_share(cfg, precision, per_step["engine"], repeats))
    return [f"RESULT {cfg.name} batch {cfg.batch} engine {gflops:.1f} GFLOP/s | vmap {vmap_x} | "
            f"naive {per_step['naive'] / per_step['engine']:.2f}x | {100 * gflops / best:.1f}% of {dtype} "
            f"GEMM peak {best:.1f} GFLOP/s",
            "  ms/step: " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in per_step.items())
            + f" ({cfg.steps} steps, fastest of {repeats}; naive timed on {timed_on} of {n_models} models"
            + (", scaled)" if timed_on < n_models else ")")] + floor_lines


def step_matmuls(sizes: Sequence[int], students: int, batch: int) -> list[tuple[int, int, int, int]]:
    """The matrix products of one training step of ``students`` MLPs ``sizes`` at batch ``batch``.

    ``(count, m, k, n)``: ``count`` products of ``(m, k) x (k, n)``, in the engine's layout (the
    first layers of all students as one matrix; a batched product per later layer): per layer the
    forward, the weight gradient and, after the first layer, the input gradient (the inputs need
    none). Their FLOP, ``2 count m k n`` summed, is ``6 x weights x batch`` less the first layer's
    input gradient, ``2 x first-layer weights x batch``.
    """
    S, B, out = students, batch, []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i == 0:
            out += [(1, B, a, S * b), (1, S * b, B, a)]  # forward; weight gradient
        else:
            out += [(S, B, a, b), (S, a, B, b), (S, B, b, a)]  # forward; weight gradient; input gradient
    return out


def floor_parts(sides: Sides) -> dict[str, Callable[[], None]]:
    """What no engine for ``sides.cfg`` can avoid in a step, as closures to time: the step's matrix
    products (:func:`step_matmuls`, in the engine's matmul dtype, on random operands), the engine's
    optimiser step (:func:`~kdlib.lab.train.make_optimizer` over the model's float32 parameters,
    with gradients set) and the objective's forward and backward on float32 logits (the loss the
    vmap side calls too). Everything else in the engine's step (casts, activations, biases,
    indexing, dropout) comes on top of their sum."""
    cfg, model = sides.cfg, sides.model
    S, B = len(cfg.specs) or 1, cfg.batch
    dtype = torch.bfloat16 if sides.precision == "bf16" else torch.float32
    g = torch.Generator().manual_seed(0)
    products = []
    for count, m, k, n in step_matmuls(sides.sizes, S, B):
        shape = (count,) if count > 1 else ()
        products.append((torch.randn(*shape, m, k, generator=g).to(DEVICE, dtype),
                         torch.randn(*shape, k, n, generator=g).to(DEVICE, dtype)))

    def matmuls() -> None:
        for a, b in products:
            torch.matmul(a, b)

    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g).to(DEVICE) * 1e-3
    opt = make_optimizer(TrainConfig(epochs=1, batch_size=B, lr=LR), params)
    idx = torch.arange(B, device=DEVICE)
    shape = (S, B, CLASSES) if cfg.specs else (B, CLASSES)
    logits = torch.randn(shape, generator=g).to(DEVICE).requires_grad_()

    def loss() -> None:
        sides.objective(logits, idx).sum().backward()

    parts = {"matmuls": matmuls, "optimizer": opt.step, "loss": loss}
    for fn in parts.values():
        fn()  # warm-up (the optimiser's first step allocates its momentum)
    return parts


def dispatch_share(cfg: Config, precision: str, step_seconds: float, repeats: int) -> str:
    """The ``DISPATCH`` line: the engine's step with one student of the stack (whose arithmetic is
    ``1/S`` of the stack's: what remains is Python, dispatch and the fixed cost of the step's ops) as a
    share of the whole stack's step, which bounds the part of a step that stacking cannot amortise."""
    first = cfg.lr_scale[:1] if cfg.lr_scale else None
    one = replace(cfg, specs=cfg.specs[:1], lr_scale=first, dispatch=False)
    sides = Sides(one, precision, "fp32", cfg.in_features)
    sides.engine(1)
    alone = min(best_time(lambda: sides.engine(cfg.steps), 1) for _ in range(max(repeats, 3))) / cfg.steps
    share = 100 * alone / step_seconds
    return (f"DISPATCH {cfg.name}: one student's step {1e3 * alone:.2f} ms = {share:.1f}% "
            f"of the {len(cfg.specs)}-student step ({1e3 * step_seconds:.1f} ms)")


def kl_only(specs: Sequence[StudentSpec]) -> tuple[StudentSpec, ...]:
    """The same students with the soft term of each replaced by forward KL (same T, beta and shape)."""
    return tuple(replace(s, alpha=1.0, reverse=False, normalize_by_alpha=False) for s in specs)


def mixed(specs: Sequence[StudentSpec]) -> bool:
    """Whether a stack's losses differ in anything but T and beta from a KL-only stack's."""
    return any((s.alpha, s.reverse, s.normalize_by_alpha) != (1.0, False, False) for s in specs)


def loss_comparison(sides: Sides, repeats: int) -> str:
    """The ``LOSS`` line: forward + backward of the stack's objective against a KL-only stack of the same
    shape (:func:`kl_only`), on the same float32 logits and batch, timed in turn, fastest of ``repeats``."""
    cfg = sides.cfg
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((len(cfg.specs), cfg.batch, CLASSES), generator=g).to(DEVICE).requires_grad_()
    idx = torch.arange(cfg.batch, device=DEVICE)
    objectives = {"mixed": sides.objective,
                  "kl-only": distillation_objective(sides.y, sides.t, kl_only(cfg.specs))}
    calls = {k: (lambda f=f: f(logits, idx).sum().backward()) for k, f in objectives.items()}
    best = dict.fromkeys(calls, math.inf)
    for fn in calls.values():
        fn()
    for _ in range(repeats):
        for k, fn in calls.items():
            block = best_time(lambda fn=fn: [fn() for _ in range(cfg.steps)], 1)  # steps in a row, as a run
            best[k] = min(best[k], 1e3 * block / cfg.steps)
    return (f"LOSS {cfg.name} mixed {best['mixed']:.2f} ms | kl-only {best['kl-only']:.2f} ms | "
            f"{best['mixed'] / best['kl-only']:.2f}x")


def header(precision: str, baseline_precision: str, malloc: bool) -> list[str]:
    flags = cpu_flags()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    gpu = [f"device: {device_name(DEVICE)}"] if DEVICE.type != "cpu" else []
    isa = " ".join(f for f in ISA_FLAGS if f in flags) or "unknown"
    return gpu + [f"machine: {device_name('cpu')}; ISA: {isa}"
            f" (amx: {'yes' if 'amx_bf16' in flags else 'no'}); torch {torch.__version__}, "
            f"python {platform.python_version()}, cpu capability {torch.backends.cpu.get_cpu_capability()}",
            f"load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
            f"engine precision: auto -> {precision}; baselines: "
            f"{precision if baseline_precision == 'same' else 'fp32'}; "
            f"malloc tuning: {'on' if malloc else 'off'}; torch threads {torch.get_num_threads()}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few steps, the naive loop on a few models: a smoke check")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per side (default 2; 1 with --quick)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument("--baseline-precision", choices=("fp32", "same"), default="fp32",
                        help="precision of the vmap and naive sides: fp32 (default) or the engine's")
    parser.add_argument("--only", default=None, help="run only configurations whose name contains this")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: every side runs there")
    parser.add_argument("--floor", action="store_true",
                        help="also time what no engine can avoid (the step's matrix products, the optimiser "
                             "step, the loss) and the ratios an engine taking only that long would reach")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    try:
        DEVICE = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if DEVICE.type not in ("cpu", "cuda") or (DEVICE.type == "cuda" and not torch.cuda.is_available()):
        parser.error(f"--device {args.device}: not available here (cpu or an available cuda[:N])")
    repeats = args.repeats or (1 if args.quick else 2)
    precision = resolve_precision("auto", DEVICE)
    malloc = retain_freed_memory()
    for line in header(precision, args.baseline_precision, malloc):
        print(line, flush=True)
    peak = gemm_peak(1024 if args.quick else 2048)
    print("GEMM peak: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peak.items()), flush=True)
    for cfg in configs(args.quick):
        if args.only and args.only not in cfg.name:
            continue
        for line in measure(cfg, precision, args.baseline_precision, repeats, peak, floor=args.floor):
            print(line, flush=True)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    print(f"load average at end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
