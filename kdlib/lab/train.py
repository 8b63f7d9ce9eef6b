"""The one training loop, for a teacher and for a stack of students alike.

:func:`fit` trains any network whose output is ``(B, C)`` (one model) or ``(S, B, C)`` (S
stacked students, :class:`~kdlib.lab.models.StackedMLP`) on device-resident tensors. What it
minimises is a function of the batch's logits and indices returning one loss per model:

* :func:`cross_entropy_objective` for a network trained on labels (the teacher);
* :func:`distillation_objective` for S students, each with its own ``alpha``, ``T``, ``beta``
  and ``normalize_by_alpha`` (a :class:`~kdlib.lab.config.StudentSpec`): one call of
  :func:`kdlib.functional.distillation_loss` with ``(S, 1)`` hyperparameters.

The loop steps the optimiser on the sum of the per-model losses, so each model gets exactly
the gradient it would get alone (the models share no parameter).

Optimiser: SGD with momentum 0.9 and a cosine learning-rate decay by default (Adam is
available). SGD is the default on purpose: Adam divides each gradient by its running
magnitude, so it would largely cancel a constant rescaling of the soft-target term, and
the chapter-2 question "does dividing the Rényi term by alpha matter?" (the high-temperature
gradient is alpha(z - v)/(nT^2)) is a question about gradient scale. Hinton et al. also used
SGD with momentum, and their T^2 factor exists to keep SGD's gradient scale fixed across T.

Randomness: the minibatch order comes from a ``torch.Generator`` seeded with ``data_seed`` (on
the CPU, so it is the same on every device); ``torch.manual_seed(data_seed)`` seeds dropout.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.divergences import _centred
from kdlib.functional import distillation_loss
from kdlib.lab.config import StudentSpec, TrainConfig
from kdlib.lab.data import batch_indices, random_translate
from kdlib.lab.metrics import accuracy, predict_logits

#: ``objective(logits, idx) -> losses``: logits ``(B, C)`` or ``(S, B, C)`` of the batch whose
#: training-set indices are ``idx`` ``(B,)``; returns one loss per model, ``(1,)`` or ``(S,)``, in nats.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def progress(iterable: Iterable[Any] | None = None, **kw: Any) -> Any:
    """A tqdm progress bar, off when ``$TQDM_DISABLE`` is set or stderr is not a terminal."""
    # imported here, not at the top: importing tqdm.auto in a notebook kernel without ipywidgets writes a
    # TqdmWarning to stderr, before kdlib.report.book.setup_page can silence it (nbval fails on stderr)
    from tqdm.auto import tqdm

    disable = os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kw)


def cross_entropy_objective(y: torch.Tensor) -> Objective:
    """Mean cross-entropy with the labels ``y`` ``(N,)`` of the training set, shape ``(1,)`` (nats)."""
    return lambda logits, idx: F.cross_entropy(_full(logits), y[idx]).unsqueeze(0)


def _full(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when it is a 16-bit tensor (autocast output), else unchanged."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def distillation_objective(y: torch.Tensor, teacher_logits: torch.Tensor, specs: Sequence[StudentSpec]
                           ) -> Objective:
    """The distillation loss of S stacked students, ``(S,)`` in nats.

    Student ``s`` minimises :func:`kdlib.functional.distillation_loss` with the ``alpha``, ``T``,
    ``beta``, ``normalize_by_alpha`` and ``reverse`` of ``specs[s]`` against ``teacher_logits[idx]`` (the
    teacher's logits at temperature 1 of the training set, ``(N, C)``) and labels ``y[idx]``.
    All students share one call, with their orders and directions as tuples (which evaluates the
    order-free terms once for all of them, each order's own terms on its rows only and each student's
    gradient on its own side only: a mixed stack costs little more than a KL-only one) and ``(S, 1)``
    tensors of the other hyperparameters; their rows are arranged so that each order's students are
    contiguous and the reverse ones come last. 16-bit
    logits (bf16 autocast) are cast to float32 first, so the loss is never computed in 16 bits.
    """
    teacher = _full(teacher_logits)
    dev, dtype = teacher.device, teacher.dtype

    def column(values: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=dev).unsqueeze(1)  # (S, 1)

    by_kind: dict[tuple[float, bool], list[int]] = {}
    for i, spec in enumerate(specs):
        by_kind.setdefault((spec.alpha, spec.reverse), []).append(i)
    # each order's students contiguous, forward before reverse, the orders that evaluate as one group
    # (kdlib.divergences._centred: 1/4 ... 1e8 but 1) next to each other; orders with reverse students
    # last, so that the reverse students (usually of one order, reverse KL) end the stack
    has_reverse = {a for a, rev in by_kind if rev}
    first_seen = {a: n for n, (a, _) in reversed(list(enumerate(by_kind)))}
    kinds = sorted(by_kind, key=lambda k: (k[0] in has_reverse, not _centred(k[0]), first_seen[k[0]], k[1]))
    order = [i for kind in kinds for i in by_kind[kind]]
    members = [specs[i] for i in order]
    hyper = {"alpha": tuple(s.alpha for s in members), "reverse": tuple(s.reverse for s in members),
             "T": column([s.T for s in members], dtype), "beta": column([s.beta for s in members], dtype),
             "normalize_by_alpha": column([s.normalize_by_alpha for s in members], torch.bool)}
    rows = None if order == list(range(len(specs))) else torch.tensor(order, device=dev)
    unsort = None if order == sorted(order) else torch.argsort(torch.tensor(order, device=dev))

    def objective(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if logits.shape[0] != len(specs):
            raise ValueError(f"specs must have one entry per student: {len(specs)} != {logits.shape[0]}")
        z, t, labels = _full(logits), teacher[idx], y[idx]
        out = distillation_loss(z if rows is None else z.index_select(0, rows), t, labels, **hyper,
                                reduction="none", validate=False).mean(-1)
        return out if unsort is None else out[unsort]

    return objective


def gradient_ratio_monitor(x_probe: torch.Tensor, teacher_probe: torch.Tensor, y_probe: torch.Tensor,
                           specs: Sequence[StudentSpec], precision: str = "fp32"
                           ) -> Callable[[nn.Module], torch.Tensor]:
    r"""A :func:`fit` monitor: how large each student's soft-term gradient is, relative to KL's.

    For student ``s`` with its logits :math:`z` on the probe images (eval mode) it returns

    .. math:: r_s = \frac{\lVert \nabla_z\, T^2 D(\text{student } s) \rVert_F}
                         {\lVert \nabla_z\, T^2 D_{KL}(p_T \,\|\, q_T) \rVert_F},

    the Frobenius norms over the probe's ``(B, n)`` logit gradients of the student's own soft term
    (its order, direction and division by alpha) and of the KL soft term at the same T and the same
    logits. Chapter 1: near the fit at high T the Rényi gradient is :math:`\alpha(z - v)/(nT^2)`,
    KL's :math:`(z - v)/(nT^2)`, so :math:`r \to \alpha` (1 with the division by alpha); far from
    the fit and at low T it differs. NaN for students trained on the labels alone (``beta = 0``).

    Args:
        x_probe: ``(B, ...)`` fixed training inputs; teacher_probe: ``(B, n)`` their teacher logits;
        y_probe: ``(B,)`` labels (unused by the soft term; needed by the loss's signature).
        specs: the S students of the stack.
        precision: the forward's precision (the gradients are computed in float32).

    Returns:
        ``monitor(model) -> (S,)`` float64 ratios.
    """
    soft = [replace(s, beta=1.0) for s in specs]
    kl = [replace(s, alpha=1.0, beta=1.0, normalize_by_alpha=False, reverse=False) for s in specs]
    own = distillation_objective(y_probe, teacher_probe, soft)
    ref = distillation_objective(y_probe, teacher_probe, kl)
    alone = torch.tensor([s.beta == 0 for s in specs], device=x_probe.device)
    idx = torch.arange(x_probe.shape[0], device=x_probe.device)

    def monitor(model: nn.Module) -> torch.Tensor:
        with autocast(x_probe.device, precision):
            z0 = predict_logits(model, x_probe)
        norms = []
        for objective in (own, ref):
            z = _full(z0).detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(objective(z, idx).sum(), z)
            norms.append(g.to(torch.float64).flatten(1).norm(dim=1))
        ratio = norms[0] / norms[1]
        return torch.where(alone, torch.full_like(ratio, math.nan), ratio)

    return monitor


def make_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over ``params`` (element-wise, so stacked students are not coupled).

    The fused implementation (one kernel per tensor for the whole update) where torch has it for
    the parameters' device and dtype (CPU and CUDA floating tensors); the same update as the
    default one up to rounding.
    """
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           fused=fused)


def _lr_scale(lr_scale: Sequence[float] | None, cfg: TrainConfig, device: torch.device
              ) -> torch.Tensor | None:
    """:func:`fit`'s ``lr_scale`` as a float64 tensor ``(S,)`` on ``device``, checked (``None`` stays)."""
    if lr_scale is None:
        return None
    values = [float(c) for c in lr_scale]
    if not values or not all(math.isfinite(c) and c > 0 for c in values):
        raise ValueError(f"lr_scale must be one finite factor > 0 per model, got {list(lr_scale)!r}")
    if cfg.optimizer != "sgd" or cfg.weight_decay != 0:
        raise ValueError("lr_scale (a learning rate per stacked model) needs SGD without weight decay, where "
                         f"scaling a model's loss equals scaling its learning rate; got optimizer "
                         f"{cfg.optimizer!r}, weight_decay {cfg.weight_decay!r}")
    return torch.tensor(values, dtype=torch.float64, device=device)


def clip_per_model(params: Sequence[torch.Tensor], max_norm: float, num_models: int,
                   grad_scale: torch.Tensor | None = None) -> None:
    """Scale each model's gradient to L2 norm at most ``max_norm``, in place.

    With ``num_models = S > 1`` every tensor has the students on its first dimension and
    student ``s``'s norm is taken over slice ``s`` of all of them; with 1 the norm is over
    everything. The factor is ``min(1, max_norm / (norm + 1e-6))``, as in
    ``torch.nn.utils.clip_grad_norm_``. With ``grad_scale`` ``(S,)`` the gradients are model ``s``'s own
    times ``grad_scale[s]`` (:func:`fit`'s ``lr_scale``), and the norm is taken of the unscaled ones.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    S = num_models
    sq = sum(g.detach().pow(2).reshape(S, -1).sum(1) for g in grads)
    norm = sq.sqrt() if grad_scale is None else sq.sqrt() / grad_scale.to(sq.dtype)
    factor = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(S, *([1] * (g.dim() - 1))) if S > 1 else factor)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc's malloc.h)
_malloc_tuned: bool | None = None


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (once per process); ``False`` elsewhere.

    A training step on the CPU allocates and frees the same large temporaries every step
    (gradients and, under bf16 autocast, bfloat16 copies of the weights: up to 150 MB each for
    60 students 2x800). glibc serves blocks above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps them on ``free``, so every step page-faults and zeroes them again (about
    10^5 page faults a step for 60 students 2x800; 1.2-1.7x slower steps). This sets
    ``M_MMAP_MAX = 0`` (blocks come from the heap) and a high ``M_TRIM_THRESHOLD`` (freed memory
    stays in the process), the same as starting Python with ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=2147483647``. The process keeps its peak memory until it exits.
    Set ``$KDLIB_MALLOC_TUNING=0`` to leave ``malloc`` alone.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if os.environ.get("KDLIB_MALLOC_TUNING", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                _malloc_tuned = bool(libc.mallopt(_M_MMAP_MAX, 0)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                pass
    return _malloc_tuned


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in bfloat16 for ``precision == "bf16"``, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(model: nn.Module, x: torch.Tensor, objective: Objective, cfg: TrainConfig, *, data_seed: int,
        val: tuple[torch.Tensor, torch.Tensor] | None = None, precision: str = "fp32",
        desc: str = "training", monitor: Callable[[nn.Module], torch.Tensor] | None = None,
        lr_scale: Sequence[float] | None = None) -> dict[str, list[list[float]]]:
    """Train ``model`` on the inputs ``x`` ``(N, ...)`` (device-resident) by minimising ``objective``.

    Each step draws one minibatch of indices ``idx`` (order from ``data_seed``), evaluates
    ``losses = objective(model(x[idx]), idx)`` (one per model), steps the optimiser on
    ``losses.sum()`` (clipping each model's gradient when ``cfg.clip_norm`` is set) and sets the
    learning rate by ``cfg.lr_at``. With ``cfg.jitter`` each batch is translated first
    (:func:`~kdlib.lab.data.random_translate`, blank pixels filled with the smallest value of
    ``x``, which is a blank pixel for these datasets). There is no host synchronisation inside an
    epoch. On the CPU, :func:`retain_freed_memory` is applied first.

    Args:
        model: returns ``(B, C)`` or ``(S, B, C)`` logits.
        x: training inputs, ``(N, C, H, W)`` when ``cfg.jitter`` is set.
        objective: see :data:`Objective`.
        cfg: optimiser, schedule, epochs, batch size.
        data_seed: seed of the minibatch order and of ``torch.manual_seed`` (dropout).
        val: optional ``(x_val, y_val)`` for a validation accuracy after every epoch (every
            ``cfg.val_every``-th and the last; NaN for the others).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; see :mod:`kdlib.lab.config`).
        desc: progress-bar label.
        monitor: optional ``monitor(model) -> (S,)`` evaluated after every epoch (for example
            :func:`gradient_ratio_monitor`); it must leave the model's parameters unchanged.
        lr_scale: one factor per model, ``> 0``: model ``s`` trains at the learning rate
            ``lr_scale[s] * cfg.lr_at(step, steps)``, so students of one stack can differ in their
            learning rate. Its loss is multiplied by the factor before the backward pass, which for SGD
            with momentum and no weight decay is the same update as its own learning rate (the momentum
            buffer is linear in the gradients; clipping measures the unscaled gradient); so only SGD
            without weight decay takes it. The recorded losses are the unscaled ones.

    Returns:
        ``{"train_loss": [[...] per model], "val_accuracy": [[...] per model]}``, one value per
        epoch (nats; fractions); the validation lists are empty without ``val``; with ``monitor``
        also ``"monitor"``, its values after each epoch.
    """
    scale = _lr_scale(lr_scale, cfg, x.device)
    if x.device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(data_seed)
    gen = torch.Generator().manual_seed(data_seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(cfg, params)
    n = x.shape[0]
    steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    step = 0
    num_models = 0
    loss_curve: list[torch.Tensor] = []
    val_curve: list[torch.Tensor] = []
    monitor_curve: list[torch.Tensor] = []
    fill = float(x.amin()) if cfg.jitter else 0.0
    model.train()
    for epoch in progress(range(cfg.epochs), desc=desc, unit="epoch"):
        total: torch.Tensor | None = None  # sum over the epoch's examples of each model's loss, float64
        for idx in batch_indices(n, cfg.batch_size, gen, device=x.device):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, steps)
            xb = random_translate(x[idx], cfg.jitter, fill) if cfg.jitter else x[idx]
            with autocast(x.device, precision):
                logits = model(xb)
            losses = objective(logits, idx)
            if scale is not None and scale.shape != losses.shape:
                raise ValueError(f"lr_scale must have one factor per model: {scale.shape[0]} factors, "
                                 f"{losses.shape[0]} models")
            opt.zero_grad(set_to_none=True)
            (losses.sum() if scale is None else (losses * scale).sum()).backward()
            if cfg.clip_norm is not None:
                clip_per_model(params, cfg.clip_norm, losses.shape[0], grad_scale=scale)
            opt.step()
            if total is None:  # no host sync: the sum stays on the device until the epoch ends
                total = torch.zeros(losses.shape, dtype=torch.float64, device=losses.device)
            total.add_(losses.detach(), alpha=len(idx))
            step += 1
        assert total is not None  # an epoch has at least one batch
        num_models = total.shape[0]
        loss_curve.append(total / n)
        if val is not None and ((epoch + 1) % cfg.val_every == 0 or epoch == cfg.epochs - 1):
            with autocast(x.device, precision):
                logits = predict_logits(model, val[0])
            val_curve.append(accuracy(logits.float(), val[1]).reshape(-1))
            model.train()
        elif val is not None:  # not measured this epoch (cfg.val_every)
            val_curve.append(torch.full((num_models,), math.nan, dtype=torch.float64, device=x.device))
        if monitor is not None:
            monitor_curve.append(monitor(model).reshape(-1))  # predict_logits restores train mode
    model.eval()

    def per_model(curve: list[torch.Tensor]) -> list[list[float]]:
        return torch.stack(curve, dim=1).tolist() if curve else [[] for _ in range(num_models)]

    out = {"train_loss": per_model(loss_curve), "val_accuracy": per_model(val_curve)}
    if monitor is not None:
        out["monitor"] = per_model(monitor_curve)
    return out
