"""Tests of kdlib.symbolic: each symbolic formula is evaluated at numbers and compared with
an independent float computation (math / numpy), and each sympy helper is compared with a
second route to the same result (explicit n instead of a general Sum)."""

from __future__ import annotations

import math

import numpy as np
import pytest

sp = pytest.importorskip("sympy")

from kdlib import symbolic as ks  # noqa: E402

P = [0.5, 0.3, 0.2]
Q = [0.2, 0.5, 0.3]


def _f(expr) -> float:
    return float(sp.N(expr, 30))


def test_softmax_matches_float_formula():
    z, T = [1.5, -0.25, 0.75], 2.5
    expected = np.exp(np.array(z) / T) / np.exp(np.array(z) / T).sum()
    zs = [sp.Rational(3, 2), sp.Rational(-1, 4), sp.Rational(3, 4)]
    got = [_f(e) for e in ks.softmax(zs, sp.Rational(5, 2))]
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_entropy_cross_entropy_kl_match_float_formulas():
    p, q = np.array(P), np.array(Q)
    ps = [sp.Float(x, 30) for x in P]
    qs = [sp.Float(x, 30) for x in Q]
    assert math.isclose(_f(ks.entropy(ps)), float(-(p * np.log(p)).sum()), rel_tol=1e-13)
    assert math.isclose(_f(ks.cross_entropy(ps, qs)), float(-(p * np.log(q)).sum()), rel_tol=1e-13)
    assert math.isclose(_f(ks.kl(ps, qs)), float((p * np.log(p / q)).sum()), rel_tol=1e-13)


@pytest.mark.parametrize("alpha", [0.25, 0.5, 2.0, 7.0])
def test_renyi_matches_float_formula(alpha):
    p, q = np.array(P), np.array(Q)
    expected = math.log(float((p**alpha * q ** (1 - alpha)).sum())) / (alpha - 1)
    ps = [sp.Float(x, 30) for x in P]
    qs = [sp.Float(x, 30) for x in Q]
    assert math.isclose(_f(ks.renyi(ps, qs, sp.Float(alpha, 30))), expected, rel_tol=1e-12)


def test_tilted_is_a_distribution_between_q_and_p():
    p = [sp.Rational(1, 2), sp.Rational(3, 10), sp.Rational(1, 5)]
    q = [sp.Rational(1, 5), sp.Rational(1, 2), sp.Rational(3, 10)]
    a = sp.Symbol("alpha", positive=True)
    w = ks.tilted(p, q, a)
    assert sp.simplify(sp.Add(*w) - 1) == 0
    assert [sp.simplify(wi.subs(a, 0)) for wi in w] == q
    assert [sp.simplify(wi.subs(a, 1)) for wi in w] == p
    # alpha = 1/2: proportional to sqrt(p q), computed by hand in floats
    half = np.sqrt(np.array(P) * np.array(Q))
    np.testing.assert_allclose([_f(wi.subs(a, sp.Rational(1, 2))) for wi in w], half / half.sum(), rtol=1e-13)


def test_bad_input_raises_value_error_naming_the_parameter():
    with pytest.raises(ValueError, match="p and q must have the same length"):
        ks.kl([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="z must have at least one entry"):
        ks.softmax([])
    with pytest.raises(ValueError, match="alpha must differ from 1"):
        ks.renyi([sp.Rational(1, 2)] * 2, [sp.Rational(1, 2)] * 2, 1)


def test_expand_sums_agrees_with_explicit_sum():
    n = sp.Symbol("n", integer=True, positive=True)
    k = sp.Symbol("k", integer=True, positive=True)
    x, y = sp.IndexedBase("x"), sp.IndexedBase("y")
    a = sp.Symbol("a")
    s = sp.Sum((a * x[k] + y[k]) ** 2 + 3, (k, 1, n))
    expanded = ks.expand_sums(s)
    # the summands left are monomials in x[k], y[k] only: a and the constant are outside
    for inner in expanded.atoms(sp.Sum):
        assert not inner.function.has(a)
        assert inner.function != 1
    explicit = sum(((a * x[i] + y[i]) ** 2 + 3 for i in range(1, 5)), sp.Integer(0))
    assert sp.expand(expanded.subs(n, 4).doit() - explicit) == 0
    # sums that differ only in the dummy index cancel once both use the same one
    j = sp.Symbol("j", integer=True, positive=True)
    difference = sp.Sum(x[j] + 1, (j, 1, n)) - sp.Sum(x[k], (k, 1, n))
    assert ks.expand_sums(difference) != n
    assert ks.expand_sums(difference, index=k) == n


def test_substitute_taylor_coefficients_matches_series_for_explicit_n():
    eps = sp.Symbol("epsilon", positive=True)
    n = sp.Symbol("n", integer=True, positive=True)
    k = sp.Symbol("k", integer=True, positive=True)
    z = sp.IndexedBase("z", real=True)
    S = sp.Function("S")
    general = sp.series(sp.exp(eps * z[1]) / S(eps), eps, 0, 4).removeO()
    general = ks.substitute_taylor_coefficients(general, eps, {S: sp.Sum(sp.exp(eps * z[k]), (k, 1, n))})
    assert not general.has(S) and not general.has(sp.Subs)
    # independent route: sympy.series of the explicit three-class softmax
    explicit = sp.series(sp.exp(eps * z[1]) / sum(sp.exp(eps * z[i]) for i in (1, 2, 3)), eps, 0, 4).removeO()
    assert sp.simplify(sp.expand(general.subs(n, 3).doit() - explicit)) == 0


def test_sum_series_matches_series_for_explicit_n():
    eps = sp.Symbol("epsilon", positive=True)
    n = sp.Symbol("n", integer=True, positive=True)
    k = sp.Symbol("k", integer=True, positive=True)
    z, v = sp.IndexedBase("z", real=True), sp.IndexedBase("v", real=True)
    # KL divergence of softmax(eps v) from softmax(eps z), written with sums of symbolic length
    Sv = sp.Sum(sp.exp(eps * v[k]), (k, 1, n))
    Sz = sp.Sum(sp.exp(eps * z[k]), (k, 1, n))
    kl_n = eps * sp.Sum(sp.exp(eps * v[k]) * (v[k] - z[k]), (k, 1, n)) / Sv - sp.log(Sv) + sp.log(Sz)
    general = ks.sum_series(kl_n, eps, 3)
    assert not general.has(sp.Function("S_0"))
    # independent route: Taylor coefficients of the explicit three-class KL, by differentiation at 0
    sv3 = sum(sp.exp(eps * v[i]) for i in (1, 2, 3))
    sz3 = sum(sp.exp(eps * z[i]) for i in (1, 2, 3))
    kl3 = sum(sp.exp(eps * v[i]) / sv3 * (eps * (v[i] - z[i]) - sp.log(sv3) + sp.log(sz3)) for i in (1, 2, 3))
    explicit = sum(sp.diff(kl3, eps, m).subs(eps, 0) / sp.factorial(m) * eps**m for m in range(3))
    assert sp.expand(general.subs(n, 3).doit() - explicit) == 0
    assert sp.expand(general.coeff(eps, 2).subs(n, 3).doit()) != 0
    with pytest.raises(ValueError, match="order must be an integer >= 1"):
        ks.sum_series(kl_n, eps, 0)


def test_substitute_taylor_coefficients_rejects_other_points():
    x = sp.Symbol("x")
    F = sp.Function("F")
    expr = sp.Subs(sp.Derivative(F(x), x), x, 1)
    with pytest.raises(ValueError, match="derivatives at 0 only"):
        ks.substitute_taylor_coefficients(expr, x, {F: sp.exp(x)})


def test_assume_in_range_keeps_the_in_range_branch():
    n = sp.Symbol("n", integer=True, positive=True)
    i, j = sp.symbols("i j", integer=True, positive=True)
    z = sp.IndexedBase("z", real=True)
    d = sp.diff(sp.Sum(z[i] ** 2, (i, 1, n)), z[j]).doit()
    assert d.has(sp.Piecewise)
    assert ks.assume_in_range(d, j, n) == 2 * z[j]
    with pytest.raises(ValueError, match="index <= upper"):
        ks.assume_in_range(sp.Piecewise((1, j > 5), (0, True)), j, n)
