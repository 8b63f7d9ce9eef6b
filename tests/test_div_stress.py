"""Stress grid for the logits form: extreme logits x temperatures x orders x dtypes against mpmath.

Logits up to +-1e4, temperatures 0.05 ... 1000, orders 0, 1e-8, 0.5, 1 -+ 1e-7, 1, 2, 1e4, inf,
in float32 and float64 (bfloat16 as a sanity check). Every result must be finite (softmax
distributions have full support, so every true value is finite), non-negative, and within a
tolerance set by the conditioning of the inputs: the log-softmax of ``z / T`` in a dtype with
machine epsilon ``eps`` carries an absolute error of about ``eps * max|z| / T``.
"""

from __future__ import annotations

import functools
import itertools
import math

import mp_reference as R  # tests/fixtures, put on sys.path by conftest.py
import pytest
import torch

from kdlib import DistillationLoss, renyi_divergence_logits, renyi_gradient

INF = math.inf



ORDERS = [0.0, 1e-8, 0.5, 1 - 1e-7, 1.0, 1 + 1e-7, 2.0, 1e4, INF]
TEMPS = [0.05, 0.5, 1.0, 4.0, 100.0, 1000.0]
PATTERNS = {
    "moderate": ([0.3, -1.2, 2.0, 0.7, -0.4], [1.1, 0.2, -0.5, 0.3, 0.9]),
    "opposite_1e4": ([1e4, -1e4, 0.0, 5e3, -3.0], [-1e4, 1e4, 0.0, -5e3, 7.0]),
    "equal_1e4": ([1e4, -1e4, 0.0, 5e3, -3.0], [1e4, -1e4, 0.0, 5e3, -3.0]),
    "nearly_equal": ([2.0, 1.0, 0.0, -1.0, -2.0], [2.001, 0.999, 0.0005, -1.0003, -2.0]),
    "one_hot_swap": ([1e4, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1e4]),
    "flat_vs_spiky": ([0.0, 0.0, 0.0, 0.0, 0.0], [1e4, -1e4, 1e4, -1e4, 0.0]),
    "mixture": ([1e4, 1e4 - 1, 0.0, -1e4, -1e4], [3.0, -2.0, 1e4, -1e4, 9999.0]),
    "all_negative": ([-1e4, -1e4 + 0.5, -9990.0, -1e4, -1e4], [-1e4, -1e4, -1e4, -1e4 + 2.0, -9999.0]),
}
CASES = list(itertools.product(PATTERNS, TEMPS, ORDERS))


@functools.cache
def reference(name: str, T: float, a: float, dtype_name: str):
    """mpmath value and gradient for the logits as rounded to the tested dtype."""
    dtype = getattr(torch, dtype_name)
    v, z = (torch.tensor(x, dtype=dtype).double().tolist() for x in PATTERNS[name])
    return float(R.renyi_logits(v, z, a, T)), [float(g) for g in R.renyi_grad_logits(v, z, a, T)]


def _scale(name: str, T: float) -> float:
    v, z = PATTERNS[name]
    return 1.0 + max(abs(x) for x in v + z) / T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_grid_values_and_gradients_against_mpmath(dtype):
    eps = torch.finfo(dtype).eps
    failures = []
    for name, T, a in CASES:
        v = torch.tensor(PATTERNS[name][0], dtype=dtype)
        z = torch.tensor(PATTERNS[name][1], dtype=dtype, requires_grad=True)
        d = renyi_divergence_logits(v, z, a, T)
        (g,) = torch.autograd.grad(d, z)
        ref, gref = reference(name, T, a, str(dtype).split(".")[1])
        scale = _scale(name, T)
        got = float(d.detach())
        # no NaN, no infinity (every true value is finite), never negative
        if not (math.isfinite(got) and got >= 0.0 and bool(torch.isfinite(g).all())):
            failures.append((name, T, a, "non-finite", got))
            continue
        if abs(got - ref) > 16 * eps * scale * (1 + abs(ref)) + 1e-300:
            failures.append((name, T, a, "value", got, ref))
        # the gradient: (q - w)/T; its error grows with alpha * eps * scale (the tilt exponentiates it)
        amp = min(a, 1 / (eps * scale)) if math.isfinite(a) else 1.0
        gtol = 32 * eps * scale * max(1.0, amp) / T
        gerr = max(abs(x - y) for x, y in zip(g.double().tolist(), gref, strict=True))
        tie = math.isinf(a) and name in ("equal_1e4", "flat_vs_spiky")  # ties in the arg-max: any subgradient
        if not tie and gerr > gtol:
            failures.append((name, T, a, "gradient", gerr, gtol))
        if abs(float(g.double().sum())) > 8 * eps / T:
            failures.append((name, T, a, "gradient row sum", float(g.sum())))
    assert not failures, failures[:10]


def test_grid_tensor_orders_and_temperatures_match_scalar_calls():
    """The tensor forms (one order and one temperature per stacked row) reproduce the scalar calls."""
    names = list(PATTERNS)
    S = len(ORDERS) * len(TEMPS)
    pairs = list(itertools.product(ORDERS, TEMPS))
    alpha = torch.tensor([a for a, _ in pairs], dtype=torch.float64).view(S, 1)
    T = torch.tensor([t for _, t in pairs], dtype=torch.float64).view(S, 1)
    v = torch.tensor([PATTERNS[n][0] for n in names], dtype=torch.float64)  # (B, n)
    z = torch.tensor([PATTERNS[n][1] for n in names], dtype=torch.float64).expand(S, -1, -1).clone()
    z.requires_grad_()
    d = renyi_divergence_logits(v, z, alpha, T)
    (g,) = torch.autograd.grad(d.sum(), z)
    assert torch.isfinite(d).all() and torch.isfinite(g).all() and (d >= 0).all()
    for s, (a, t) in enumerate(pairs):
        ds = renyi_divergence_logits(v, z[s].detach(), a, t)
        torch.testing.assert_close(d[s], ds, rtol=1e-12, atol=1e-15)
        # the number path takes the tilted distribution from the centred evaluation where every row can, the
        # tensor path from the log-sum-exp: equal up to rounding (4e-15 here, on entries near 1)
        torch.testing.assert_close(g[s], renyi_gradient(v, z[s].detach(), a, t), rtol=1e-9, atol=2e-14)


def test_grid_bfloat16_sanity():
    """bfloat16 in, bfloat16 out; computed in float32 from the bfloat16 inputs, so close to that."""
    for name, T, a in CASES:
        v = torch.tensor(PATTERNS[name][0], dtype=torch.bfloat16)
        z = torch.tensor(PATTERNS[name][1], dtype=torch.bfloat16, requires_grad=True)
        d = renyi_divergence_logits(v, z, a, T)
        (g,) = torch.autograd.grad(d, z)
        d = d.detach()
        assert d.dtype == torch.bfloat16 and g.dtype == torch.bfloat16
        assert math.isfinite(float(d)) and float(d) >= 0 and torch.isfinite(g.float()).all(), (name, T, a)
        d32 = float(renyi_divergence_logits(v.float(), z.detach().float(), a, T))
        assert abs(float(d) - d32) <= 2**-7 * abs(d32) + 1e-30, (name, T, a, float(d), d32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, INF])
def test_loss_on_extreme_logits_is_finite(dtype, alpha):
    names = list(PATTERNS)
    v = torch.tensor([PATTERNS[n][0] for n in names], dtype=dtype)
    z = torch.tensor([PATTERNS[n][1] for n in names], dtype=dtype, requires_grad=True)
    y = torch.arange(len(names)) % 5
    for T in TEMPS:
        loss = DistillationLoss(alpha=alpha, T=T, beta=0.5)(z, v, y)
        (g,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(g).all(), T


# ---------------------------------------------------------------------------
# float32 keeps the documented accuracy over the whole documented range (issue 13, item 4)
# ---------------------------------------------------------------------------

F32_ORDERS = [1e-8, 0.3, 0.5, 0.9, 1.0, 1.1, 1.5, 2.0, 5.0, 1e4, INF]
F32_TEMPS = [0.05, 1.0, 30.0, 1000.0]
#: relative tolerance: 2^-14 (6.1e-5, 512 float32 ulps) for the orders up to 5 and infinity, 2^-11
#: for 1e4 (the tilt p^a q^(1-a) multiplies the rounding of the logits by the order). Measured on
#: this grid: at most 1.8e-5 (a tail class 1287 tempered units below the top, whose float32
#: log-probability carries 1.5e-4 absolute), typically 1e-6; before the centred evaluation the
#: error was up to 1e9 relative (3e-7 absolute on values near 1e-16).
F32_RTOL = {1e4: 2.0**-11}
F32_RTOL_DEFAULT = 2.0**-14
#: absolute floor: values below it are near float32's underflow (products of probabilities
#: underflow in between), and no loss is affected by them
F32_ATOL = 1e-30


def _f32_rows():
    """Teacher and student logits within +-1e4: independent rows, close rows (relative 1e-2 and
    1e-4: P close to Q, where the log-sum-exp of numbers near log n lost everything) and an equal
    pair (D = 0), at three scales."""
    g = torch.Generator().manual_seed(13)
    V, Z = [], []
    for scale in (1.0, 100.0, 1e4):
        v = (torch.randn(10, generator=g, dtype=torch.float64) * scale).clamp(-1e4, 1e4)
        for z in (torch.randn(10, generator=g, dtype=torch.float64) * scale,
                  v + torch.randn(10, generator=g, dtype=torch.float64) * scale * 1e-2,
                  v + torch.randn(10, generator=g, dtype=torch.float64) * scale * 1e-4, v):
            V.append(v)
            Z.append(z.clamp(-1e4, 1e4))
    return torch.stack(V).float(), torch.stack(Z).float()


@functools.cache
def _f32_reference(T: float, a: float) -> tuple[float, ...]:
    V, Z = _f32_rows()
    with R.mp.workdps(80):  # values down to 1e-30 need more than 50 digits in the log-sum-exp
        old, R.DPS = R.DPS, 80
        try:
            return tuple(float(R.renyi_logits(v, z, a, T)) for v, z in zip(V.double().tolist(),
                                                                          Z.double().tolist(), strict=True))
        finally:
            R.DPS = old


def test_float32_relative_accuracy_over_the_documented_range():
    """float32 logits in [-1e4, 1e4], T in [0.05, 1000], every kind of order: each row's divergence
    within F32_RTOL relative (F32_ATOL absolute) of the 80-digit value for the same float32 inputs,
    through the scalar-order path and the tensor-order path (one order per stacked student)."""
    V, Z = _f32_rows()
    alpha = torch.tensor(F32_ORDERS).view(-1, 1)
    failures = []
    for T in F32_TEMPS:
        stacked = renyi_divergence_logits(V, Z.expand(len(F32_ORDERS), -1, -1), alpha, T)
        for i, a in enumerate(F32_ORDERS):
            ref = _f32_reference(T, a)
            rtol = F32_RTOL.get(a, F32_RTOL_DEFAULT)
            for path, got in (("scalar", renyi_divergence_logits(V, Z, a, T)), ("tensor", stacked[i])):
                assert got.dtype == torch.float32
                for row, (x, y) in enumerate(zip(got.double().tolist(), ref, strict=True)):
                    if not abs(x - y) <= rtol * y + F32_ATOL:
                        failures.append((path, T, a, row, x, y, abs(x - y) / max(y, 1e-300)))
    assert not failures, (len(failures), failures[:8])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_tuple_of_orders_equals_one_call_per_order(dtype):
    """One order per stacked row as a tuple (the engine's form: order-free terms once, each order's own
    terms on its rows only) gives each row the value and the gradients (student, teacher and T) of a
    call with its order as a number; orders repeat in non-contiguous rows, and span 0 ... 1e30 and inf."""
    orders = (2.0, 0.25, 1.0, INF, 2.0, 0.0, 1e4, 0.5, 1 - 1e-7, 1e30, 0.25, 1.0)
    S, names = len(orders), list(PATTERNS)
    g = torch.Generator().manual_seed(3)
    v = (torch.randn(len(names), 5, generator=g, dtype=torch.float64) * 4).to(dtype).requires_grad_()
    z = torch.tensor([PATTERNS[n][1] for n in names], dtype=torch.float64).clamp(-50, 50)
    z = (z + torch.randn(S, len(names), 5, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    T = torch.linspace(0.5, 8.0, S, dtype=dtype).view(S, 1).requires_grad_()
    d = renyi_divergence_logits(v, z, orders, T)
    gv, gz, gT = torch.autograd.grad(d.sum(), (v, z, T))
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    for s, a in enumerate(orders):
        Ts = T[s].detach().clone().requires_grad_()
        zs = z[s].detach().clone().requires_grad_()
        vs = v.detach().clone().requires_grad_()
        ds = renyi_divergence_logits(vs, zs, a, Ts)
        gvs, gzs, gTs = torch.autograd.grad(ds.sum(), (vs, zs, Ts))
        torch.testing.assert_close(d[s], ds, **tol)
        torch.testing.assert_close(gz[s], gzs, **tol)
        torch.testing.assert_close(gT[s], gTs, **tol)
        gv = gv - gvs  # the teacher's gradient is the sum over the rows
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(gv, torch.zeros_like(gv), rtol=0, atol=atol)


def test_a_tuple_of_orders_is_checked():
    v, z = torch.zeros(4, 3), torch.zeros(2, 4, 3)
    with pytest.raises(ValueError, match="one order per index of the rows' first dimension"):
        renyi_divergence_logits(v, z, (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"alpha must be in \[0, inf\]"):
        renyi_divergence_logits(v, z, (1.0, -2.0))
    assert renyi_divergence_logits(v, z, [1.0, INF]).shape == (2, 4)  # a list is a sequence too
