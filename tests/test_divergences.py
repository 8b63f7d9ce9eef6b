"""Tests of kdlib.divergences: KL and Rényi divergences of every order (thesis eq 1.4, 1.16-1.33).

Reference values come from outside kdlib: the textbook formulas in numpy/scipy, and the
50-digit mpmath oracle in ``tests/fixtures/mp_reference.py``. Properties are those of
van Erven & Harremoës (2014) and of the thesis's examples.
"""

from __future__ import annotations

import math

import mp_reference as R  # tests/fixtures, put on sys.path by conftest.py
import mpmath as mp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdlib
from kdlib import kl_divergence, renyi_divergence, renyi_divergence_logits, renyi_gradient, softmax_t

INF = math.inf



#: Orders exercised everywhere, sorted: the extended orders 0, 1, inf and points around them.
ORDERS = [0.0, 1e-8, 0.1, 0.25, 0.5, 0.9, 1 - 1e-7, 1.0, 1 + 1e-7, 1.1, 1.5, 2.0, 5.0, 50.0, 1e4, INF]
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

_weight = st.one_of(
    st.just(0.0),
    st.floats(1e-3, 1.0),
    st.floats(1e-12, 1e-3),
    st.floats(1e-300, 1e-12),
)


def _normalise(ws: list[float]) -> np.ndarray:
    w = np.asarray(ws, dtype=np.float64)
    return w / w.sum()


@st.composite
def prob_pairs(draw, zeros: bool = True, max_n: int = 8):
    """Two probability vectors of the same length n in [1, max_n], zeros allowed if ``zeros``."""
    n = draw(st.integers(1, max_n))
    w = _weight if zeros else st.floats(1e-6, 1.0)
    p = draw(st.lists(w, min_size=n, max_size=n).filter(lambda x: sum(x) > 0))
    q = draw(st.lists(w, min_size=n, max_size=n).filter(lambda x: sum(x) > 0))
    return _normalise(p), _normalise(q)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def D(p, q, a) -> float:
    return float(renyi_divergence(t64(p), t64(q), a))


def mp_ref(p, q, a) -> float:
    """50-digit reference on the rows normalised in mpmath (kdlib renormalises its rows too)."""
    with mp.workdps(R.DPS):
        pm = [mp.mpf(float(x)) for x in p]
        qm = [mp.mpf(float(x)) for x in q]
        sp, sq = mp.fsum(pm), mp.fsum(qm)
        return float(R.renyi([x / sp for x in pm], [x / sq for x in qm], a))


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-13) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


# ---------------------------------------------------------------------------
# exact values against the mpmath oracle
# ---------------------------------------------------------------------------


orders = st.lists(st.sampled_from(ORDERS), min_size=1, max_size=3, unique=True)


@PROPS
@given(prob_pairs(), orders)
def test_every_order_matches_mpmath(pq, alphas):
    """All orders, zeros allowed: value and infinities as eq (1.16)/(1.27)/(1.31)/(1.33) in 50 digits."""
    p, q = pq
    for a in alphas:
        got, ref = D(p, q, a), mp_ref(p, q, a)
        assert close(got, ref, rel=1e-9, abs_=1e-13), (a, got, ref)


def test_support_conventions_every_order():
    """0·log(0/q) = 0 and p·log(p/0) = inf (eq 1.4); for alpha < 1 a zero q under positive p stays finite."""
    p = [0.5, 0.5, 0.0]
    q = [0.0, 0.5, 0.5]  # q = 0 where p > 0, and p = 0 where q > 0
    expect = {
        0.0: -math.log(0.5),  # eq (1.27): Q(supp P) = 0.5
        0.5: -2 * math.log(0.5**0.5 * 0.5**0.5),  # only the common class counts
        0.9: math.log(0.5**0.9 * 0.5**0.1) / (0.9 - 1),
        1.0: INF,
        1 + 1e-7: INF,
        2.0: INF,
        INF: INF,
    }
    for a, v in expect.items():
        got = D(p, q, a)
        assert close(got, v, rel=1e-12), (a, got, v)
    # disjoint supports: infinite for every order, including 0 (Q(supp P) = 0) and alpha < 1
    for a in ORDERS:
        assert D([1.0, 0.0], [0.0, 1.0], a) == INF
    # p = q = 0 entries are ignored (0/0 = 0) for every order
    for a in ORDERS:
        assert close(D([0.3, 0.7, 0.0], [0.6, 0.4, 0.0], a), D([0.3, 0.7], [0.6, 0.4], a), rel=1e-14)
    # zeros of p only: D_0 = -log Q(supp P), D_inf = max over supp P
    assert close(D([1.0, 0.0], [0.25, 0.75], 0.0), -math.log(0.25), rel=1e-14)
    assert close(D([1.0, 0.0], [0.25, 0.75], INF), math.log(4.0), rel=1e-14)


def test_order_zero_is_minus_log_mass_of_support():
    """eq (1.27), including a tiny complement, where -log1p(-Q(complement)) keeps relative accuracy."""
    q = np.array([1 - 1e-12, 1e-12])
    assert close(D([1.0, 0.0], q, 0.0), 1e-12, rel=1e-6, abs_=0.0)
    assert D([0.5, 0.5], q, 0.0) == 0.0


# ---------------------------------------------------------------------------
# properties (van Erven & Harremoës 2014)
# ---------------------------------------------------------------------------


@PROPS
@given(prob_pairs(), orders)
def test_nonnegative_and_zero_iff_equal(pq, alphas):
    """D_alpha >= 0, D_alpha(P||P) = 0, and a Pinsker-type lower bound makes P != Q strictly positive.

    For alpha in (0, 1]: D_alpha >= alpha/2 * ||P - Q||_1^2 (Gilardoni; van Erven & Harremoës Thm 31),
    and D_alpha is nondecreasing, so D_alpha >= KL >= ||P - Q||_1^2 / 2 for alpha >= 1. For alpha = 0
    equality holds iff supp Q is inside supp P (D_0 = -log Q(supp P)), not iff P = Q.
    """
    p, q = pq
    tv1 = float(np.abs(p - q).sum())
    for a in alphas:
        d = D(p, q, a)
        assert d >= 0.0
        assert D(p, p, a) == pytest.approx(0.0, abs=1e-15)
        if a > 0:
            bound = min(a, 1.0) / 2 * tv1**2
            assert d >= bound * (1 - 1e-9) - 1e-15, (a, d, bound)
    zero_order_is_zero = D(p, q, 0.0) == 0.0
    q_inside_p = bool(np.all((q == 0) | (p > 0)))
    assert zero_order_is_zero == q_inside_p


@PROPS
@given(prob_pairs(), st.lists(st.sampled_from(ORDERS), min_size=2, max_size=4, unique=True))
def test_nondecreasing_in_order(pq, alphas):
    p, q = pq
    alphas = sorted(alphas)
    vals = [D(p, q, a) for a in alphas]
    for a0, v0, a1, v1 in zip(alphas, vals, alphas[1:], vals[1:], strict=False):
        assert v1 >= v0 * (1 - 1e-10) - 1e-14, (a0, v0, a1, v1)


@PROPS
@given(prob_pairs(), st.floats(1e-6, 1 - 1e-6))
def test_skew_symmetry(pq, a):
    """D_alpha(P||Q) = alpha/(1-alpha) D_{1-alpha}(Q||P) for 0 < alpha < 1."""
    p, q = pq
    lhs = D(p, q, a)
    rhs = a / (1 - a) * D(q, p, 1 - a)
    assert close(lhs, rhs, rel=1e-8, abs_=1e-14), (lhs, rhs)


@PROPS
@given(prob_pairs())
def test_order_one_half_is_bhattacharyya(pq):
    """D_{1/2}(P||Q) = -2 log sum sqrt(p q), computed here with numpy."""
    p, q = pq
    bc = float(np.sum(np.sqrt(p) * np.sqrt(q)))  # not sqrt(p q): that product underflows
    ref = INF if bc == 0 else -2 * math.log(bc)
    assert close(D(p, q, 0.5), ref, rel=1e-9, abs_=1e-14)


@PROPS
@given(prob_pairs())
def test_order_two_is_log_one_plus_chi_square(pq):
    """D_2(P||Q) = log(1 + chi^2(P||Q)), chi^2 = sum (p - q)^2 / q (infinite if some q = 0 < p)."""
    p, q = pq
    if np.any((q == 0) & (p > 0)):
        assert D(p, q, 2.0) == INF
        return
    m = q > 0
    chi2 = float(np.sum((p[m] - q[m]) ** 2 / q[m]))
    if not math.isfinite(chi2):  # overflow of the float64 formula (tiny q): compare with mpmath instead
        assert close(D(p, q, 2.0), mp_ref(p, q, 2.0))
        return
    assert close(D(p, q, 2.0), math.log1p(chi2), rel=1e-9, abs_=1e-14)


@PROPS
@given(st.lists(st.floats(1e-6, 1.0), min_size=2, max_size=8), orders, st.data())
def test_conditional_distribution_example(qw, alphas, data):
    """eq (1.17)-(1.20): for P = Q(. | A), D_alpha(P||Q) = -log Q(A) for every order."""
    q = _normalise(qw)
    n = len(q)
    A = data.draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    A = np.asarray(A)
    QA = float(q[A].sum())
    p = np.where(A, q / QA, 0.0)
    for a in alphas:
        assert close(D(p, q, a), -math.log(QA), rel=1e-9, abs_=1e-14), a


# ---------------------------------------------------------------------------
# KL: scipy, the decomposition of eq (1.5), alpha = 1
# ---------------------------------------------------------------------------


@PROPS
@given(prob_pairs())
def test_kl_matches_scipy(pq):
    p, q = pq
    ref_rel = float(np.sum(scipy.special.rel_entr(p, q)))
    ref_ent = float(scipy.stats.entropy(p, q))
    got = float(kl_divergence(t64(p), t64(q)))
    assert close(got, ref_rel, rel=1e-9, abs_=1e-13)
    assert close(got, ref_ent, rel=1e-9, abs_=1e-13)
    assert got == D(p, q, 1.0)


@FEW
@given(prob_pairs(zeros=False))
def test_kl_decomposition_eq_1_5(pq):
    """D_KL(P||Q) + H(P) = H(P||Q) (eq 1.5)."""
    p, q = pq
    H = -float(np.sum(p * np.log(p)))
    cross = -float(np.sum(p * np.log(q)))
    assert float(kl_divergence(t64(p), t64(q))) + H == pytest.approx(cross, rel=1e-12, abs=1e-13)


# ---------------------------------------------------------------------------
# continuity across alpha = 1 and toward 0
# ---------------------------------------------------------------------------


@FEW
@given(prob_pairs(zeros=False))
def test_continuous_across_one(pq):
    """|alpha - 1| < 1e-4: exact to 1e-10 relative, and (D_alpha - KL)/(alpha - 1) -> Var_P[log p/q] / 2."""
    p, q = pq
    kl = D(p, q, 1.0)
    r = np.log(p) - np.log(q)
    var = float(np.sum(p * (r - np.sum(p * r)) ** 2))
    for e in (1e-4, 1e-6, 1e-7, 1e-10, 1e-13):
        for a in (1 - e, 1 + e):
            got = D(p, q, a)
            assert close(got, mp_ref(p, q, a), rel=1e-10, abs_=1e-15)
            # agreement with KL to 1e-6 relative up to the first-order term
            assert abs(got - kl - (a - 1) * var / 2) <= 1e-6 * kl + 1e-15 + 10 * e * e * (1 + var) ** 2
    e = 1e-7
    slope = (D(p, q, 1 + e) - D(p, q, 1 - e)) / (2 * e)
    assert slope == pytest.approx(var / 2, rel=1e-3, abs=1e-9)


def test_small_orders_keep_relative_accuracy():
    """alpha -> 0: D_alpha ~ alpha/(1-alpha) KL(Q||P) (skew symmetry), 1e-9 relative even at alpha = 1e-12."""
    p = np.array([0.7, 0.2, 0.1])
    q = np.array([0.1, 0.3, 0.6])
    for a in (1e-3, 1e-8, 1e-12):
        assert close(D(p, q, a), mp_ref(p, q, a), rel=1e-9, abs_=0.0)
    assert D(p, q, 1e-12) == pytest.approx(1e-12 * D(q, p, 1.0), rel=1e-9)


def test_orders_zero_and_infinity_are_limits():
    p = np.array([0.6, 0.4, 0.0])
    q = np.array([0.2, 0.3, 0.5])
    assert D(p, q, 1e-9) == pytest.approx(D(p, q, 0.0), rel=1e-6)
    assert D(p, q, 1e6) == pytest.approx(D(p, q, INF), rel=1e-5)
    assert D(p, q, INF) == pytest.approx(math.log(0.6 / 0.2), rel=1e-15)
    assert D(p, q, 1e300) == pytest.approx(math.log(3.0), rel=1e-15)  # no overflow for huge finite orders


# ---------------------------------------------------------------------------
# shapes, dtypes, broadcasting
# ---------------------------------------------------------------------------


def test_batch_shapes_and_broadcasting():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)
    for a in (0.0, 0.5, 1.0, 2.0, INF):
        out = renyi_divergence(p, q, a)
        assert out.shape == (2, 3)
        for i in range(2):
            for j in range(3):
                assert float(out[i, j]) == pytest.approx(
                    D(p[i, j].numpy(), q[j].numpy(), a), rel=1e-14, abs=1e-16
                )
    assert kl_divergence(p[0, 0], q[0]).shape == ()


def test_dtype_is_kept_and_float32_rows_are_accepted():
    p32 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float32)
    q32 = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float32)
    out = renyi_divergence(p32, q32, 2.0)
    assert out.dtype == torch.float32
    assert float(out) == pytest.approx(D(p32.double().numpy(), q32.double().numpy(), 2.0), rel=1e-6)
    assert renyi_divergence(p32.double(), q32, 2.0).dtype == torch.float64


@pytest.mark.parametrize("a", [0.0, 0.3, 0.5, 1 - 1e-6, 1.0, 1 + 1e-6, 2.0, 7.0, INF])
def test_probability_gradients_gradcheck(a):
    """Gradients of the function as computed (rows renormalised) in float64, interior points."""
    g = torch.Generator().manual_seed(3)
    p = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), -1).requires_grad_()
    q = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: renyi_divergence(p, q, a, validate=False), (p, q))


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0])
def test_probability_gradients_match_composition_with_softmax(a):
    """d/dz of D(softmax(v), softmax(z)) via the probability form equals renyi_gradient (eq 1.8 at a = 1)."""
    g = torch.Generator().manual_seed(4)
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    d = renyi_divergence(softmax_t(v, 2.0), softmax_t(z, 2.0), a)
    (gz,) = torch.autograd.grad(d.sum(), z)
    torch.testing.assert_close(gz, renyi_gradient(v, z, a, 2.0), rtol=1e-10, atol=1e-12)


def test_probability_gradient_at_zero_entries_is_defined():
    """No NaN at the boundary: d/dq_i = 0-weighted where p_i = 0, -inf where q_i = 0 < p_i for alpha < 1."""
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64, requires_grad=True)
    for a in (0.0, 0.5, 1.0, 2.0, INF):
        gp, gq = torch.autograd.grad(renyi_divergence(p, q, a), (p, q))
        assert not torch.isnan(gp).any() and not torch.isnan(gq).any(), a
        assert torch.isfinite(gq).all()
    # an infinite divergence gives a zero gradient, not NaN
    q0 = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64, requires_grad=True)
    gp, gq = torch.autograd.grad(renyi_divergence(p, q0, 2.0), (p, q0))
    assert float(renyi_divergence(p.detach(), q0.detach(), 2.0)) == INF
    assert (gp == 0).all() and (gq == 0).all()


# ---------------------------------------------------------------------------
# from logits
# ---------------------------------------------------------------------------


@st.composite
def logit_pairs(draw, max_n: int = 7, scale: float = 30.0):
    n = draw(st.integers(1, max_n))
    f = st.floats(-scale, scale)
    return draw(st.lists(f, min_size=n, max_size=n)), draw(st.lists(f, min_size=n, max_size=n))


@PROPS
@given(logit_pairs(), st.sampled_from(ORDERS), st.sampled_from([0.05, 0.5, 1.0, 4.0, 100.0]))
def test_logits_form_matches_mpmath(vz, a, T):
    v, z = vz
    got = float(renyi_divergence_logits(t64(v), t64(z), a, T))
    ref = float(R.renyi_logits(v, z, a, T))
    scale = 1 + max(abs(x) for x in v + z) / T
    assert abs(got - ref) <= 1e-9 * abs(ref) + 64 * 2.2e-16 * scale * (1 + abs(ref)), (got, ref)
    g = renyi_gradient(t64(v), t64(z), a, T)
    gref = torch.tensor([float(x) for x in R.renyi_grad_logits(v, z, a, T)], dtype=torch.float64)
    if math.isinf(a):  # a tie in the arg-max of log p - log q may pick another subgradient
        r = np.asarray(v) / T - np.asarray(z) / T
        if np.sum(r >= r.max() - 1e-9 * (1 + abs(r.max()))) > 1:
            return
    assert torch.allclose(
        g, gref, rtol=1e-7, atol=64 * 2.2e-16 * scale * max(1.0, a if math.isfinite(a) else 1) / T
    )


@PROPS
@given(logit_pairs(), st.sampled_from(ORDERS), st.floats(0.05, 50.0))
def test_logits_form_equals_probability_form(vz, a, T):
    v, z = vz
    got = float(renyi_divergence_logits(t64(v), t64(z), a, T))
    p = softmax_t(t64(v), T)
    q = softmax_t(t64(z), T)
    if bool((p > 0).all() and (q > 0).all()):  # no underflow: both forms see the same distributions
        assert close(got, float(renyi_divergence(p, q, a)), rel=1e-8, abs_=1e-12)
    assert math.isfinite(got) and got >= 0


def test_logits_full_support_orders_zero_and_infinity():
    v = t64([0.0, -1e4])
    z = t64([0.0, -3e4])
    # softmax distributions have full support: D_0 = -log Q(supp P) = -log 1 = 0 (eq 1.27)
    assert float(renyi_divergence_logits(v, z, 0.0)) == 0.0
    # D_inf = max_i log p_i - log q_i over all classes, here at a class whose p = e^-10000 underflows
    assert float(renyi_divergence_logits(v, z, INF)) == pytest.approx(2e4, rel=1e-12)
    assert float(renyi_divergence_logits(v, z, 1.0)) == pytest.approx(0.0, abs=1e-300)
    assert float(renyi_divergence_logits(v, z, 1e4)) == pytest.approx(2e4 - 1e4 / (1e4 - 1), rel=1e-12)


def test_logits_huge_finite_orders_approach_infinity():
    """Orders beyond 1e8 use the scaled evaluation: no overflow, and D_alpha -> D_inf, gradient too."""
    g = torch.Generator().manual_seed(12)
    v = torch.randn(3, 6, generator=g, dtype=torch.float64) * 4
    z = torch.randn(3, 6, generator=g, dtype=torch.float64) * 4
    d_inf = renyi_divergence_logits(v, z, INF, 2.0)
    for a in (1e9, 1e12, 1e300):
        torch.testing.assert_close(renyi_divergence_logits(v, z, a, 2.0), d_inf, rtol=1e-8, atol=0)
        torch.testing.assert_close(
            renyi_gradient(v, z, a, 2.0), renyi_gradient(v, z, INF, 2.0), rtol=0, atol=1e-12
        )
    d32 = renyi_divergence_logits(v.float(), z.float(), 1e30, 2.0)
    assert torch.isfinite(d32).all()


@pytest.mark.parametrize("a", [0.0, 1e-3, 0.1, 0.5, 1 - 1e-6, 1.0, 1 + 1e-6, 2.0, 5.0, INF])
def test_logits_gradcheck_float64(a):
    """torch.autograd.gradcheck of the analytic backward: student, teacher and a tensor temperature."""
    g = torch.Generator().manual_seed(5)
    v = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    T = torch.tensor([0.7, 1.5, 3.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, z, T: renyi_divergence_logits(v, z, a, T), (v, z, T))


def test_second_derivatives_are_refused_not_wrong():
    """The analytic backward is not itself differentiable: double backward raises instead of returning 0."""
    v = torch.randn(2, 4, dtype=torch.float64)
    z = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(renyi_divergence_logits(v, z, 2.0).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(g.sum(), z)
    p = torch.softmax(v, -1).requires_grad_()
    (gp,) = torch.autograd.grad(
        renyi_divergence(p, torch.softmax(z.detach(), -1), 2.0).sum(), p, create_graph=True
    )
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gp.sum(), p)


@pytest.mark.parametrize("a", [0.0, 0.5, 1.0, 1 + 1e-7, 2.0, INF])
def test_renyi_gradient_equals_autograd(a):
    g = torch.Generator().manual_seed(6)
    v = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    z = torch.randn(2, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    (gz,) = torch.autograd.grad(renyi_divergence_logits(v, z, a, 3.0).sum(), z)
    torch.testing.assert_close(renyi_gradient(v, z, a, 3.0), gz, rtol=1e-12, atol=1e-14)
    # and against an independent autograd of the plain formula (eq 1.16 through log_softmax)
    if a not in (0.0, INF) and abs(a - 1) > 1e-3:
        z2 = z.detach().clone().requires_grad_()
        lp = torch.log_softmax(v / 3.0, -1)
        lq = torch.log_softmax(z2 / 3.0, -1)
        plain = torch.logsumexp(a * lp + (1 - a) * lq, -1) / (a - 1) if a != 1 else None
        (gz2,) = torch.autograd.grad(plain.sum(), z2)
        torch.testing.assert_close(renyi_gradient(v, z, a, 3.0), gz2, rtol=1e-10, atol=1e-13)


def test_gradient_special_orders():
    """alpha = 1: (q - p)/T (eq 1.8); alpha = 0: zero; alpha = inf: (q - e_argmax)/T; rows sum to 0."""
    g = torch.Generator().manual_seed(7)
    v = torch.randn(5, 4, generator=g, dtype=torch.float64)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    T = 2.5
    p, q = softmax_t(v, T), softmax_t(z, T)
    torch.testing.assert_close(renyi_gradient(v, z, 1.0, T), (q - p) / T, rtol=1e-13, atol=1e-15)
    assert (renyi_gradient(v, z, 0.0, T) == 0).all()
    i = (torch.log(p) - torch.log(q)).argmax(-1)
    e = torch.nn.functional.one_hot(i, 4).double()
    torch.testing.assert_close(renyi_gradient(v, z, INF, T), (q - e) / T, rtol=1e-13, atol=1e-15)
    for a in (0.3, 2.0, 9.0):
        assert renyi_gradient(v, z, a, T).sum(-1).abs().max() < 1e-15


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0, 4.0])
def test_high_temperature_limit_of_the_gradient(a):
    """For zero-mean logits, dD_alpha/dz -> alpha (z - v) / (n T^2) with relative error O(1/T)."""
    g = torch.Generator().manual_seed(8)
    n = 10
    v = torch.randn(n, generator=g, dtype=torch.float64) * 2
    z = torch.randn(n, generator=g, dtype=torch.float64) * 2
    v, z = v - v.mean(), z - z.mean()
    errs = []
    for T in (10.0, 100.0, 1000.0, 10000.0):
        limit = a * (z - v) / (n * T**2)
        err = float((renyi_gradient(v, z, a, T) - limit).norm() / limit.norm())
        errs.append(err)
    assert errs[-1] < 1e-3
    for e0, e1 in zip(errs[1:], errs[2:], strict=False):  # from T = 100 on
        assert 0.085 < e1 / e0 < 0.12  # one decade of T: one decade of error, the O(1/T) rate


# ---------------------------------------------------------------------------
# tensor orders and temperatures (stacked students), dtypes
# ---------------------------------------------------------------------------


def test_tensor_alpha_and_temperature_match_scalar_calls():
    g = torch.Generator().manual_seed(9)
    orders = [0.0, 1e-8, 0.1, 0.5, 1 - 1e-7, 1.0, 1 + 1e-7, 2.0, 1e4, INF]
    S, B, n = len(orders), 4, 6
    v = torch.randn(B, n, generator=g, dtype=torch.float64) * 3
    z = torch.randn(S, B, n, generator=g, dtype=torch.float64, requires_grad=True) * 3
    alpha = torch.tensor(orders, dtype=torch.float64).unsqueeze(-1)
    T = torch.linspace(0.5, 8.0, S, dtype=torch.float64).unsqueeze(-1)
    d = renyi_divergence_logits(v, z, alpha, T)
    assert d.shape == (S, B)
    (gz,) = torch.autograd.grad(d.sum(), z)
    for s, a in enumerate(orders):
        ds = renyi_divergence_logits(v, z[s], a, float(T[s]))
        torch.testing.assert_close(d[s], ds, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(gz[s], renyi_gradient(v, z[s], a, float(T[s])), rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(renyi_gradient(v, z, alpha, T), gz, rtol=1e-12, atol=1e-15)
    assert not torch.isnan(gz).any()


def test_tensor_alpha_gradcheck():
    g = torch.Generator().manual_seed(10)
    alpha = torch.tensor([[0.0], [0.5], [1.0], [1 + 1e-5], [3.0], [INF]], dtype=torch.float64)
    v = torch.randn(6, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, z: renyi_divergence_logits(v, z, alpha, 2.0), (v, z))


def test_float32_bfloat16_dtypes():
    g = torch.Generator().manual_seed(11)
    v = torch.randn(8, 10, generator=g) * 5
    z = torch.randn(8, 10, generator=g) * 5
    for a in (0.0, 0.5, 1.0, 2.0, INF):
        ref = renyi_divergence_logits(v.double(), z.double(), a, 2.0)
        d32 = renyi_divergence_logits(v, z, a, 2.0)
        assert d32.dtype == torch.float32
        torch.testing.assert_close(d32.double(), ref, rtol=1e-5, atol=1e-6)
        vb, zb = v.bfloat16(), z.bfloat16().requires_grad_()
        db = renyi_divergence_logits(vb, zb, a, 2.0)
        assert db.dtype == torch.bfloat16
        # computed in float32 from the bfloat16 inputs, then rounded to bfloat16
        exact = renyi_divergence_logits(vb.double(), zb.detach().double(), a, 2.0)
        torch.testing.assert_close(db.double(), exact, rtol=1e-2, atol=1e-3)
        (gb,) = torch.autograd.grad(db.sum(), zb)
        assert gb.dtype == torch.bfloat16 and torch.isfinite(gb.float()).all()
        gexact = renyi_gradient(vb.double(), zb.detach().double(), a, 2.0)
        torch.testing.assert_close(gb.double(), gexact, rtol=2e-2, atol=2e-3)


def test_top_level_exports():
    for name in (
        "softmax_t",
        "kl_divergence",
        "renyi_divergence",
        "renyi_divergence_logits",
        "renyi_gradient",
        "DistillationLoss",
    ):
        assert name in kdlib.__all__ and callable(getattr(kdlib, name))


# ---------------------------------------------------------------------------
# bad input: ValueError naming the parameter and the allowed range
# ---------------------------------------------------------------------------

P3 = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
Q3 = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
Z3 = torch.tensor([1.0, 0.0, -1.0])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: renyi_divergence(P3, Q3, -0.5), r"alpha must be in \[0, inf\]"),
        (lambda: renyi_divergence(P3, Q3, math.nan), r"alpha must be in \[0, inf\]"),
        (lambda: renyi_divergence(P3, Q3, "2"), r"alpha must be a number in \[0, inf\]"),
        (lambda: renyi_divergence(P3, Q3, torch.tensor(2.0)), r"alpha must be a number"),
        (lambda: renyi_divergence(P3, Q3[:2] / Q3[:2].sum(), 2.0), r"same number of classes"),
        (lambda: renyi_divergence(P3.expand(2, 3), Q3.expand(3, 3), 2.0), r"broadcastable"),
        (
            lambda: kl_divergence(torch.tensor([1.2, -0.2]), torch.tensor([0.5, 0.5])),
            r"p must be non-negative.*\[0, 1\]",
        ),
        (
            lambda: kl_divergence(torch.tensor([0.5, 0.6]), torch.tensor([0.5, 0.5])),
            r"row of p must sum to 1 \(tolerance 0.0001",
        ),
        (lambda: kl_divergence(P3, Q3 * 1.00001), r"row of q must sum to 1 \(tolerance 1e-06"),
        (
            lambda: kl_divergence(torch.tensor([math.nan, 1.0]), torch.tensor([0.5, 0.5])),
            r"p must contain only finite",
        ),
        (lambda: kl_divergence(P3, torch.tensor([math.inf, 0.0, 0.0])), r"q must contain only finite"),
        (lambda: kl_divergence(torch.tensor(1.0), torch.tensor(1.0)), r"p must have at least one dimension"),
        (lambda: kl_divergence(torch.ones(2, 0), torch.ones(2, 0)), r"p must have at least one class"),
        (lambda: kl_divergence(torch.tensor([1, 0]), torch.tensor([1, 0])), r"p must have a floating dtype"),
        (lambda: kl_divergence([0.5, 0.5], [0.5, 0.5]), r"p must be a torch.Tensor"),
        (lambda: renyi_divergence_logits(Z3, Z3, -1.0), r"alpha must be in \[0, inf\]"),
        (lambda: renyi_divergence_logits(Z3, Z3, 2.0, T=0.0), r"T must be a finite number > 0"),
        (lambda: renyi_divergence_logits(Z3, Z3, 2.0, T=-1.0), r"T must be a finite number > 0"),
        (lambda: renyi_divergence_logits(Z3, Z3, 2.0, T=math.inf), r"T must be a finite number > 0"),
        (lambda: renyi_divergence_logits(Z3, Z3, 2.0, T=math.nan), r"T must be a finite number > 0"),
        (
            lambda: renyi_divergence_logits(torch.tensor([math.nan, 0.0, 0.0]), Z3, 2.0),
            r"teacher_logits must contain only finite",
        ),
        (
            lambda: renyi_divergence_logits(Z3, torch.tensor([-math.inf, 0.0, 0.0]), 2.0),
            r"student_logits must contain only finite",
        ),
        (lambda: renyi_divergence_logits(Z3, torch.zeros(4), 2.0), r"same number of classes"),
        (
            lambda: renyi_divergence_logits(Z3, torch.tensor([1, 2, 3]), 2.0),
            r"student_logits must have a floating dtype",
        ),
        (lambda: renyi_divergence_logits(Z3.expand(2, 3), Z3.expand(4, 3), 2.0), r"broadcastable"),
        (
            lambda: renyi_divergence_logits(Z3.expand(4, 3), Z3, torch.ones(3)),
            r"alpha must be a number or a tensor broadcastable to the row shape \(4,\)",
        ),
        (
            lambda: renyi_divergence_logits(Z3.expand(4, 3), Z3, torch.tensor([-1.0])),
            r"alpha must be in \[0, inf\]",
        ),
        (
            lambda: renyi_divergence_logits(Z3.expand(4, 3), Z3, torch.tensor([math.nan])),
            r"alpha must be in \[0, inf\]",
        ),
        (
            lambda: renyi_divergence_logits(Z3, Z3, torch.tensor(2.0, requires_grad=True)),
            r"alpha must not require grad",
        ),
        (
            lambda: renyi_divergence_logits(Z3, Z3, torch.tensor(2)),
            r"alpha as a tensor must have a floating dtype",
        ),
        (
            lambda: renyi_divergence_logits(Z3.expand(4, 3), Z3, 2.0, torch.ones(2)),
            r"T must be a number or a tensor broadcastable",
        ),
        (
            lambda: renyi_divergence_logits(Z3.expand(4, 3), Z3, 2.0, torch.tensor([1.0, 0.0, 1.0, 1.0])),
            r"T must be finite and > 0",
        ),
        (lambda: renyi_divergence_logits(Z3, Z3, 2.0, torch.tensor(math.inf)), r"T must be finite and > 0"),
        (lambda: renyi_gradient(Z3, Z3, 2.0, T=0.0), r"T must be a finite number > 0"),
        (
            lambda: renyi_gradient(Z3, torch.tensor([0.0, math.nan, 0.0]), 2.0),
            r"student_logits must contain only finite",
        ),
        (lambda: renyi_gradient(Z3, Z3, -2.0), r"alpha must be in \[0, inf\]"),
    ],
)
def test_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_validate_false_skips_the_value_checks_only():
    bad = torch.tensor([0.5, 0.6])
    out = kl_divergence(bad, torch.tensor([0.5, 0.5]), validate=False)  # renormalised, no error
    assert torch.isfinite(out)
    with pytest.raises(ValueError, match="same number of classes"):
        kl_divergence(bad, torch.ones(3) / 3, validate=False)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, inf\]"):
        renyi_divergence_logits(Z3, Z3, -1.0, validate=False)
