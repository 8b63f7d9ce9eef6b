"""Argument checks shared by every public function of :mod:`kdlib`.

Each check raises :class:`ValueError` whose message names the offending
parameter and the allowed range, so that a caller sees at once what to fix.
"""

from __future__ import annotations

import functools
import math
import numbers
import sys

import numpy as np
import torch


def check_temperature(T: float, name: str = "T") -> float:
    """Return ``T`` as a float if it is finite and positive, else raise ``ValueError``.

    Booleans and strings are refused even though ``float()`` would accept them (``True`` or ``"4"``
    as a temperature is a caller's mistake, not a number).
    A one-element tensor is taken as its number, so it must not require grad (the gradient would
    be lost silently); an integer beyond float's range is refused like ``inf``.
    """
    if isinstance(T, bool | str | bytes):
        raise ValueError(f"{name} must be a finite number > 0, got {type(T).__name__} {T!r}")
    if isinstance(T, torch.Tensor) and T.requires_grad:
        raise ValueError(f"{name} must not require grad here: it is used as a number, so its gradient "
                         f"would be lost (pass a number, or a tensor that does not require grad)")
    try:
        value = float(T)
    except OverflowError:  # e.g. 10**400: finite as an int, not as a float
        raise ValueError(f"{name} must be a finite number > 0 (allowed range (0, inf)) that a float can "
                         f"hold, got {short_repr(T)}") from None
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: a tensor of several elements
        raise ValueError(f"{name} must be a finite number > 0, got {short_repr(T)}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0 (allowed range (0, inf)), got {T!r}")
    return value


def is_finite_number(x: object) -> bool:
    """Whether ``x`` is a real number, not a boolean, that a float holds finitely (``10**400`` is not)."""
    try:
        return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
    except (OverflowError, TypeError):
        return False


def short_repr(x: object, limit: int = 60) -> str:
    """``repr(x)``, cut to about ``limit`` characters (an int of 400 digits, a large tensor)."""
    text = repr(x)
    return text if len(text) <= limit else f"{text[:limit - 20]}...{text[-12:]} ({len(text)} characters)"


def check_class_tensor(x: object, name: str, what: str = "") -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor of shape ``(..., n)`` with ``n >= 1``.

    ``what`` describes the expected tensor in the message (e.g. ``" of probabilities"``).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor{what}, got {type(x).__name__}")
    check_not_meta(x, name)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (classes on the last), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(
            f"{name} must have at least one class on its last dimension, got shape {tuple(x.shape)}"
        )


def check_not_meta(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` for a tensor on the ``meta`` device (a shape without values to compute with)."""
    if x.is_meta:
        raise ValueError(f"{name} is a meta tensor (shape only, no values); pass a tensor on a real device")


def check_device(x: object, name: str, device: torch.device, ref_name: str) -> None:
    """Raise ``ValueError`` unless tensor ``x`` is on ``device`` (a 0-dim CPU tensor is accepted anywhere,
    as torch accepts it); non-tensors pass."""
    if not isinstance(x, torch.Tensor):
        return
    check_not_meta(x, name)
    if x.device != device and not (x.dim() == 0 and x.device.type == "cpu"):
        raise ValueError(f"{name} must be on the device of {ref_name} ({device}), got a tensor on {x.device}")


def check_finite_tensor(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with at least one dimension and only finite entries."""
    check_class_tensor(x, name)
    if not all_finite(x):
        raise ValueError(f"{name} must contain only finite values (no NaN or +-inf)")


# ---------------------------------------------------------------------------
# Helpers of the divergences and the distillation loss (issue 3).
# ---------------------------------------------------------------------------

Number = int | float

#: Tolerance on ``|sum(row) - 1|`` accepted by the probability-input divergences, by dtype.
ROW_SUM_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-6,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}


def row_sum_tolerance(dtype: torch.dtype) -> float:
    """The accepted ``|sum(row) - 1|`` for probability rows of ``dtype`` (see :data:`ROW_SUM_TOLERANCE`)."""
    return ROW_SUM_TOLERANCE.get(dtype, 1e-4)


def all_finite(x: torch.Tensor) -> bool:
    """``True`` when every entry of ``x`` is finite (one fused min/max reduction, one host sync)."""
    if x.numel() == 0:
        return True
    if not (x.is_floating_point() or x.is_complex()):
        return True
    lo, hi = torch.aminmax(x.detach())  # NaN propagates through both, +-inf shows in one of them
    return bool(torch.isfinite(torch.stack((lo, hi))).all())


def check_row_shapes(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> torch.Size:
    """The broadcast row shape of two ``(..., n)`` tensors; raise if ``n`` differs or rows do not match."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of classes on the last dimension, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    rows = _broadcast(a.shape[:-1], b.shape[:-1])
    if rows is None:
        raise ValueError(
            f"the leading (batch) dimensions of {name_a} and {name_b} must be broadcastable, "
            f"got shapes {tuple(a.shape)} and {tuple(b.shape)}"
        )
    return rows


def _broadcast(a: tuple, b: tuple) -> torch.Size | None:
    """The broadcast of two shapes, or ``None`` if they do not broadcast (pure Python, no torch call)."""
    if a == b:
        return torch.Size(a)
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return torch.Size(reversed(out))


def check_probabilities(p: object, name: str, *, validate: bool = True) -> torch.Tensor:
    """Check a tensor of probability rows ``(..., n)``: finite, ``>= 0``, each row summing to 1.

    The accepted deviation of a row sum from 1 is :func:`row_sum_tolerance` of the dtype
    (1e-6 for float64, 1e-4 for float32, 1e-2 for float16/bfloat16).
    """
    check_class_tensor(p, name, " of probabilities, shape (..., n)")
    if not p.is_floating_point():
        raise ValueError(f"{name} must have a floating dtype, got {p.dtype}")
    if not validate or p.numel() == 0:
        return p
    x = p.detach()
    lo, hi = torch.aminmax(x)
    dev = (x.sum(-1, dtype=torch.float64) - 1.0).abs().max()
    lo, hi, dev = torch.stack((lo.to(torch.float64), hi.to(torch.float64), dev)).tolist()  # one sync
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(
            f"{name} must contain only finite probabilities (no NaN or +-inf), allowed range [0, 1]"
        )
    if lo < 0.0:
        raise ValueError(
            f"{name} must be non-negative (probabilities, allowed range [0, 1]), got min {lo:.3g}"
        )
    tol = row_sum_tolerance(p.dtype)
    if dev > tol:
        raise ValueError(
            f"each row of {name} must sum to 1 (tolerance {tol:g} for {p.dtype}), "
            f"got a row sum off by {dev:.3g}"
        )
    return p


def check_order(
    alpha: object, row_shape: torch.Size | None = None, *, name: str = "alpha", validate: bool = True
):
    """Check a Rényi order: a number in ``[0, inf]`` (``math.inf`` allowed), a tuple or list of them, or a
    tensor of them.

    Returns a ``float`` for a number (or a one-element tensor without gradient is NOT converted;
    tensors stay tensors). A tensor must be broadcastable to ``row_shape`` (the logits' shape without
    the class dimension), have a floating dtype and must not require grad. A tuple or list (one order
    per index of the rows' first dimension, e.g. per stacked student) is returned as a tuple of
    floats; it needs a ``row_shape`` whose first dimension has its length.
    """
    if isinstance(alpha, tuple | list):
        if row_shape is None or len(row_shape) == 0 or len(alpha) != row_shape[0]:
            rows = tuple(row_shape) if row_shape is not None else None
            raise ValueError(f"{name} as a sequence must have one order per index of the rows' first "
                             f"dimension (rows {rows}), got {len(alpha)} orders")
        return _checked_orders(tuple(alpha), name)
    if isinstance(alpha, torch.Tensor):
        check_not_meta(alpha, name)
        if not alpha.is_floating_point():
            raise ValueError(f"{name} as a tensor must have a floating dtype, got {alpha.dtype}")
        if alpha.requires_grad:
            raise ValueError(
                f"{name} must not require grad (the order is a hyperparameter, not differentiated)"
            )
        if row_shape is not None:
            _check_broadcast_to(alpha, row_shape, name)
        if validate and alpha.numel():
            a = alpha.detach()
            if bool(torch.isnan(a).any()) or float(a.min()) < 0.0:
                raise ValueError(
                    f"{name} must be in [0, inf] (math.inf allowed), got a tensor with NaN or < 0"
                )
        return alpha
    if isinstance(alpha, bool) or not isinstance(alpha, Number):
        if isinstance(alpha, np.floating | np.integer):
            alpha = float(alpha)
        else:
            raise ValueError(
                f"{name} must be a number in [0, inf] (math.inf allowed) or a tensor, "
                f"got {type(alpha).__name__}"
            ) from None
    try:
        value = float(alpha)
    except OverflowError:  # e.g. 10**400: an int beyond float's range (write math.inf for the limit)
        raise ValueError(f"{name} must be in [0, inf] (math.inf allowed) and, if finite, at most "
                         f"{sys.float_info.max:.4g}, got {short_repr(alpha)}") from None
    if math.isnan(value) or value < 0.0:
        raise ValueError(f"{name} must be in [0, inf] (math.inf allowed), got {alpha!r}")
    return value


@functools.lru_cache(maxsize=256)
def _checked_orders(alpha: tuple, name: str) -> tuple[float, ...]:
    """:func:`check_order` of each entry (cached: a training run passes the same tuple every step)."""
    return tuple(check_order(a, name=name) for a in alpha)


def check_temperature_arg(T: object, row_shape: torch.Size, *, name: str = "T", validate: bool = True):
    """Check a temperature: a finite number ``> 0`` (returned as float) or a tensor of them.

    A tensor must have a floating dtype and be broadcastable to ``row_shape`` (e.g. shape ``(S, 1)``
    for logits of shape ``(S, B, n)``: one temperature per stacked student).
    """
    if isinstance(T, torch.Tensor):
        check_not_meta(T, name)
        if not T.is_floating_point():
            raise ValueError(f"{name} as a tensor must have a floating dtype, got {T.dtype}")
        _check_broadcast_to(T, row_shape, name)
        if validate and T.numel():
            lo, hi = torch.aminmax(T.detach())
            if not (bool(torch.isfinite(torch.stack((lo, hi))).all()) and float(lo) > 0.0):
                raise ValueError(
                    f"{name} must be finite and > 0 (allowed range (0, inf)), got a tensor outside it"
                )
        return T
    return check_temperature(T, name)


def check_beta(beta: object, *, name: str = "beta", validate: bool = True):
    """Check the mixing weight ``beta`` in ``[0, 1]`` (a number, or a floating tensor without grad)."""
    if isinstance(beta, torch.Tensor):
        check_not_meta(beta, name)
        if not beta.is_floating_point():
            raise ValueError(f"{name} as a tensor must have a floating dtype, got {beta.dtype}")
        if validate and beta.numel():
            lo, hi = torch.aminmax(beta.detach())
            if bool(torch.isnan(torch.stack((lo, hi))).any()) or float(lo) < 0.0 or float(hi) > 1.0:
                raise ValueError(f"{name} must be in [0, 1], got a tensor outside it")
        return beta
    if isinstance(beta, bool | str | bytes):
        raise ValueError(f"{name} must be a number in [0, 1], got {type(beta).__name__} {beta!r}")
    try:
        value = float(beta)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number in [0, 1], got {short_repr(beta)}") from None
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {beta!r}")
    return value


def _check_broadcast_to(x: torch.Tensor, row_shape: torch.Size, name: str) -> None:
    if _broadcast(tuple(x.shape), tuple(row_shape)) != torch.Size(row_shape):
        raise ValueError(
            f"{name} must be a number or a tensor broadcastable to the row shape {tuple(row_shape)} "
            f"(the logits' shape without the class dimension), got shape {tuple(x.shape)}"
        )


def _check_logits_structure(x: object, name: str) -> None:
    check_class_tensor(x, name, " of shape (..., n)")
    if not x.is_floating_point():
        raise ValueError(
            f"{name} must have a floating dtype (float16/bfloat16/float32/float64), got {x.dtype}"
        )


def _finite_message(name: str) -> str:
    return f"{name} must contain only finite values (no NaN or +-inf), allowed range (-inf, inf)"


def check_logits_pair(
    a: object, b: object, name_a: str, name_b: str, targets: object = None, *, validate: bool = True,
    T: float | torch.Tensor | None = None, t_squared: bool = False, alpha_factor: float = 1.0,
) -> torch.Size:
    """Check two logits tensors (and optional class-index targets) with a single host sync.

    Structure (tensor, floating dtype, ``n >= 1`` classes, matching ``n``, broadcastable leading
    dimensions, targets an integer tensor broadcastable to the rows) is always checked. With
    ``validate``, the values are checked by :func:`check_logits_values` (``T``, ``t_squared`` and
    ``alpha_factor`` are passed on). Returns the row shape.
    """
    _check_logits_structure(a, name_a)
    _check_logits_structure(b, name_b)
    check_device(b, name_b, a.device, name_a)  # type: ignore[union-attr]
    rows = check_row_shapes(a, b, name_a, name_b)  # type: ignore[arg-type]
    n = a.shape[-1]  # type: ignore[union-attr]
    if targets is not None:
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"targets must be a torch.Tensor of class indices, got {type(targets).__name__}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(
                f"targets must be an integer tensor of class indices in [0, {n}), got {targets.dtype}"
            )
        check_device(targets, "targets", a.device, name_a)  # type: ignore[union-attr]
        _check_broadcast_to(targets, rows, "targets")
    if validate:
        check_logits_values(a, b, name_a, name_b, targets, T=T, t_squared=t_squared,  # type: ignore[arg-type]
                            alpha_factor=alpha_factor)
    return rows


#: Headroom below the largest number of the computation's dtype that the tempered logits keep, so that
#: no intermediate of the divergence (a difference of two log-probabilities, a scaled exponent) overflows.
LOGITS_HEADROOM = 16.0


def check_logits_values(
    a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str, targets: torch.Tensor | None = None, *,
    T: float | torch.Tensor | None = None, t_squared: bool = False, alpha_factor: float = 1.0,
) -> None:
    """Check the values of two logits tensors of checked structure, with a single host sync.

    One fused reduction per tensor gives each row's range ``max - min`` (NaN or ``inf`` exactly when
    an entry is not finite, or when finite entries beyond ~1e308 overflow float64); the targets' min
    and max (range ``[0, n)``) and a tensor ``T``'s min and max join the same sync.

    With a (checked) temperature ``T``, the logits divided by ``T`` must stay inside the dtype the
    divergence is computed in (float64 if ``a``, ``b`` or ``T`` is float64, else float32): every
    row's range times ``max(1, 1/T)`` (times ``T`` too with ``t_squared``, for the loss's
    ``T**2 D``, and times ``alpha_factor``, the order where the divergence forms ``alpha log p``
    unscaled) must be at most that dtype's largest number over :data:`LOGITS_HEADROOM`. Beyond it
    the tempered softmax is a one-hot vector whose divergence is not representable, and the value
    would be NaN; the documented range (``|logits| <= 1e4``, ``T`` in ``[0.05, 1000]``) lies far
    inside.

    Raises:
        ValueError: a logits tensor holds NaN or ``+-inf``; a target is outside ``[0, n)``; the
            logits divided by ``T`` overflow as above.
    """
    n = a.shape[-1]
    parts = [_row_range(a), _row_range(b)]
    if isinstance(T, torch.Tensor) and T.numel():
        parts += [v.to(torch.float64).to(parts[0].device) for v in torch.aminmax(T.detach())]
    if targets is not None and targets.numel():
        parts += [v.to(torch.float64).to(parts[0].device) for v in torch.aminmax(targets)]
    values = torch.stack(parts).tolist()  # the one host sync
    span_a, span_b = values[:2]
    if not (math.isfinite(span_a) and math.isfinite(span_b)):
        for x, name in ((a, name_a), (b, name_b)):
            if not all_finite(x):
                raise ValueError(_finite_message(name))
    if targets is not None and targets.numel():
        lo, hi = values[-2:]
        if lo < 0 or hi >= n:
            raise ValueError(
                f"targets must be class indices in [0, {n}) (allowed range [0, {n - 1}]), "
                f"got values in [{int(lo)}, {int(hi)}]"
            )
    if T is None:
        return
    if isinstance(T, torch.Tensor):
        if not T.numel():
            return
        t_lo, t_hi = values[2:4]
    else:
        t_lo = t_hi = float(T)
    double = any(isinstance(x, torch.Tensor) and x.dtype == torch.float64 for x in (a, b, T))
    dtype = torch.float64 if double else torch.float32
    limit = torch.finfo(dtype).max / LOGITS_HEADROOM
    for span, name in ((span_a, name_a), (span_b, name_b)):
        span_a_ = span * alpha_factor
        if not (span_a_ <= limit and span_a_ <= limit * t_lo and (not t_squared or span_a_ * t_hi <= limit)):
            factor = "max(1, 1/T, T)" if t_squared else "max(1, 1/T)"
            factor += f" times alpha = {alpha_factor:g}" if alpha_factor != 1.0 else ""
            at = f"T = {t_lo:.3g}" if t_lo == t_hi else f"T in [{t_lo:.3g}, {t_hi:.3g}]"
            raise ValueError(
                f"{name} / T overflows {str(dtype).removeprefix('torch.')}: a row of {name} spans "
                f"{span:.3g} (max - min) at {at}; allowed: that range times {factor} at most {limit:.3g} "
                f"(the documented range is |logits| <= 1e4 with T in [0.05, 1000]; float64 logits "
                f"reach further)"
            )


def _row_range(x: torch.Tensor) -> torch.Tensor:
    """The largest ``max - min`` of a row of ``x``, as a float64 0-dim tensor (no host sync)."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=x.device)
    lo, hi = torch.aminmax(x.detach(), dim=-1)
    return (hi.to(torch.float64) - lo.to(torch.float64)).amax()
