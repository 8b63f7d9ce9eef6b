r"""Temperature softmax, KL divergence and Rényi divergence (thesis eq 1.3, 1.4, 1.16).

All functions take torch tensors with the classes on the last dimension and any
number of leading batch dimensions; divergences are returned in nats, one value
per row.

Numerical design
----------------
Every divergence is evaluated from log-probabilities. Write :math:`r_i = \log p_i - \log q_i`
and :math:`\varepsilon = \alpha - 1`. Eq (1.16) is

.. math:: D_\alpha(P\|Q) = \frac{1}{\alpha-1}\log\sum_i p_i^\alpha q_i^{1-\alpha}
          = \frac{1}{\varepsilon}\log \mathbb{E}_P\big[e^{\varepsilon r}\big]
          = \frac{1}{\alpha-1}\log \mathbb{E}_Q\big[e^{\alpha r}\big].

Three evaluations are used, chosen per row:

* **log-sum-exp** of :math:`\alpha\log p + (1-\alpha)\log q` (scaled by :math:`\max(\alpha, 1)`
  so that no intermediate overflows, even for :math:`\alpha = 10^{300}`). Accurate when
  :math:`\alpha` is away from 0 and 1.
* **centred around P** for :math:`|\alpha - 1| < 1/4`: with :math:`c = \mathbb{E}_P r = D_{KL}`
  and :math:`u = \varepsilon (r - c)`,
  :math:`D_\alpha = c + \log\big(1 + \sum_i p_i (e^{u_i} - 1 - u_i)\big)/\varepsilon`.
  Every summand is :math:`\ge 0`, so nothing cancels, and the limit :math:`\alpha \to 1`
  (eq 1.28–1.31) is reached continuously:
  :math:`D_\alpha = D_{KL} + \tfrac{\varepsilon}{2}\operatorname{Var}_P r + O(\varepsilon^2)`.
* **centred around Q** for :math:`\alpha < 1/4`, the same with :math:`Q` as base and
  :math:`\alpha` as coefficient, so that :math:`D_\alpha \approx \alpha\, D_{KL}(Q\|P)` stays
  accurate in relative terms as :math:`\alpha \to 0`.

A centred evaluation that would overflow falls back to log-sum-exp (which is then accurate,
because the result is no longer small). The orders 0, 1 and :math:`\infty` use their closed
forms (eq 1.27, 1.31, 1.33).

From logits (:func:`renyi_divergence_logits`), :math:`r` is not formed as the difference of two
log-probabilities (numbers near :math:`\log n`, whose rounding would swamp a small divergence,
e.g. at large ``T`` or when the student is close to the teacher). Instead
:math:`\delta = (v - z)/T` up to a per-row constant is formed from the logits (their difference
is exact in float64), centred, :math:`d = \delta - \mathbb{E}_P\delta`, and then

.. math:: D_{KL} = A = \log \mathbb{E}_P e^{-d}, \qquad r = d + A, \qquad
          D_\alpha = A + \frac{1}{\alpha-1}\log \mathbb{E}_P e^{(\alpha-1) d}
          = \frac{\alpha \log\mathbb{E}_Q e^{e} - \log\mathbb{E}_Q e^{\alpha e}}{1-\alpha},

with :math:`e = \delta - \mathbb{E}_Q\delta`, each :math:`\log\mathbb{E}\,e^{x}` (with
:math:`\mathbb{E}x = 0`) evaluated as :math:`\log(1 + \mathbb{E}[e^{x} - 1 - x])`, a sum of
non-negative terms. The P-centred form serves the orders from :data:`_P_CENTRED` = 1/4 up, the
Q-centred one the orders below (for close distributions the P-centred value of an order below 1 is
about :math:`1/\alpha` times smaller than its terms, at most 4 from 1/4 up; the Q-centred form needs two
log-expectations); for orders below 1 they are differences of two non-negative terms, used where the
cancellation costs less than a factor 16, else log-sum-exp (then accurate). So every value keeps
its relative accuracy, in float32 as in float64, over the documented range.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from kdlib._validation import (
    all_finite,
    check_class_tensor,
    check_device,
    check_finite_tensor,
    check_logits_pair,
    check_logits_values,
    check_order,
    check_probabilities,
    check_row_shapes,
    check_temperature,
    check_temperature_arg,
)

__all__ = [
    "softmax_t",
    "kl_divergence",
    "renyi_divergence",
    "renyi_divergence_logits",
    "renyi_gradient",
]

#: Half-width of the windows around alpha = 1 and alpha = 0 where the centred evaluations are used.
_NEAR = 0.25
#: |u| below which e^u - 1 - u is evaluated by its Taylor series (above it, ``exp(u) - 1 - u`` loses at
#: most about 11 ulps: e^u - 1 - u >= 0.106 there while exp(u) <= 1.65 at the edge).
_SMALL_U = 0.5
#: u above which e^u - 1 - u is evaluated as e^(log b + u) - b (1 + u) to avoid overflow.
_BIG_U = 30.0
#: Taylor coefficients of (e^u - 1 - u) / u^2 = sum_k u^k / (k + 2)!; at |u| = 0.5, 8 terms leave
#: 4e-8 relative (float32) and 15 terms 6e-18 (float64).
_PHI2 = [1.0 / math.factorial(k + 2) for k in range(15)]
_PHI2_TERMS = {torch.float32: 8, torch.float64: 15}


def softmax_t(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    r"""Temperature-scaled softmax, thesis eq (1.3).

    .. math:: p_c^T = \frac{\exp(z_c / T)}{\sum_{k=1}^n \exp(z_k / T)}

    Args:
        logits: tensor of shape ``(..., n)``, the scores :math:`z`, finite.
        T: temperature, a finite number ``> 0``. ``T = 1`` is the plain softmax
            (eq 1.2); large ``T`` flattens the distribution toward uniform and
            ``T -> 0`` sharpens it toward the arg-max one-hot vector.

    Returns:
        Probabilities of shape ``(..., n)`` that sum to 1 along the last dimension, in the dtype of
        ``logits``; float16 and bfloat16 logits are divided and normalised in float32 (``z / T``
        overflows float16 at small ``T``) and the result is rounded to the input dtype. Where
        ``z / T`` overflows (e.g. logits of 3e38 at ``T = 1e-3``, or any logits at ``T = 1e-320``)
        each row is centred on its maximum before it is divided (in float64), so the result is the
        limit, the arg-max vector (shared among tied maxima), never NaN.

    Raises:
        ValueError: if ``T <= 0`` or ``T`` is not finite (a Python int beyond float's range
            included), ``T`` is a tensor that requires grad (``softmax_t`` takes ``T`` as a number,
            and its gradient would be lost: for a differentiable temperature use
            :func:`renyi_divergence_logits` or :func:`kdlib.functional.distillation_loss`), or
            ``logits`` contain NaN or ``+-inf`` or are a meta tensor.
    """
    T = check_temperature(T)
    check_class_tensor(logits, "logits")
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    x = z / T
    if not all_finite(x):  # one host sync, as the check of the logits alone took
        check_finite_tensor(logits, "logits")
        # finite logits whose z / T overflows: centre each row first (its maximum becomes 0, the others
        # <= 0, possibly -inf), and divide in float64, where T > 0 is never rounded to 0
        zc = (z - z.amax(-1, keepdim=True)).to(torch.float64)
        x = (zc / T).to(x.dtype)
    p = torch.softmax(x, dim=-1)
    return p if p.dtype == logits.dtype or not logits.is_floating_point() else p.to(logits.dtype)


# ---------------------------------------------------------------------------
# Numerical kernels (no autograd inside; the autograd Functions below call them).
# ---------------------------------------------------------------------------


def _compute_dtype(*xs: object) -> torch.dtype:
    """float64 if any tensor argument is float64, else float32 (16-bit inputs are computed in float32)."""
    for x in xs:
        if isinstance(x, torch.Tensor) and x.dtype == torch.float64:
            return torch.float64
    return torch.float32


def _broadcast(a: torch.Size, b: torch.Size) -> torch.Size:
    """The broadcast of two shapes that are known to broadcast (checked by the callers' arguments);
    ``torch.broadcast_shapes`` costs tens of microseconds a call, which add up in a training step."""
    if a == b:
        return a
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    return torch.Size(x if y == 1 else y for x, y in zip(a, b, strict=True))


@functools.cache
def _cached_scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(value, dtype=dtype, device=device)


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device (cached: the series' coefficients are
    the same every call)."""
    return _cached_scalar(value, like.dtype, like.device)


def _weighted_excess(lb: torch.Tensor, u: torch.Tensor, b: torch.Tensor | None = None,
                     keep: list | None = None) -> torch.Tensor:
    """``sum_i b_i (e^{u_i} - 1 - u_i)`` over the last dim (keepdim), with ``b = exp(lb)``.

    Accurate to a few ulps for every ``u`` (series for ``|u| < 1/2``, ``exp(u) - 1 - u`` beyond) and
    free of overflow for large ``u`` unless the sum itself overflows (then ``inf``). Entries with
    ``lb = -inf`` must carry a finite ``u`` (the caller puts 0 there); they contribute 0. ``b``, if
    given, is ``exp(lb)`` already computed by the caller. ``keep``, if given, receives ``exp(u)`` where every
    ``u`` is at most :data:`_BIG_U` on the CPU (a by-product; see :func:`_order_terms`).

    Cost: float32 ``expm1`` has no vectorised kernel on the CPU (ten times ``exp``), and boolean
    masks cost as much as an ``exp``; so the series runs on ``u`` clamped to the window, ``exp`` on
    all of ``u``, one mask selects, and the overflow branch is evaluated only where some ``u``
    exceeds :data:`_BIG_U` (on the CPU this is checked on the host; elsewhere it always runs).
    """
    if u.dtype == torch.float32:
        return _weighted_excess_f32(lb, u, b, keep)
    if b is None:
        b = torch.exp(lb)
    us = u.clamp(-_SMALL_U, _SMALL_U)
    coeffs = _PHI2[:_PHI2_TERMS.get(u.dtype, 8)]
    h = torch.full_like(us, coeffs[-1])
    for c in reversed(coeffs[:-1]):  # Horner, one fused multiply-add a term: h = c + h u
        torch.addcmul(_scalar(c, h), h, us, out=h)
    h.mul_(us).mul_(us)  # u^2 phi2(u) = e^u - 1 - u on the window
    um = u.clamp(max=_BIG_U)
    eu = torch.exp(um)
    term = torch.where(us == u, h, (eu - 1.0).sub_(um)).mul_(b)  # us == u: inside the window
    if u.device.type != "cpu" or bool((u > _BIG_U).any()):  # element-wise: a NaN row changes nothing
        big = u > _BIG_U
        ub = torch.where(big, u, 0.0)
        term = torch.where(big, torch.exp(lb + ub).sub_(b * (1.0 + ub)), term)
    elif keep is not None:
        keep.append(eu)
    return term.sum(-1, keepdim=True)


#: Below this log-weight a float32 weight exp(lb) is no longer a normal number (kept in float64 then).
_TINY_LOG_WEIGHT = -80.0


def _weighted_excess_f32(lb: torch.Tensor, u: torch.Tensor, b: torch.Tensor | None, keep: list | None
                         ) -> torch.Tensor:
    """:func:`_weighted_excess` for float32: ``e^u - 1 - u`` as ``expm1(u) - u`` in float64 (a vectorised
    kernel, where float32's is not), four operations instead of the series' twenty; its relative error,
    about ``2e-16 / |u|``, is below float32's rounding wherever ``|u| > 1e-8`` (and about ``2e-6`` at
    ``|u| = 1e-10``, rows some ``1e-20`` apart). Nothing overflows below ``u = 709``; beyond, the sum is
    ``inf`` or NaN and :func:`_cgf` takes the log-sum-exp. The weights are taken in float64 where
    some is below ``e^-80`` (not a normal float32). ``keep`` receives ``exp(u)`` in float32 where every
    ``u`` is at most :data:`_BIG_U` (checked on the host)."""
    u64 = u.double()
    if b is None or float(lb.amin()) < _TINY_LOG_WEIGHT:
        b = torch.exp(lb.double())
    em1 = torch.expm1(u64)
    total = (em1 - u64).mul_(b).sum(-1, keepdim=True).float()
    if keep is not None and not bool((u > _BIG_U).any()):
        keep.append(torch.exp(u))
    return total


def _lse_parts(lp: torch.Tensor, lq: torch.Tensor, alpha, mask: torch.Tensor | None = None):
    """Log-sum-exp evaluation of sum p^a q^(1-a) for a finite order (scalar or (..., 1) tensor).

    With ``k = max(a, 1)`` and ``v = (a log p + (1 - a) log q) / k``, returns ``(m, L, k, w)`` where
    ``m = max v``, ``L = log sum exp(k (v - m))`` and ``w = exp(k (v - m) - L)`` is the tilted
    distribution; then ``log sum p^a q^(1-a) = k m + L``. Entries outside ``mask`` are left out.
    """
    if isinstance(alpha, torch.Tensor):
        k = alpha.clamp(min=1.0)
        a1 = alpha.clamp(max=1.0)
        a2 = (1.0 - alpha) / k
        v = a1 * lp + a2 * lq
    else:
        k = max(alpha, 1.0)
        a1 = min(alpha, 1.0)
        a2 = (1.0 - alpha) / k
        v = torch.add(lp * a1, lq, alpha=a2) if a1 != 1.0 else torch.add(lp, lq, alpha=a2)
    if mask is not None:
        v = torch.where(mask, v, torch.full_like(v, -math.inf))
    m, idx = v.max(-1, keepdim=True)
    fin = torch.isfinite(m)
    m_safe = torch.where(fin, m, torch.zeros_like(m))
    e = torch.exp((v - m_safe) * k)
    Z = e.sum(-1, keepdim=True)
    # the maximal entry contributes exactly 1: log1p of the others keeps a sum close to 1 exact
    L = torch.where(fin, torch.log1p(e.scatter(-1, idx, 0.0).sum(-1, keepdim=True)), torch.log(Z))
    w = torch.where(Z > 0, e / Z, torch.zeros_like(e))
    return m_safe, L, k, w


def _phi1(y: torch.Tensor) -> torch.Tensor:
    """``(e^y - 1) / y`` with the value 1 at ``y = 0``."""
    nz = y != 0
    ys = torch.where(nz, y, torch.ones_like(y))
    return torch.where(nz, torch.expm1(ys) / ys, torch.ones_like(y))


#: Orders from this one up take the P-centred evaluation, those below the Q-centred one (module docstring).
_P_CENTRED = 0.25
#: Orders above this are evaluated in the scaled form (alpha * log p must not overflow).
_HUGE_ORDER = 1e8
#: For orders below 1 the centred value is a difference of two non-negative terms; it is used
#: where the larger term is at most this many times the result (else log-sum-exp, which is then
#: the accurate one: the divergence is no longer small next to the log-probabilities).
_MAX_CANCEL = 16.0


def _cgf(lb: torch.Tensor, x: torch.Tensor, b: torch.Tensor | None = None, keep: list | None = None
         ) -> torch.Tensor:
    """``log sum_i b_i e^{x_i}`` over the last dim (keepdim), ``b = exp(lb)``, for ``x`` of b-mean 0.

    Evaluated as ``log1p(sum_i b_i (e^{x_i} - 1 - x_i))`` (the linear term, zero up to the rounding
    of the centring, is left out; its effect on the divergences is of second order): every summand
    is ``>= 0``, so a small result keeps its relative accuracy. Where that sum overflows (the result
    is then large), the log-sum-exp of ``lb + x`` (evaluated only where needed on the CPU). ``b``:
    ``exp(lb)`` if the caller has it; ``keep``: see :func:`_weighted_excess`.
    """
    K = torch.log1p(_weighted_excess(lb, x, b, keep))
    if K.device.type == "cpu" and bool(torch.isfinite(K).all()):
        return K
    return torch.where(torch.isfinite(K), K, torch.logsumexp(lb + x, -1, keepdim=True))


def _zero_at_argmax(delta: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """``delta - delta_k`` with ``k`` the arg-max of ``lb``: exactly 0 there, so that the mean of
    ``delta`` under a nearly one-hot ``b = exp(lb)`` is a sum of small terms (no cancellation)."""
    shape = _broadcast(delta.shape, lb.shape)
    k = lb.expand(shape).argmax(-1, keepdim=True)
    return delta.expand(shape) - delta.expand(shape).gather(-1, k)


@functools.lru_cache(maxsize=256)
def _orders(alpha: tuple) -> list[tuple[float, slice | torch.Tensor]]:
    """The distinct orders of a tuple (one per index of the rows' first dimension) with their rows: a
    slice where the order's rows are contiguous, else a CPU index tensor; in order of first appearance.
    Cached (a training run passes the same tuple every step; the result is never modified)."""
    where: dict[float, list[int]] = {}
    for i, a in enumerate(alpha):
        where.setdefault(a, []).append(i)
    return [(a, _row_index(rows)) for a, rows in where.items()]


def _row_index(rows: list[int]) -> slice | torch.Tensor:
    """Increasing row numbers as a slice where they are contiguous, else a CPU index tensor."""
    return slice(rows[0], rows[-1] + 1) if rows[-1] - rows[0] == len(rows) - 1 else torch.tensor(rows)


def _rows(x, rows, n: int, dim: int):
    """Rows ``rows`` of the first of ``dim`` dimensions of ``x`` (length ``n``), or ``x`` itself where it
    broadcasts along that dimension (fewer dimensions, or length 1); numbers pass through."""
    if not isinstance(x, torch.Tensor) or x.dim() < dim or x.shape[0] != n:
        return x
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows.to(x.device))


def _centred(alpha: float) -> bool:
    """Whether order ``alpha`` takes the P-centred evaluation with its log-sum-exp fallback in the
    unscaled form: ``_P_CENTRED <= alpha <= _HUGE_ORDER``, ``alpha != 1``. Such orders differ only by
    the number ``alpha``, so several of them evaluate as one group with an ``(n, 1, ...)`` column."""
    return _P_CENTRED <= alpha <= _HUGE_ORDER and alpha != 1.0


@functools.lru_cache(maxsize=256)
def _order_groups(alpha: tuple) -> list[tuple[float | tuple, slice | torch.Tensor]]:
    """:func:`_orders` with every order of :func:`_centred` in one group, keyed by their tuple (one
    order per row of the group); the other orders (0, 1, inf, below 1/4, above 1e8) one group each."""
    rows = [i for i, a in enumerate(alpha) if _centred(a)]
    rest = [(a, r) for a, r in _orders(alpha) if not _centred(a)]
    if not rows:
        return rest
    return [(tuple(alpha[i] for i in rows), _row_index(rows)), *rest]


def _order_terms(lp, lq, alpha: float | torch.Tensor, delta, p, d, A, r):
    """``(D, tilt)`` of :func:`_renyi_logprobs` for one order given as a number, or for orders that are
    all :func:`_centred` given as a column tensor (one per row), from the order-free terms
    ``p = exp(lp)``, ``d``, ``A = D_KL`` and ``r``."""
    if isinstance(alpha, torch.Tensor):
        return _centred_terms(lp, lq, alpha, p, d, A)
    if alpha == 1.0:
        return A, ("log", lp, None)
    if math.isinf(alpha):
        D, idx = r.max(-1, keepdim=True)
        return D, ("onehot", idx, None)
    if alpha == 0.0:
        # Softmax distributions have full support, so Q(supp P) = 1 and D_0 = -log 1 = 0 (eq 1.27).
        return torch.zeros_like(A), ("log", lq, None)
    if alpha > _HUGE_ORDER:
        # P-centred, the log-sum-exp scaled so that alpha log p cannot overflow
        eps = alpha - 1.0
        Dc = A + _cgf(lp, eps * d, p) / eps

        def scaled_lse():
            m, L, k, w = _lse_parts(lp, lq, alpha)
            return m * (k / eps) + L / eps, ("w", w, None)

        return _centred_or_lse(Dc, torch.isfinite(Dc), p, [], scaled_lse, lp, lq)
    if _centred(alpha):
        return _centred_terms(lp, lq, alpha, p, d, A)
    # below 1/4: Q-centred, w proportional to q e^(alpha e)
    q = torch.exp(lq)
    dq = _zero_at_argmax(delta, lq)
    e_ = dq - (q * dq).sum(-1, keepdim=True)
    keep: list[torch.Tensor] = []
    aB = alpha * _cgf(lq, e_, q)
    Dc = (aB - _cgf(lq, alpha * e_, q, keep)) / (1.0 - alpha)
    ok = torch.isfinite(Dc) & (aB <= _MAX_CANCEL * (1.0 - alpha) * Dc)

    def lse():
        return _lse(torch.add(lq * (1.0 - alpha), lp, alpha=alpha), alpha)  # y = log(p^a q^(1-a))

    return _centred_or_lse(Dc, ok, q, keep, lse, lp, lq)


def _centred_terms(lp, lq, alpha: float | torch.Tensor, p, d, A):
    """:func:`_order_terms` of :func:`_centred` orders: a number, or a column of them (one per row);
    w is proportional to p e^((alpha - 1) d)."""
    eps = alpha - 1.0
    keep: list[torch.Tensor] = []
    Dc = A + _cgf(lp, eps * d, p, keep) / eps
    ok = torch.isfinite(Dc)
    if isinstance(eps, torch.Tensor):
        ok = ok & ((eps > 0) | (A <= _MAX_CANCEL * Dc))
    elif eps < 0:
        ok = ok & (A <= _MAX_CANCEL * Dc)
    return _centred_or_lse(Dc, ok, p, keep, lambda: _lse(lq * (1.0 - alpha) + lp * alpha, alpha), lp, lq)


def _lse(y: torch.Tensor, alpha: float | torch.Tensor):
    """``(D, tilt)`` by the log-sum-exp of ``y = log(p^alpha q^(1-alpha))``, over ``alpha - 1``."""
    m, i = y.max(-1, keepdim=True)
    e = torch.sub(y, m).exp_()
    # the maximal entry of e is exactly 1, and log1p of the sum of the others keeps a sum close to 1 exact
    D = (m + torch.log1p(e.scatter(-1, i, 0.0).sum(-1, keepdim=True))) / (alpha - 1.0)
    return D, ("ez", e, e.sum(-1, keepdim=True))


def _centred_or_lse(Dc, ok, base, keep, lse, lp, lq):
    """``(D, tilt)``: the centred value ``Dc`` where a row takes it (``ok``), else ``lse() -> (D, tilt)``.

    The tilted distribution of the rows that take the centred value is ``base e^u`` normalised, from the
    centred evaluation's ``exp(u)`` (``keep``: :func:`_weighted_excess` leaves it empty where some ``u``
    exceeded :data:`_BIG_U`, and elsewhere than on the CPU); where every row takes it, the log-sum-exp
    is not evaluated at all. A row that does not (a diverged student, say) changes nothing for the others.
    """
    centred = None
    if keep:
        e = base * keep[0]
        Z = e.sum(-1, keepdim=True)
        if bool(ok.all()):
            return Dc, ("ez", e, Z)
        centred = e / Z
    D, tilt = lse()
    if centred is not None:
        tilt = ("w", torch.where(ok, centred, _tilted(*tilt, lp, lq)), None)
    return torch.where(ok, Dc, D), tilt


def _renyi_logprobs(lp: torch.Tensor, lq: torch.Tensor, alpha, delta: torch.Tensor | None = None,
                    zeroed: bool = False):
    """D_alpha between two full-support distributions given by finite log-probabilities.

    ``alpha`` is a Python float in [0, inf], a tuple of them (one order per index of the rows' first
    dimension, see :func:`_orders`), or a tensor of shape ``(..., 1)`` (broadcastable to the rows) with
    entries in [0, inf]. ``delta`` is ``log p - log q`` up to a per-row constant, computed without the
    normalisations (``v/T - z/T`` from :func:`_evaluate`); without it, ``lp - lq`` is used;
    ``zeroed``: ``delta`` is already 0 at the arg-max of ``lp``, as :func:`_evaluate` makes it.
    Returns ``(D, tilt, r)``: ``D`` of shape ``(..., 1)``, ``r = log p - log q`` (accurate to the
    rounding of ``delta``, not of ``lp`` and ``lq``, which is that of numbers near ``log n``) and a
    description of the tilted distribution ``w ∝ p^alpha q^(1-alpha)`` that :func:`_tilted` turns into
    ``w`` (lazily, in the backward pass): ``("ez", e, Z)`` for ``w = e / Z``, ``("log", y, None)`` for
    ``w = exp(y)``, ``("onehot", idx, None)`` for alpha = inf (the first arg-max of ``r``),
    ``("w", w, None)``, or ``("groups", [(rows, alpha, tilt), ...], None)`` for a tuple of orders.

    The centred evaluation (module docstring): with ``d = delta - E_P delta``,
    ``A = log E_P e^{-d} = D_KL``, ``r = d + A`` and, for every order,
    ``D_alpha = A + log E_P[e^{(alpha-1) d}] / (alpha - 1)`` (P-centred; used from order 1/4 up)
    ``= (alpha log E_Q e^{e} - log E_Q e^{alpha e}) / (1 - alpha)`` with ``e = delta - E_Q delta``
    (Q-centred; orders below 1/4). Each log-expectation is a :func:`_cgf`, so a divergence close to
    0 is obtained without subtracting numbers of the size of ``log n``. ``d``, ``A`` and ``r`` do not
    depend on the order: with a tuple of orders they are computed once for all rows, and only the
    order's own terms per group of rows of one order.
    """
    if delta is None:
        delta = lp - lq
    p = torch.exp(lp)
    d = delta if zeroed else _zero_at_argmax(delta, lp)
    d = d - (p * d).sum(-1, keepdim=True)
    A = _cgf(lp, -d, p)  # D_KL(P || Q) = E_P r
    r = d + A
    if isinstance(alpha, tuple):
        shape = _broadcast(lp.shape, lq.shape)
        D = torch.empty(shape[:-1] + (1,), dtype=A.dtype, device=A.device)
        groups = []
        for a, rows in _order_groups(alpha):
            pick = functools.partial(_rows, rows=rows, n=len(alpha), dim=len(shape))
            if isinstance(a, tuple):  # the centred orders of several rows, as a column
                a = torch.tensor(a, dtype=A.dtype, device=A.device).view(-1, *([1] * (len(shape) - 1)))
            Da, tilt = _order_terms(pick(lp), pick(lq), a, pick(delta), pick(p), pick(d), pick(A), pick(r))
            D[rows] = Da
            groups.append((rows, a, tilt))
        return D, ("groups", groups, None), r
    if not isinstance(alpha, torch.Tensor):
        D, tilt = _order_terms(lp, lq, alpha, delta, p, d, A, r)
        return D, tilt, r

    # Tensor of orders: every evaluation, selected per row.
    a = alpha
    is_inf = torch.isinf(a)
    af = torch.where(is_inf, torch.full_like(a, 2.0), a)
    eps = af - 1.0
    is_one = eps == 0
    eps_safe = torch.where(is_one, torch.ones_like(eps), eps)
    m, L, k, w = _lse_parts(lp, lq, af)
    D = m * (k / eps_safe) + L / eps_safe
    # P-centred, orders >= 1/4
    hi = af >= _P_CENTRED
    eps_p = torch.where(hi, eps_safe, torch.ones_like(eps))
    Dp = A + _cgf(lp, eps_p * d, p) / eps_p
    ok = hi & torch.isfinite(Dp) & ((eps > 0) | (A <= _MAX_CANCEL * Dp))
    D = torch.where(ok, Dp, D)
    # Q-centred, orders < 1/4
    lo = ~hi
    a_q = torch.where(lo, af, torch.zeros_like(af))
    q = torch.exp(lq)
    dq = _zero_at_argmax(delta, lq)
    e_ = dq - (q * dq).sum(-1, keepdim=True)
    aB = a_q * _cgf(lq, e_, q)
    Dq = (aB - _cgf(lq, a_q * e_, q)) / (1.0 - a_q)
    ok = lo & torch.isfinite(Dq) & (aB <= _MAX_CANCEL * (1.0 - a_q) * Dq)
    D = torch.where(ok, Dq, D)
    D_inf, idx = r.max(-1, keepdim=True)
    D = torch.where(is_one, A, D)
    D = torch.where(af == 0, torch.zeros_like(D), D)
    D = torch.where(is_inf, D_inf, D)
    onehot = torch.zeros_like(r).scatter_(-1, idx, 1.0)
    # the tilt of the special orders exactly as the scalar path has it
    w = torch.where(is_one, torch.exp(lp), torch.where(af == 0, torch.exp(lq), w))
    w = torch.where(is_inf, onehot, w)
    return D, ("w", w, None), r


def _teacher_grad_unit(lp, r, w, D, alpha):
    """dD/d(teacher logits / T) (i.e. times T): alpha (w - p) / (alpha - 1), stable near alpha = 1."""
    if isinstance(alpha, tuple):  # per group of rows of one order
        out = torch.empty_like(r)
        for a, rows in _orders(alpha):
            pick = functools.partial(_rows, rows=rows, n=len(alpha), dim=r.dim())
            out[rows] = _teacher_grad_unit(pick(lp), r[rows], w[rows], pick(D), a)
        return out
    p = torch.exp(lp)
    if not isinstance(alpha, torch.Tensor):
        if alpha == 0.0:
            return torch.zeros_like(r)
        if math.isinf(alpha):
            return w - p
        if alpha == 1.0:
            return p * (r - D)
        eps = alpha - 1.0
        y = eps * (r - D)
        near = y.abs() < 0.5
        return alpha * torch.where(
            near, p * (r - D) * _phi1(torch.where(near, y, torch.zeros_like(y))), (w - p) / eps
        )
    is_inf = torch.isinf(alpha)
    af = torch.where(is_inf, torch.full_like(alpha, 2.0), alpha)
    eps = af - 1.0
    eps_safe = torch.where(eps == 0, torch.ones_like(eps), eps)
    y = eps * (r - D)
    near = y.abs() < 0.5
    g = af * torch.where(
        near, p * (r - D) * _phi1(torch.where(near, y, torch.zeros_like(y))), (w - p) / eps_safe
    )
    return torch.where(is_inf, w - p, g)


def _tilted(kind: str, x, G, lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """The tilted distribution w from the description returned by :func:`_renyi_logprobs`."""
    if kind == "log":
        return torch.exp(x)
    if kind == "ez":
        # w = e / Z from the forward's log-sum-exp (exactly normalised; not exp(y - G), whose
        # exponent would carry the rounding of |y|)
        return x / G
    if kind == "onehot":
        shape = _broadcast(lp.shape, lq.shape)
        return torch.zeros(shape, dtype=lq.dtype, device=lq.device).scatter_(-1, x, 1.0)
    if kind == "groups":  # [(rows, order, tilt), ...] of a tuple of orders
        shape = _broadcast(lp.shape, lq.shape)
        w = torch.empty(shape, dtype=lq.dtype, device=lq.device)
        for rows, _, (k, xk, Gk) in x:
            pick = functools.partial(_rows, rows=rows, n=shape[0], dim=len(shape))
            w[rows] = _tilted(k, xk, Gk, pick(lp), pick(lq))
        return w
    return x


def _fit(x: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Reduce a broadcast gradient to an input's shape and dtype (no-ops skipped)."""
    if x.shape != shape:
        x = x.sum_to_size(shape)
    return x if x.dtype == dtype else x.to(dtype)


def _log_softmax(x: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dim with ``log1p`` of the non-maximal terms.

    ``x - max x - log1p(sum of exp(x_i - max x) over the others)``: an entry close to
    ``log 1 = 0`` (a nearly one-hot row) keeps its relative accuracy, where ``log`` of the sum
    (``torch.log_softmax``) would round it to a multiple of the machine epsilon.
    """
    m, i = x.max(-1, keepdim=True)
    xm = x - m
    return xm - torch.log1p(torch.exp(xm).scatter_(-1, i, 0.0).sum(-1, keepdim=True))


def _evaluate(t: torch.Tensor, s: torch.Tensor, alpha, T):
    """The forward of the logits form, shared by :class:`_RenyiLogits` and :func:`renyi_gradient`.

    Works in :func:`_compute_dtype`, except for ``delta = (v - z - (v_k - z_k)) / T`` (``k`` the
    teacher's arg-max), the
    difference of the tempered logits up to a per-row constant, which is formed in float64 and
    then rounded: it carries an error relative to its own size, not to the size of the logits.
    The log-probabilities are computed from logits centred on their row maxima. Returns
    ``(lp, lq, D, tilt, r, a, Tc, tc, sc)``: the log-probabilities, the
    divergence and tilt and ``r`` of :func:`_renyi_logprobs`, the order and temperature as used
    (tensors with a trailing 1) and the centred logits.
    """
    cd = _compute_dtype(t, s, T)
    # an order beyond the computation's range (1e39 in float32) would be rounded to inf inside the
    # kernels but taken as finite by them (NaN gradients); D_alpha equals D_inf to that precision
    big = torch.finfo(cd).max
    if isinstance(alpha, tuple):
        alpha = tuple(math.inf if a > big else a for a in alpha)
    elif not isinstance(alpha, torch.Tensor) and math.isfinite(alpha) and alpha > big:
        alpha = math.inf
    tt = t if t.dtype == cd else t.to(cd)
    ss = s if s.dtype == cd else s.to(cd)
    tc = tt - tt.amax(-1, keepdim=True)
    sc = ss - ss.amax(-1, keepdim=True)
    Tc = T.to(cd).unsqueeze(-1) if isinstance(T, torch.Tensor) else T
    if isinstance(Tc, float) and Tc == 1.0:
        lp, lq = _log_softmax(tc), _log_softmax(sc)
    else:
        lp, lq = _log_softmax(tc / Tc), _log_softmax(sc / Tc)
    # delta = (v - z - (v_k - z_k)) / T with k the teacher's arg-max. The difference of two float32
    # (or 16-bit) logits is exact in float64, so delta is rounded relative to its own size (close
    # teacher and student rows give an exact small difference, whatever the size of the logits),
    # and delta_k = 0 exactly, so that E_P delta has no large term when P is nearly one-hot.
    t64, s64 = tt.to(torch.float64), ss.to(torch.float64)
    diff = _zero_at_argmax(t64 - s64, tt)
    delta = (diff / (Tc.to(torch.float64) if isinstance(Tc, torch.Tensor) else Tc)).to(cd)
    # beyond float64's range (logits near 1e308) the difference overflows: those rows use lp - lq
    # (their check costs a mask over every entry; on the CPU it runs only where some entry overflowed)
    if delta.device.type != "cpu" or not bool(torch.isfinite(delta.sum())):
        delta = torch.where(torch.isfinite(delta).all(-1, keepdim=True), delta, lp - lq)
    a = alpha.to(cd).unsqueeze(-1) if isinstance(alpha, torch.Tensor) else alpha
    D, tilt, r = _renyi_logprobs(lp, lq, a, delta, zeroed=True)
    return lp, lq, D, tilt, r, a, Tc, tc, sc


class _RenyiLogits(torch.autograd.Function):
    """D_alpha(softmax(t/T) || softmax(s/T)) per row, with the analytic backward (q - w)/T.

    ``sides``: ``None``, or one bool per index of the rows' first dimension: ``True`` where only the
    gradient with respect to ``t`` is wanted, ``False`` where only the one with respect to ``s`` is (a
    stack mixing forward and reverse distillation puts each student's logits on its own side; the
    unwanted gradient is returned as zeros, not computed).
    """

    @staticmethod
    def forward(ctx, t, s, alpha, T, sides=None):  # type: ignore[override]
        lp, lq, D, (kind, x, G), r, a, Tc, tc, sc = _evaluate(t, s, alpha, T)
        D = D.clamp_min(0.0)
        ctx.sides = sides
        ctx.alpha = a
        ctx.Tc = Tc
        ctx.kind = kind
        ctx.shapes = (t.shape, s.shape, T.shape if isinstance(T, torch.Tensor) else None)
        ctx.dtypes = (t.dtype, s.dtype, T.dtype if isinstance(T, torch.Tensor) else None)
        need_T = isinstance(T, torch.Tensor) and T.requires_grad
        ctx.groups = x if kind == "groups" else None  # a list of tilts, not a tensor
        ctx.save_for_backward(lp, lq, r, D, None if kind == "groups" else x, G, tc if need_T else None,
                              sc if need_T else None)
        out = D.squeeze(-1)
        out_dtype = torch.promote_types(t.dtype, s.dtype)
        return out if out.dtype == out_dtype else out.to(out_dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        lp, lq, r, D, x, G, tt, ss = ctx.saved_tensors
        g = grad_out.to(lp.dtype).unsqueeze(-1)
        Tc = ctx.Tc
        t_shape, s_shape, T_shape = ctx.shapes
        t_dtype, s_dtype, T_dtype = ctx.dtypes
        need_t, need_s, _, need_T = ctx.needs_input_grad[:4]
        grad_t = grad_s = grad_T = None
        w = _tilted(ctx.kind, ctx.groups if ctx.kind == "groups" else x, G, lp, lq)
        gT = g / Tc  # (..., 1): the row scale, applied once to the (..., n) difference
        if ctx.sides is not None and not need_T:
            return (*_sided_grads(ctx, lp, lq, r, D, w, gT), None, None, None)
        q_w = torch.exp(lq) - w
        if need_s:
            grad_s = _fit(q_w * gT, s_shape, s_dtype)
        if need_t or need_T:
            ut = _teacher_grad_unit(lp, r, w, D, ctx.alpha)  # T * dD/dt
            if need_t:
                grad_t = _fit(ut * gT, t_shape, t_dtype)
            if need_T:
                # D depends on T through t/T and s/T: dD/dT = -(sum_j dD/ds_j s_j + dD/dt_j t_j) / T
                # (the rows of both gradients sum to 0, so the centred logits give the same value)
                dT = -((q_w * ss).sum(-1, keepdim=True) + (ut * tt).sum(-1, keepdim=True)) * (gT / Tc)
                grad_T = dT.squeeze(-1).sum_to_size(T_shape).to(T_dtype)
        return grad_t, grad_s, None, grad_T, None


def _sided_grads(ctx, lp, lq, r, D, w, gT) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of :class:`_RenyiLogits` with ``sides``: each row's for the side it names only."""
    sides, alpha = ctx.sides, ctx.alpha
    (t_shape, s_shape, _), (t_dtype, s_dtype, _) = ctx.shapes, ctx.dtypes
    shape = _broadcast(lp.shape, lq.shape)
    need_t, need_s = ctx.needs_input_grad[:2]
    grad_t = grad_s = None
    for side, rows in _orders(tuple(sides)):
        pick = functools.partial(_rows, rows=rows, n=shape[0], dim=len(shape))
        if side and need_t:
            if isinstance(alpha, tuple):
                a = alpha[rows] if isinstance(rows, slice) else tuple(alpha[i] for i in rows.tolist())
            else:
                a = pick(alpha)
            if grad_t is None:
                grad_t = torch.zeros(shape, dtype=gT.dtype, device=gT.device)
            grad_t[rows] = _teacher_grad_unit(pick(lp), pick(r), pick(w), pick(D), a) * pick(gT)
        elif not side and need_s:
            if grad_s is None:
                grad_s = torch.zeros(shape, dtype=gT.dtype, device=gT.device)
            grad_s[rows] = (torch.exp(pick(lq)) - pick(w)) * pick(gT)
    zeros = functools.partial(torch.zeros, dtype=gT.dtype, device=gT.device)
    if need_t and grad_t is None:
        grad_t = zeros(shape)
    if need_s and grad_s is None:
        grad_s = zeros(shape)
    return (_fit(grad_t, t_shape, t_dtype) if need_t else None,
            _fit(grad_s, s_shape, s_dtype) if need_s else None)


# ---------------------------------------------------------------------------
# Probability inputs (float64 internally, zeros allowed).
# ---------------------------------------------------------------------------


def _renyi_probs_core(p: torch.Tensor, q: torch.Tensor, lp: torch.Tensor, lq: torch.Tensor, alpha: float):
    """D_alpha for probability rows with zeros allowed (float64). Returns D (..., 1) and backward info.

    ``p``, ``q`` are the renormalised rows and ``lp``, ``lq`` their logarithms, computed as
    ``log(raw) - log(sum(raw))`` so that an entry close to 1 keeps its exact logarithm.
    """
    supp = p > 0
    qpos = q > 0
    both = supp & qpos
    viol = (supp & ~qpos).any(-1, keepdim=True)  # P is not absolutely continuous w.r.t. Q
    zero = torch.zeros_like(p)
    r = torch.where(both, lp - lq, zero)
    inf = torch.full_like(p[..., :1], math.inf)
    ninf = torch.full_like(p, -math.inf)
    info: dict[str, torch.Tensor] = {"supp": supp, "both": both, "r": r}

    def log_mass(x, inside, outside):
        # log of the mass of x on `inside`, from the (directly summed) mass outside when that is small
        m_in = torch.where(inside, x, zero).sum(-1, keepdim=True)
        m_out = torch.where(outside, x, zero).sum(-1, keepdim=True)
        return torch.where(m_out < 0.5, torch.log1p(-m_out), torch.log(m_in))

    if alpha == 0.0:
        # eq (1.27): D_0 = -log Q(supp P)
        Qs = torch.where(supp, q, zero).sum(-1, keepdim=True)
        info["Qs"] = Qs
        return -log_mass(q, supp, ~supp), info
    if alpha == 1.0:
        kl = torch.where(both, p * r, zero).sum(-1, keepdim=True)
        return torch.where(viol, inf, kl), info
    if math.isinf(alpha):
        rr = torch.where(both, r, torch.where(supp, torch.full_like(p, math.inf), ninf))
        D, idx = rr.max(-1, keepdim=True)
        info["idx"] = idx
        return D, info
    eps = alpha - 1.0
    m, L, k, w = _lse_parts(torch.where(both, lp, zero), torch.where(both, lq, zero), alpha, both)
    D = m * (k / eps) + L / eps  # -inf sum (disjoint supports) gives +inf for alpha < 1
    if abs(eps) < _NEAR or alpha < _NEAR:
        # Centred evaluation on the common support, around P (near 1) or Q (near 0):
        # sum_both b e^{g r} = B * E_{b|both}[e^{g r}], B = b(both), log B = log1p(-b(outside)).
        near_one = abs(eps) < _NEAR
        if near_one:
            lb, g_, log_B = lp, eps, log_mass(p, both, supp & ~qpos)
        else:
            lb, g_, log_B = lq, alpha, log_mass(q, both, qpos & ~supp)
        lbc = torch.where(both, lb - log_B, ninf)
        c = torch.where(both, torch.exp(lbc) * r, zero).sum(-1, keepdim=True)
        u = torch.where(both, g_ * (r - c), zero)
        H = _weighted_excess(lbc, u)
        if near_one:
            Dc = log_B / eps + c + torch.log1p(H) / eps
        else:
            Dc = (log_B + alpha * c + torch.log1p(H)) / eps
        D = torch.where(torch.isfinite(Dc), Dc, D)
    if alpha > 1.0:
        D = torch.where(viol, inf, D)
    info["w"] = w
    return D, info


class _RenyiProbs(torch.autograd.Function):
    """D_alpha(P || Q) for probability rows; float64 inside; analytic backward."""

    @staticmethod
    def forward(ctx, p, q, alpha):  # type: ignore[override]
        p64 = p.detach().to(torch.float64)
        q64 = q.detach().to(torch.float64)
        sp = p64.sum(-1, keepdim=True)
        sq = q64.sum(-1, keepdim=True)
        # Renormalise (removes rounding drift of the row sums); logs from the raw entries.
        lp, lq = torch.broadcast_tensors(torch.log(p64) - torch.log(sp), torch.log(q64) - torch.log(sq))
        p64, q64 = torch.broadcast_tensors(p64 / sp, q64 / sq)
        D, info = _renyi_probs_core(p64, q64, lp, lq, alpha)
        D = D.clamp_min(0.0)
        ctx.alpha = alpha
        ctx.info = info
        ctx.shapes = (p.shape, q.shape)
        ctx.dtypes = (p.dtype, q.dtype)
        ctx.save_for_backward(p64, q64, D, sp, sq)
        return D.squeeze(-1).to(torch.promote_types(p.dtype, q.dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        p, q, D, sp, sq = ctx.saved_tensors
        info = ctx.info
        alpha = ctx.alpha
        supp, both, r = info["supp"], info["both"], info["r"]
        zero = torch.zeros_like(p)
        if alpha == 0.0:
            gp = zero
            gq = -torch.where(supp, torch.ones_like(p), zero) / info["Qs"]
        elif alpha == 1.0:
            # d/dp [p log(p/q)] = log(p/q) + 1 (-inf at p = 0 < q); d/dq = -p/q.
            gp = torch.where(both, r + 1.0, torch.where(q > 0, torch.full_like(p, -math.inf), zero))
            gq = -torch.where(both, p / torch.where(both, q, torch.ones_like(q)), zero)
        elif math.isinf(alpha):
            onehot = torch.zeros_like(p).scatter_(-1, info["idx"], 1.0)
            safe_p = torch.where(onehot > 0, p, torch.ones_like(p))
            safe_q = torch.where(onehot > 0, q, torch.ones_like(q))
            gp = onehot / safe_p
            gq = -onehot / safe_q
        else:
            eps = alpha - 1.0
            # w/p = exp(eps (r - D)) on the common support, 0 elsewhere (0/0 := 0 and p^a q^(1-a) = 0).
            y = torch.where(both, eps * (r - D), zero)
            # d/dp, shifted by a per-row constant so that it is continuous at alpha = 1 (see docstring):
            # alpha (w/p - 1) / eps = alpha (r - D) phi1(y) on the common support.
            near = y.abs() < 0.5
            g_both = alpha * torch.where(
                near, (r - D) * _phi1(torch.where(near, y, zero)), torch.expm1(y) / eps
            )
            g_off = torch.full_like(p, -alpha / eps)
            if alpha < 1.0:  # d/dp p^alpha = +inf at p = 0 when q > 0
                g_off = torch.where(~supp & (q > 0), torch.full_like(p, math.inf), g_off)
            gp = torch.where(both, g_both, g_off)
            # d/dq = -w/q = -exp(alpha r - eps D); -inf at q = 0 < p for alpha < 1; 0 where p = 0.
            gq = -torch.where(both, torch.exp(alpha * r - eps * D), zero)
            if alpha < 1.0:
                gq = torch.where(supp & ~(q > 0), torch.full_like(q, -math.inf), gq)
        # Chain rule through the renormalisation p -> p / sum(p): subtract the p-weighted mean of the
        # derivative and divide by the row sum (entries with p = 0, possibly infinite, carry no weight).
        gp = (
            torch.where(torch.isfinite(gp), gp - torch.where(p > 0, p * gp, zero).sum(-1, keepdim=True), gp)
            / sp
        )
        gq = (
            torch.where(torch.isfinite(gq), gq - torch.where(q > 0, q * gq, zero).sum(-1, keepdim=True), gq)
            / sq
        )
        finite = torch.isfinite(D)
        g = torch.where(finite, grad_out.to(torch.float64).unsqueeze(-1), torch.zeros_like(D))
        gp = torch.where(finite, g * gp, zero)
        gq = torch.where(finite, g * gq, zero)
        p_shape, q_shape = ctx.shapes
        p_dtype, q_dtype = ctx.dtypes
        grad_p = gp.sum_to_size(p_shape).to(p_dtype) if ctx.needs_input_grad[0] else None
        grad_q = gq.sum_to_size(q_shape).to(q_dtype) if ctx.needs_input_grad[1] else None
        return grad_p, grad_q, None


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def kl_divergence(p: torch.Tensor, q: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    r"""Kullback–Leibler divergence :math:`D_{KL}(P\|Q)` of each row, thesis eq (1.4).

    .. math:: D_{KL}(P\|Q) = \sum_{i=1}^n p_i \log\frac{p_i}{q_i},
              \qquad 0\log\tfrac{0}{q} = 0,\quad p\log\tfrac{p}{0} = +\infty \ (p > 0).

    Equal to :func:`renyi_divergence` with ``alpha = 1`` (eq 1.31).

    Args:
        p: probabilities :math:`P`, shape ``(..., n)``; rows non-negative and summing to 1.
        q: probabilities :math:`Q`, shape ``(..., n)``; the leading dimensions of ``p`` and ``q``
            broadcast against each other.
        validate: check the arguments (one host sync per check). Pass ``False`` only in hot loops
            whose inputs are known to be valid.

    Returns:
        Tensor of shape ``broadcast(p.shape[:-1], q.shape[:-1])``, in nats, ``>= 0``, ``+inf`` where
        some :math:`p_i > 0 = q_i`. The dtype is the promoted dtype of ``p`` and ``q``; the value is
        computed in float64 after renormalising each row to sum exactly to 1 (the rows are accepted
        within the tolerance of :func:`kdlib._validation.row_sum_tolerance`: 1e-6 for float64,
        1e-4 for float32, 1e-2 for float16 and bfloat16).

    Note:
        Gradients are analytic, of the function as computed, which renormalises each row (so the
        value does not change when a row is scaled and
        :math:`\sum_i p_i\,\partial D/\partial p_i = 0`): on the simplex
        :math:`\partial/\partial p_i = \log(p_i/q_i) - D_{KL}` and
        :math:`\partial/\partial q_i = 1 - p_i/q_i`. Infinite derivatives at zero entries are
        returned as ``+-inf``; rows with an infinite divergence get a zero gradient. For training
        from logits use :func:`renyi_divergence_logits`.

    Raises:
        ValueError: if ``p`` or ``q`` is not a floating tensor with at least one class (or is a meta
            tensor), holds NaN, ``+-inf`` or negative entries, has a row whose sum differs from 1 by
            more than the tolerance, or if the shapes do not match (different ``n`` or
            non-broadcastable rows).
    """
    return _renyi_probs_entry(p, q, 1.0, validate)


def renyi_divergence(
    p: torch.Tensor, q: torch.Tensor, alpha: float, *, validate: bool = True
) -> torch.Tensor:
    r"""Rényi divergence :math:`D_\alpha(P\|Q)` of order ``alpha`` of each row, thesis eq (1.16).

    .. math:: D_\alpha(P\|Q) = \frac{1}{\alpha - 1}\log\sum_{i=1}^n p_i^\alpha q_i^{1-\alpha},
              \qquad \tfrac{0}{0} = 0,\ \tfrac{x}{0} = \infty\ (x > 0),

    extended by continuity to the orders (eq 1.21–1.23)

    * ``alpha = 0``: :math:`D_0 = -\log \sum_i q_i\,\mathbb{1}\{p_i > 0\}` (eq 1.27),
    * ``alpha = 1``: :math:`D_1 = D_{KL}(P\|Q)` (eq 1.31), see :func:`kl_divergence`,
    * ``alpha = math.inf``: :math:`D_\infty = \max_{i:\,p_i>0} \log(p_i/q_i)` (eq 1.33).

    Support conventions, for every order: entries with :math:`p_i = 0` contribute nothing.
    An entry with :math:`p_i > 0 = q_i` makes the divergence ``+inf`` for :math:`\alpha \ge 1`,
    but contributes 0 to the sum for :math:`\alpha < 1` (the divergence stays finite unless the
    supports are disjoint, where it is ``+inf``; for ``alpha = 0`` it is ``+inf`` exactly when
    :math:`Q(\operatorname{supp} P) = 0`).

    The evaluation is continuous in ``alpha`` everywhere on :math:`[0, \infty]`, including across
    ``alpha = 1`` (see the module docstring): near ``alpha = 1`` the result is
    :math:`D_{KL} + \tfrac{\alpha-1}{2}\operatorname{Var}_P[\log(p/q)] + O((\alpha-1)^2)` with no
    cancellation.

    Args:
        p: probabilities :math:`P`, shape ``(..., n)``; rows non-negative and summing to 1.
        q: probabilities :math:`Q`, shape ``(..., n)``, leading dimensions broadcastable with ``p``.
        alpha: the order, a number in :math:`[0, \infty]` (``math.inf`` allowed).
        validate: check the arguments (host syncs); ``False`` skips the checks of ``p`` and ``q``.

    Returns:
        Tensor of shape ``broadcast(p.shape[:-1], q.shape[:-1])``, in nats, ``>= 0`` (possibly
        ``+inf``), of the promoted dtype of ``p`` and ``q``, computed in float64 after renormalising
        each row (row-sum tolerance: 1e-6 float64, 1e-4 float32, 1e-2 float16/bfloat16).

    Note:
        Gradients are analytic, of the function as computed, which renormalises each row (so
        :math:`\sum_i p_i\,\partial D/\partial p_i = \sum_i q_i\,\partial D/\partial q_i = 0`). On the
        simplex, with the tilted distribution :math:`w \propto p^\alpha q^{1-\alpha}`:
        :math:`\partial/\partial p_i = \frac{\alpha}{\alpha-1}(w_i/p_i - 1)` and
        :math:`\partial/\partial q_i = 1 - w_i/q_i`, continuous across ``alpha = 1`` (where they are
        the KL derivatives) and evaluated there without cancellation. Infinite derivatives at zero
        entries are returned as ``+-inf``; rows with an infinite divergence get a zero gradient.

    Raises:
        ValueError: if ``alpha`` is negative or NaN or not a number; if ``p`` or ``q`` is a meta
            tensor or not a floating tensor, holds NaN, ``+-inf`` or negative entries, has a row off
            1 by more than the tolerance, or if the shapes do not match.
    """
    if isinstance(alpha, tuple | list | torch.Tensor):
        raise ValueError(
            "alpha must be a number in [0, inf] for renyi_divergence (tensors and sequences of orders: "
            "renyi_divergence_logits)"
        )
    return _renyi_probs_entry(p, q, check_order(alpha), validate)


def _check_flag(validate: object) -> None:
    if not isinstance(validate, bool):  # a tensor of several elements has no truth value
        raise ValueError(f"validate must be a bool, got {type(validate).__name__}")


def _renyi_probs_entry(p, q, alpha: float, validate: bool) -> torch.Tensor:
    _check_flag(validate)
    check_probabilities(p, "p", validate=validate)
    check_probabilities(q, "q", validate=validate)
    check_row_shapes(p, q, "p", "q")
    return _RenyiProbs.apply(p, q, alpha)


def renyi_divergence_logits(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    alpha: float | Sequence[float] | torch.Tensor,
    T: float | torch.Tensor = 1.0,
    *,
    validate: bool = True,
) -> torch.Tensor:
    r"""Rényi divergence of the student's tempered softmax from the teacher's, per row.

    .. math:: D_\alpha\big(\operatorname{softmax}(v/T)\,\big\|\,\operatorname{softmax}(z/T)\big),

    with teacher logits :math:`v`, student logits :math:`z` (eq 1.3 and 1.16), evaluated entirely
    from log-probabilities and the centred difference of the logits (module docstring) so that no
    probability underflows and no small value is lost to the rounding of numbers near
    :math:`\log n`: finite and accurate for logits up to :math:`\pm 10^4` and temperatures from
    0.05 to 1000, in relative terms (tested against 80-digit values for the same inputs: within
    :math:`2^{-14} \approx 6\cdot 10^{-5}` relative or :math:`10^{-30}` absolute in float32, typically
    :math:`10^{-6}`, :math:`2^{-11}` for orders as large as :math:`10^4`; about :math:`10^{-14}` in
    float64). This is the soft term of Rényi
    distillation (eq 1.11 with :math:`D_{KL}` replaced by :math:`D_\alpha`).

    Softmax distributions have full support, so every order gives a finite value; in particular
    :math:`D_0 \equiv 0` (eq 1.27 with :math:`Q(\operatorname{supp}P) = 1`) and
    :math:`D_\infty = \max_i (\log p_i - \log q_i)` over all classes (eq 1.33).

    Args:
        teacher_logits: :math:`v`, shape ``(..., n)``, finite. Usually detached; gradients flow to it
            if it requires grad.
        student_logits: :math:`z`, shape ``(..., n)``, finite. The leading dimensions of the two
            logits broadcast (e.g. a teacher of shape ``(B, n)`` against stacked students ``(S, B, n)``).
        alpha: the order. A number in :math:`[0, \infty]` (``math.inf`` allowed); a tuple or list of
            them, one per index of the rows' first dimension (e.g. one per stacked student of rows
            ``(S, B)``): the order-free terms are then computed once for all rows and each order's
            own terms on its rows only, the cheap form for a stack that mixes orders; or a floating
            tensor broadcastable to the row shape ``broadcast(teacher.shape[:-1], student.shape[:-1])``
            (e.g. shape ``(S, 1)``), entries in :math:`[0, \infty]` (``inf`` allowed), not requiring
            grad, which evaluates every order's formula on every row.
        T: temperature. A finite number ``> 0``, or a floating tensor broadcastable to the row shape
            with finite entries ``> 0`` (e.g. shape ``(S, 1)``). A tensor ``T`` that requires grad
            receives its gradient.
        validate: check the values of the arguments. The finiteness (and range) of both logits
            costs two row-wise min/max reductions and one host sync per call; a tensor ``alpha`` or
            ``T`` one more sync each. Pass ``False`` in hot training loops whose inputs are known
            to be valid: only the shapes and dtypes are then checked, and invalid values yield NaN
            instead of an error.

    Returns:
        Tensor of the row shape, in nats, ``>= 0`` and finite. Its dtype is the promoted dtype of the
        two logits; float16 and bfloat16 inputs are computed in float32 (float64 if either logits or
        ``T`` is float64) and the result is rounded to the input dtype.

    Note:
        Gradients are analytic (no autograd graph through the evaluation): with respect to the
        student logits :math:`(q - w)/T`, :math:`w \propto p^\alpha q^{1-\alpha}` (see
        :func:`renyi_gradient`), including ``alpha = inf`` (the subgradient of the first arg-max of
        :math:`\log p - \log q`)
        and ``alpha = 0`` (zero); with respect to the teacher logits
        :math:`\frac{\alpha}{\alpha-1}(w - p)/T` (:math:`p(\log p - \log q - D_{KL})/T` at
        ``alpha = 1``, evaluated without cancellation near it). Second derivatives are not
        provided: a double backward raises ``RuntimeError``.

    Raises:
        ValueError: if a logits argument is not a floating tensor of shape ``(..., n)`` with ``n >= 1``
            or holds NaN or ``+-inf``; if the two logits differ in ``n`` or their leading dimensions
            do not broadcast; if ``alpha`` is NaN or negative (or a tensor that does not broadcast to
            the rows or requires grad); if ``T`` is not finite and ``> 0`` (or a tensor that does not
            broadcast to the rows); if a tensor argument is a meta tensor or lies on another device
            than ``teacher_logits`` (0-dim CPU tensors excepted); if ``alpha`` or ``T`` is a number
            beyond float's range (e.g. the int ``10**400``; write ``math.inf`` for the order
            infinity); if ``validate`` is not a bool; with ``validate``, if the logits divided by
            ``T`` would overflow the computation's dtype: a row's range (max - min) times
            ``max(1, 1/T)`` above its largest number over 16 (3.4e38 / 16 in float32, 1.8e308 / 16
            in float64; e.g. logits of 3e38 at ``T = 1e-3`` in float32), far outside the documented
            range, where the value would otherwise be NaN.
    """
    alpha, T = _check_logits_args(teacher_logits, student_logits, alpha, T, validate)
    return _RenyiLogits.apply(teacher_logits, student_logits, alpha, T)


def _renyi_logits_sided(first: torch.Tensor, second: torch.Tensor, alpha, T, sides: tuple[bool, ...]
                        ) -> torch.Tensor:
    """:func:`renyi_divergence_logits` of arguments already checked, with :class:`_RenyiLogits`'s
    ``sides`` (for :func:`kdlib.functional.distillation_loss` with forward and reverse rows)."""
    return _RenyiLogits.apply(first, second, alpha, T, sides)


def _check_logits_args(teacher_logits, student_logits, alpha, T, validate):
    _check_flag(validate)
    names = ("teacher_logits", "student_logits")
    rows = check_logits_pair(teacher_logits, student_logits, *names, validate=False)
    alpha = check_order(alpha, rows, validate=validate)
    T = check_temperature_arg(T, rows, validate=validate)
    check_device(alpha, "alpha", teacher_logits.device, "teacher_logits")
    check_device(T, "T", teacher_logits.device, "teacher_logits")
    if validate:  # finite, and not overflowing when divided by T (one host sync)
        check_logits_values(teacher_logits, student_logits, *names, T=T, alpha_factor=_alpha_factor(alpha))
    return alpha, T


def _alpha_factor(alpha) -> float:
    """How much larger than the tempered logits the kernels' intermediates get: ``alpha`` for a number
    in ``(1, _HUGE_ORDER]`` (``alpha log p + (1 - alpha) log q`` is formed unscaled there), else 1."""
    if isinstance(alpha, tuple):
        return max(map(_alpha_factor, alpha))
    return alpha if not isinstance(alpha, torch.Tensor) and 1.0 < alpha <= _HUGE_ORDER else 1.0


def renyi_gradient(teacher_logits: torch.Tensor, student_logits: torch.Tensor, alpha: float | torch.Tensor,
                   T: float | torch.Tensor = 1.0, *, validate: bool = True) -> torch.Tensor:
    r"""Analytic gradient of :func:`renyi_divergence_logits` with respect to the student logits.

    .. math:: \frac{\partial D_\alpha(P^T\|Q^T)}{\partial z_j} = \frac{1}{T}\,(q_j - w_j),
              \qquad w_j = \frac{p_j^\alpha q_j^{1-\alpha}}{\sum_k p_k^\alpha q_k^{1-\alpha}},

    where :math:`P^T = \operatorname{softmax}(v/T)` (teacher) and :math:`Q^T = \operatorname{softmax}(z/T)`
    (student). The tilted distribution :math:`w` is computed in log space. Special orders:
    ``alpha = 1`` gives :math:`(q - p)/T`, the KL gradient of eq (1.8); ``alpha = 0`` gives 0
    (:math:`w = q`, :math:`D_0 \equiv 0` for softmax distributions); ``alpha = math.inf`` gives
    :math:`(q - e_{i^*})/T` with :math:`i^*` the first arg-max of :math:`\log p_i - \log q_i`
    (a subgradient of eq 1.33). For large ``T`` and zero-mean logits the gradient tends to
    :math:`\alpha(z - v)/(nT^2)` (the Rényi analogue of eq 1.15).

    Args:
        teacher_logits: :math:`v`, shape ``(..., n)``, finite.
        student_logits: :math:`z`, shape ``(..., n)``, finite; leading dimensions broadcast with
            the teacher's.
        alpha: the order, as in :func:`renyi_divergence_logits` (number, sequence or tensor, ``[0, inf]``).
        T: temperature, as in :func:`renyi_divergence_logits` (number or tensor, finite ``> 0``).
        validate: check the arguments (host syncs); see :func:`renyi_divergence_logits`.

    Returns:
        Tensor of shape ``broadcast(teacher.shape, student.shape)``, the gradient of each row's
        divergence (not summed over rows), in nats per unit logit, dtype as in
        :func:`renyi_divergence_logits`. Each row sums to 0.

    Raises:
        ValueError: as :func:`renyi_divergence_logits`.
    """
    alpha, T = _check_logits_args(teacher_logits, student_logits, alpha, T, validate)
    with torch.no_grad():
        lp, lq, _, (kind, x, G), _, _, Tc, _, _ = _evaluate(
            teacher_logits.detach(), student_logits.detach(), alpha,
            T.detach() if isinstance(T, torch.Tensor) else T,
        )
        w = _tilted(kind, x, G, lp, lq)
        grad = (torch.exp(lq) - w) / Tc
    return grad.to(torch.promote_types(teacher_logits.dtype, student_logits.dtype))
