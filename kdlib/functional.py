r"""The distillation loss as a function, in the style of :mod:`torch.nn.functional`.

.. math:: \begin{aligned}
          \ell_b = {}& (1-\beta)\,\bigl(-\log \operatorname{softmax}(z_b)_{y_b}\bigr) \\
          &+ \beta\,\frac{T^2}{c_\alpha}\,D_\alpha\bigl(\operatorname{softmax}(v_b/T)\,\big\|\,
          \operatorname{softmax}(z_b/T)\bigr)
          \end{aligned}

for each row :math:`b` with student logits :math:`z_b`, teacher logits :math:`v_b` and label
:math:`y_b`; :math:`c_\alpha = \alpha` with ``normalize_by_alpha``, else 1. The hard term is the
thesis's eq (1.9)–(1.10) with one-hot labels, the soft term eq (1.11)–(1.12) with :math:`D_{KL}`
replaced by the Rényi divergence :math:`D_\alpha` (eq 1.16), mixed as in eq (1.13). At
``alpha = 1`` this is Hinton's loss. With ``reverse=True`` the two distributions of the soft
term swap places, :math:`D_\alpha(\operatorname{softmax}(z_b/T)\,\|\,\operatorname{softmax}(v_b/T))`:
at ``alpha = 1`` the *reverse* Kullback–Leibler divergence, the usual alternative to KL in
distillation (mode-seeking rather than mass-covering). It is not in the thesis; the Rényi
experiments use it as a second baseline.

This module is the one implementation of the loss: :class:`kdlib.DistillationLoss` is a thin
module over it, and the experiment engine (:mod:`kdlib.lab.train`) calls it with tensor
hyperparameters of shape ``(S, 1)`` to train S stacked students at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from kdlib._validation import (
    check_beta,
    check_device,
    check_logits_pair,
    check_logits_values,
    check_order,
    check_temperature_arg,
)
from kdlib.divergences import _alpha_factor, _renyi_logits_sided, renyi_divergence_logits

__all__ = ["distillation_loss", "LossComponents", "REDUCTIONS"]

#: The reductions of :func:`distillation_loss`.
REDUCTIONS = ("mean", "sum", "none")


class LossComponents(NamedTuple):
    """The parts of the distillation loss, each reduced as the loss is.

    Attributes:
        total: :math:`(1-\\beta)\\,\\mathrm{ce} + \\beta\\,\\mathrm{soft}`, the value of
            :func:`distillation_loss`.
        ce: the cross-entropy of the student (at ``T = 1``) with the labels, in nats.
        soft: :math:`T^2 D_\\alpha(\\text{teacher}_T \\| \\text{student}_T)` in nats (divided by
            :math:`\\alpha` where ``normalize_by_alpha``), not yet weighted by :math:`\\beta`.
    """

    total: torch.Tensor
    ce: torch.Tensor
    soft: torch.Tensor


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float | Sequence[float] | torch.Tensor = 1.0,
    T: float | torch.Tensor = 4.0,
    beta: float | torch.Tensor = 0.9,
    normalize_by_alpha: bool | torch.Tensor = False,
    reverse: bool | Sequence[bool] = False,
    reduction: str = "mean",
    validate: bool = True,
    return_components: bool = False,
) -> torch.Tensor | LossComponents:
    r"""Rényi knowledge-distillation loss: cross-entropy mixed with a tempered Rényi divergence.

    Computes :math:`\ell_b` of the module docstring for every row and reduces it: ``"mean"`` over
    all rows (the default), ``"sum"``, or ``"none"`` (one value per row). For S stacked students
    (logits ``(S, B, n)``, hyperparameters ``(S, 1)``) use ``reduction="none"`` and take
    ``.mean(-1)`` for one loss per student.

    Relation to the thesis: eq (1.9)–(1.13) *sum* over the :math:`N` samples; ``"mean"`` averages,
    which only rescales the learning rate (as ``reduction="batchmean"`` does in
    :func:`torch.nn.functional.kl_div`). At ``alpha = 1`` without ``normalize_by_alpha`` the value
    equals ``(1 - beta) * F.cross_entropy(z, y) + beta * T**2 * F.kl_div(F.log_softmax(z / T, -1),
    F.softmax(v / T, -1), reduction="batchmean")`` up to rounding. The factor :math:`T^2` keeps
    the soft term's gradient of the size of the hard term's as :math:`T` grows (eq 1.14–1.15); for
    zero-mean logits and large :math:`T` the gradient of :math:`T^2 D_\alpha` tends to
    :math:`\alpha(z - v)/n`, so the order also scales the step, which ``normalize_by_alpha``
    removes (it is undefined for the orders 0 and :math:`\infty`).

    Args:
        student_logits: :math:`z`, ``(..., n)``, finite.
        teacher_logits: :math:`v`, ``(..., n)``, finite; leading dimensions broadcastable to the
            student's (e.g. ``(B, n)`` against stacked students ``(S, B, n)``); the row shape is
            the student's, ``student.shape[:-1]``. Detach it unless the teacher is to be trained.
        targets: integer class indices in ``[0, n)`` (any integer dtype; converted to int64)
            broadcastable to the row shape ``student.shape[:-1]``.
        alpha: Rényi order in :math:`[0, \infty]` (``math.inf`` allowed; 1 is KL); a tuple or list of
            them, one per index of the rows' first dimension (e.g. one per stacked student, rows
            ``(S, B)``), which evaluates each order's terms on its own rows only (the cheap way to train a
            stack that mixes orders); or a tensor of
            orders broadcastable to the row shape (e.g. ``(S, 1)``).
        T: temperature, finite and ``> 0``, or a tensor of them broadcastable to the row shape.
        beta: weight of the soft term in ``[0, 1]``, or a tensor of them.
        normalize_by_alpha: divide the soft term by :math:`\alpha`; a bool, or a bool tensor
            broadcastable to the row shape (per stacked student).
        reverse: a bool, or one per index of the rows' first dimension (stacked students that mix
            both directions share one evaluation); ``True`` computes the soft term as
            :math:`T^2 D_\alpha(\text{student}_T \| \text{teacher}_T)` (reverse KL at
            ``alpha = 1``). Its gradient with respect to the student logits is the analytic
            teacher-side gradient of :func:`~kdlib.divergences.renyi_divergence_logits`,
            :math:`\tfrac{\alpha}{\alpha-1}(w - q)/T` (:math:`q(\log q - \log p - D)/T` at
            ``alpha = 1``), with the roles of :math:`p` and :math:`q` exchanged.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        validate: check the values of the arguments (finite logits, targets in range,
            hyperparameters in range: one host sync). ``False`` in hot loops whose inputs are
            valid by construction; shapes and dtypes are still checked.
        return_components: return :class:`LossComponents` ``(total, ce, soft)``, each reduced
            alike, instead of the loss alone.

    Returns:
        The loss in nats: a scalar for ``"mean"``/``"sum"``, the row shape for ``"none"``; in the
        dtype of the student logits (16-bit logits are computed in float32).

    Raises:
        ValueError: a logits tensor with NaN or ``+-inf`` or not floating; mismatched shapes,
            including a teacher whose leading dimensions would enlarge the student's rows (e.g. a
            student ``(B, 1, n)`` against a teacher ``(B, n)``); targets not integer class indices
            in ``[0, n)``; ``alpha`` NaN or negative; ``T`` not finite and ``> 0``; ``beta`` outside
            ``[0, 1]``; an unknown ``reduction``; ``normalize_by_alpha`` with an order 0, ``inf`` or
            below the smallest normal number of the computation (``2.2e-308`` for float64 logits,
            ``1.2e-38`` otherwise); a meta tensor, or a tensor argument on another device than the
            student logits (0-dim CPU tensors excepted); ``validate`` or ``reverse`` not a bool; a
            number beyond float's range (e.g. ``10**400``) as ``alpha``, ``T`` or ``beta``; with
            ``validate``, logits so large for ``T`` that a row's range times ``max(1, 1/T, T)``
            exceeds the computation dtype's largest number over 16 (far outside the documented
            range of :func:`kdlib.divergences.renyi_divergence_logits`; the value would be NaN, see
            :func:`kdlib._validation.check_logits_values`).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(validate, bool):
        raise ValueError(f"validate must be a bool, got {type(validate).__name__}")
    if isinstance(reverse, tuple | list):
        if not all(isinstance(f, bool) for f in reverse):
            raise ValueError("reverse as a sequence must hold bools, one per stacked row")
    elif not isinstance(reverse, bool):
        raise ValueError(f"reverse must be a bool or a sequence of bools, got {type(reverse).__name__}")
    rows = check_logits_pair(student_logits, teacher_logits, "student_logits", "teacher_logits", targets,
                             validate=False)
    if rows != student_logits.shape[:-1]:
        # F.cross_entropy would refuse; broadcasting would silently repeat the student's rows
        raise ValueError(
            f"teacher_logits of shape {tuple(teacher_logits.shape)} must broadcast to the student's rows, "
            f"not enlarge them: student_logits has shape {tuple(student_logits.shape)}, and the pair would "
            f"give rows {tuple(rows)} (a teacher (B, n) against students (S, B, n) is the supported stack)")
    if isinstance(reverse, tuple | list):
        if len(rows) == 0 or len(reverse) != rows[0]:
            raise ValueError(f"reverse as a sequence must have one flag per index of the rows' first "
                             f"dimension (rows {tuple(rows)}), got {len(reverse)}")
        # one direction for every row is the plain bool; only a mix needs the per-row evaluation
        reverse = tuple(reverse) if len(set(reverse)) > 1 else bool(reverse and reverse[0])
    alpha = check_order(alpha, rows, validate=validate)
    T = check_temperature_arg(T, rows, validate=validate)
    beta = check_beta(beta, validate=validate)
    if isinstance(beta, torch.Tensor):
        _check_rows(beta, rows, "beta")
    for name, value in (("alpha", alpha), ("T", T), ("beta", beta),
                        ("normalize_by_alpha", normalize_by_alpha)):
        check_device(value, name, student_logits.device, "student_logits")
    if validate:  # finite logits, targets in range, and T**2 D that cannot overflow (one host sync)
        check_logits_values(student_logits, teacher_logits, "student_logits", "teacher_logits", targets, T=T,
                            t_squared=True, alpha_factor=_alpha_factor(alpha))
    # a sequence of orders (one per stacked student) goes to the divergence as it is, which evaluates each
    # order on its own rows only; the division by alpha takes it as a column
    col = _order_column(alpha, rows, student_logits) if isinstance(alpha, tuple) else alpha
    norm = _check_normalize(normalize_by_alpha, col, rows, validate, student_logits.dtype)

    s = student_logits if student_logits.dtype in (torch.float32, torch.float64) else student_logits.float()
    t = teacher_logits if teacher_logits.dtype in (torch.float32, torch.float64) else teacher_logits.float()
    # Hard term: cross-entropy of the student at T = 1 (eq 1.9-1.10), per row, as logsumexp(z) - z_y
    # (F.cross_entropy's log_softmax over a few classes is several times slower on a CPU).
    y = targets if targets.dtype == torch.int64 else targets.long()  # gather takes int64 only
    y = y if y.shape == rows else y.expand(rows)
    ce = torch.logsumexp(s, -1) - s.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    # Soft term: T^2 D_alpha(teacher_T || student_T) per row (eq 1.11-1.12 with D_alpha, 1.16), or
    # T^2 D_alpha(student_T || teacher_T) when reversed (the gradient then takes the first argument's path).
    if isinstance(reverse, tuple):
        d = _mixed_directions(s, t, alpha, T, reverse, rows)
    else:
        d = renyi_divergence_logits(s, t, alpha, T, validate=False) if reverse else \
            renyi_divergence_logits(t, s, alpha, T, validate=False)
    soft = _soft_term(d, T, col, norm)
    if isinstance(beta, torch.Tensor):
        beta = beta.to(d.dtype)
    total = (1.0 - beta) * ce + beta * soft
    parts = LossComponents(*(_reduce(x, reduction).to(student_logits.dtype) for x in (total, ce, soft)))
    return parts if return_components else parts.total


def _mixed_directions(s: torch.Tensor, t: torch.Tensor, alpha, T, reverse: tuple[bool, ...],
                      rows: torch.Size) -> torch.Tensor:
    """The soft term's divergence per row with forward rows ``D(teacher || student)`` and reverse rows
    ``D(student || teacher)``, in one evaluation: the first argument holds the teacher's logits in the
    forward rows and the student's in the reverse ones, the second the other way round, and the backward
    pass computes each row's gradient for its student's side only."""
    flip = torch.tensor(reverse, device=s.device).view(-1, *([1] * len(rows)))
    first, second = torch.where(flip, s, t), torch.where(flip, t, s)
    return _renyi_logits_sided(first, second, alpha, T, reverse)


def _order_column(orders: tuple[float, ...], rows: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """One order per index of the rows' first dimension as a tensor that broadcasts to ``rows``
    (``(S, 1)`` for rows ``(S, B)``), in float64 for float64 logits, else float32."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(orders, dtype=dtype, device=like.device).view(-1, *([1] * (len(rows) - 1)))


def _check_rows(x: torch.Tensor, rows: torch.Size, name: str) -> None:
    try:
        ok = torch.broadcast_shapes(x.shape, rows) == rows
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} (a tensor of shape {tuple(x.shape)}) must broadcast to the row shape "
                         f"{tuple(rows)} of the logits")


def _check_normalize(norm: bool | torch.Tensor, alpha: float | torch.Tensor, rows: torch.Size,
                     validate: bool, dtype: torch.dtype) -> bool | torch.Tensor:
    """``normalize_by_alpha`` as a bool or a bool tensor; refuses it for the orders 0 and inf, and for
    orders below the smallest normal number of the computation (float64 for float64 logits, else
    float32), whose quotient would not be accurate (a subnormal order gave NaN)."""
    tiny = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).tiny
    if isinstance(norm, torch.Tensor):
        if norm.dtype != torch.bool:
            raise ValueError(f"normalize_by_alpha as a tensor must have dtype torch.bool, got {norm.dtype}")
        _check_rows(norm, rows, "normalize_by_alpha")
        if not validate or not bool(norm.any()):
            return norm
        a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=torch.float64)
        shape = torch.broadcast_shapes(a.shape, norm.shape)
        a = a.expand(shape)[norm.expand(shape)]
    elif isinstance(norm, bool):
        if not norm:
            return False
        if not validate and isinstance(alpha, torch.Tensor):
            return True
        a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=torch.float64)
    else:
        raise ValueError(f"normalize_by_alpha must be a bool or a bool tensor, got {type(norm).__name__}")
    if bool(((a == 0) | torch.isinf(a)).any()):
        raise ValueError("alpha must be in (0, inf) where normalize_by_alpha is set (the soft term is "
                         f"divided by alpha; orders 0 and inf are undefined there), got {alpha!r}")
    if bool((a < tiny).any()):
        raise ValueError(f"alpha must be at least {tiny:.4g} (the smallest normal number of the computation) "
                         f"where normalize_by_alpha is set: the soft term is divided by alpha, got {alpha!r}")
    return norm


def _soft_term(d: torch.Tensor, T: float | torch.Tensor, alpha: float | torch.Tensor,
               norm: bool | torch.Tensor) -> torch.Tensor:
    """``T**2 d``, with ``d`` divided by ``alpha`` first where ``norm`` (``T**2 / alpha`` would overflow
    for the smallest orders, while ``D_alpha / alpha`` stays finite)."""
    dtype = d.dtype
    c = T.to(dtype) ** 2 if isinstance(T, torch.Tensor) else T * T
    if isinstance(norm, torch.Tensor):
        a = alpha.to(dtype) if isinstance(alpha, torch.Tensor) else torch.tensor(alpha, dtype=dtype)
        d = d / torch.where(norm, a.to(norm.device), torch.ones((), dtype=dtype, device=norm.device))
    elif norm:
        d = d / (alpha.to(dtype) if isinstance(alpha, torch.Tensor) else alpha)
    return d * c


def _reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
