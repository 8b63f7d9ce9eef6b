r"""Symbolic (sympy) counterparts of the divergences, for the chapter-1 derivations.

The notebooks of chapter 1 derive every result twice: once for an explicit number of
classes (a list of sympy expressions, one per class) and, where sympy can, for a
general number ``n`` (``IndexedBase`` symbols inside ``Sum``). This module holds the
pieces both need, so that each notebook states only the derivation itself:

- :func:`softmax`, :func:`entropy`, :func:`cross_entropy`, :func:`kl`,
  :func:`renyi_sum`, :func:`renyi`, :func:`tilted` -- explicit-``n`` formulas
  (thesis eq 1.3, 1.4, 1.5, 1.16; the tilted distribution of the Rényi gradient);
- :func:`expand_sums` -- linearity of a finite ``Sum`` (split a sum of terms, pull
  out factors that do not depend on the summation index), which ``sympy.simplify``
  does not always do by itself;
- :func:`sum_series` (built on :func:`substitute_taylor_coefficients`) -- the power
  series of an expression that contains ``Sum``\ s of symbolic length: the way a series
  in ``1/T`` is taken for a general number of classes (``sympy.series`` cannot expand
  a ``Sum`` directly);
- :func:`assume_in_range` -- pick the branch ``j <= n`` of the ``Piecewise`` that
  differentiating a ``Sum`` with respect to one of its entries produces.

All quantities are in nats (natural logarithms). The functions raise ``ValueError``
for vectors of mismatched or zero length, naming the parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sympy as sp

__all__ = [
    "assume_in_range",
    "cross_entropy",
    "entropy",
    "expand_sums",
    "kl",
    "renyi",
    "renyi_sum",
    "softmax",
    "substitute_taylor_coefficients",
    "sum_series",
    "tilted",
]


def _check_vector(x: Sequence[sp.Expr], name: str) -> list[sp.Expr]:
    values = [sp.sympify(e) for e in x]
    if len(values) == 0:
        raise ValueError(f"{name} must have at least one entry (one per class), got length 0")
    return values


def _check_pair(p: Sequence[sp.Expr], q: Sequence[sp.Expr]) -> tuple[list[sp.Expr], list[sp.Expr]]:
    pv, qv = _check_vector(p, "p"), _check_vector(q, "q")
    if len(pv) != len(qv):
        raise ValueError(
            f"p and q must have the same length (one entry per class), got {len(pv)} and {len(qv)}"
        )
    return pv, qv


def softmax(z: Sequence[sp.Expr], T: sp.Expr = 1) -> list[sp.Expr]:
    r"""Temperature softmax of ``n`` symbolic logits, thesis eq (1.3).

    .. math:: q_j = \frac{\exp(z_j/T)}{\sum_{k=1}^n \exp(z_k/T)}

    Args:
        z: the ``n`` logits, sympy expressions (or numbers).
        T: the temperature, a sympy expression (positive) or number.

    Returns:
        A list of ``n`` sympy expressions, the probabilities.

    Raises:
        ValueError: if ``z`` is empty.
    """
    zs = _check_vector(z, "z")
    e = [sp.exp(zk / T) for zk in zs]
    total = sp.Add(*e)
    return [ek / total for ek in e]


def entropy(p: Sequence[sp.Expr]) -> sp.Expr:
    r"""Shannon entropy :math:`H(P) = -\sum_i p_i \log p_i` in nats (thesis eq 1.5).

    Raises:
        ValueError: if ``p`` is empty.
    """
    ps = _check_vector(p, "p")
    return -sp.Add(*[pi * sp.log(pi) for pi in ps])


def cross_entropy(p: Sequence[sp.Expr], q: Sequence[sp.Expr]) -> sp.Expr:
    r"""Cross-entropy :math:`H(P\|Q) = -\sum_i p_i \log q_i` in nats (thesis eq 1.5).

    Raises:
        ValueError: if ``p`` or ``q`` is empty or their lengths differ.
    """
    ps, qs = _check_pair(p, q)
    return -sp.Add(*[pi * sp.log(qi) for pi, qi in zip(ps, qs, strict=True)])


def kl(p: Sequence[sp.Expr], q: Sequence[sp.Expr]) -> sp.Expr:
    r"""Kullback--Leibler divergence :math:`\sum_i p_i \log(p_i/q_i)` in nats, thesis eq (1.4).

    Raises:
        ValueError: if ``p`` or ``q`` is empty or their lengths differ.
    """
    ps, qs = _check_pair(p, q)
    return sp.Add(*[pi * sp.log(pi / qi) for pi, qi in zip(ps, qs, strict=True)])


def renyi_sum(p: Sequence[sp.Expr], q: Sequence[sp.Expr], alpha: sp.Expr) -> sp.Expr:
    r"""The sum inside the Rényi divergence, :math:`\sum_i p_i^\alpha q_i^{1-\alpha}` (thesis eq 1.16).

    Raises:
        ValueError: if ``p`` or ``q`` is empty or their lengths differ.
    """
    ps, qs = _check_pair(p, q)
    return sp.Add(*[pi**alpha * qi ** (1 - alpha) for pi, qi in zip(ps, qs, strict=True)])


def renyi(p: Sequence[sp.Expr], q: Sequence[sp.Expr], alpha: sp.Expr) -> sp.Expr:
    r"""Rényi divergence of order ``alpha`` in nats, thesis eq (1.16).

    .. math:: D_\alpha(P\|Q) = \frac{1}{\alpha-1}\log\sum_i p_i^\alpha q_i^{1-\alpha}

    The expression is the defining formula, valid for ``alpha`` positive and
    different from 1; the orders 0, 1 and infinity are limits of it (thesis eq
    1.21--1.23), which the notebooks take with ``sympy.limit``.

    Raises:
        ValueError: if ``p`` or ``q`` is empty or their lengths differ, or if ``alpha``
            is the number 1 (the formula divides by zero there; use :func:`kl`).
    """
    if sp.sympify(alpha) == 1:
        raise ValueError("alpha must differ from 1 in the defining formula (use kl for order 1), got 1")
    return sp.log(renyi_sum(p, q, alpha)) / (alpha - 1)


def tilted(p: Sequence[sp.Expr], q: Sequence[sp.Expr], alpha: sp.Expr) -> list[sp.Expr]:
    r"""The tilted (escort) distribution between ``q`` and ``p``.

    .. math:: w_i = \frac{p_i^\alpha q_i^{1-\alpha}}{\sum_k p_k^\alpha q_k^{1-\alpha}}

    It interpolates geometrically between ``q`` (``alpha = 0``) and ``p`` (``alpha = 1``);
    the gradient of the Rényi distillation term with respect to the student's logits
    is :math:`(q - w)/T`.

    Raises:
        ValueError: if ``p`` or ``q`` is empty or their lengths differ.
    """
    ps, qs = _check_pair(p, q)
    terms = [pi**alpha * qi ** (1 - alpha) for pi, qi in zip(ps, qs, strict=True)]
    total = sp.Add(*terms)
    return [t / total for t in terms]


def expand_sums(expr: sp.Expr, index: sp.Symbol | None = None) -> sp.Expr:
    r"""Apply the linearity of every finite ``Sum`` in ``expr``.

    Each ``Sum(f, (k, a, b))`` is replaced by :math:`\sum_t c_t \cdot` ``Sum(g_t, (k, a, b))``
    where ``f`` expands to :math:`\sum_t c_t g_t` and :math:`c_t` does not depend on
    ``k``; a term with nothing left to sum becomes :math:`c_t (b - a + 1)`. Nested
    sums are expanded from the inside out. Only single-index sums are split; others
    are left as they are.

    Args:
        expr: a sympy expression.
        index: if given, every split sum is written with this summation index, so that
            sums that differ only in the name of their dummy index become identical
            (and cancel). Not applied to a sum whose summand already holds ``index``.

    Returns:
        An expression equal to ``expr`` in which the sums are as small as possible, so
        that ``sympy.simplify`` can cancel them against each other.
    """

    def _split(s: sp.Sum) -> sp.Expr:
        if len(s.limits) != 1:
            return s
        (var, lo, hi) = s.limits[0]
        out = sp.Integer(0)
        for term in sp.Add.make_args(sp.expand(s.function)):
            coeff, rest = term.as_independent(var, as_Add=False)
            if rest == 1:
                out += coeff * (hi - lo + 1)
            elif index is not None and index != var and not rest.has(index):
                out += coeff * sp.Sum(rest.xreplace({var: index}), (index, lo, hi))
            else:
                out += coeff * sp.Sum(rest, (var, lo, hi))
        return out

    return sp.sympify(expr).replace(lambda e: isinstance(e, sp.Sum), _split)


def substitute_taylor_coefficients(
    expr: sp.Expr, x: sp.Symbol, table: Mapping[sp.FunctionClass, sp.Expr]
) -> sp.Expr:
    r"""Replace an undefined function's value and derivatives at ``x = 0`` by those of a given expression.

    ``sympy.series`` cannot expand a ``Sum`` with a symbolic number of terms, but it
    can expand an expression in an undefined function ``F(x)``: the result holds
    ``F(0)`` and ``Subs(Derivative(F(xi), (xi, m)), xi, 0)``. Differentiating a finite
    ``Sum`` term by term is exact, so replacing those by
    ``diff(S, x, m).subs(x, 0)`` gives the series of the expression with ``F = S``.

    Args:
        expr: typically the output of ``sympy.series(..., x, 0, N).removeO()``.
        x: the expansion variable.
        table: maps each undefined function class ``F`` to the expression ``S(x)`` it
            stands for (for example ``Sum(exp(x * z[k]), (k, 1, n))``).

    Returns:
        ``expr`` with every ``F(0)`` and every derivative of ``F`` at 0 replaced.

    Raises:
        ValueError: if a derivative of a function in ``table`` is taken at a point other than 0.
    """

    def _repl(e: sp.Subs) -> sp.Expr:
        der, _variables, points = e.args
        if not (isinstance(der, sp.Derivative) and der.expr.func in table):
            return e
        if tuple(points) != (0,):
            raise ValueError(f"expr must hold derivatives at 0 only (x = 0), got one at {tuple(points)}")
        order = sum(count for _var, count in der.variable_count)
        return sp.diff(table[der.expr.func], x, order).subs(x, 0).doit()

    out = sp.sympify(expr).replace(lambda e: isinstance(e, sp.Subs), _repl)
    for func, series_of in table.items():
        out = out.xreplace({func(0): series_of.subs(x, 0).doit()})
    return out


def sum_series(expr: sp.Expr, x: sp.Symbol, order: int) -> sp.Expr:
    r"""Power series of ``expr`` in ``x`` about 0 (up to, excluding, ``x**order``); ``expr`` may hold sums.

    Every outermost ``Sum`` in ``expr`` that depends on ``x`` is replaced by an undefined
    function of ``x``; ``sympy.series`` expands the result, and
    :func:`substitute_taylor_coefficients` puts the sums' own derivatives at 0 back
    (for example ``Sum(exp(x*z[k]), (k, 1, n))`` contributes ``n``, ``Sum(z[k], (k, 1, n))``,
    ``Sum(z[k]**2, (k, 1, n))``, ...). This is exact: a finite sum is differentiated term
    by term.

    Args:
        expr: a sympy expression, analytic in ``x`` at 0.
        x: the expansion variable.
        order: the first power of ``x`` left out (as ``n`` in ``sympy.series``), at least 1.

    Returns:
        The polynomial part of the series (no ``O`` term), with sums of symbolic length
        in its coefficients.

    Raises:
        ValueError: if ``order`` is not an integer >= 1.
    """
    if int(order) != order or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    expr = sp.sympify(expr)
    sums = [s for s in expr.atoms(sp.Sum) if s.has(x)]
    outermost = [s for s in sums if not any(s != t and t.has(s) for t in sums)]
    outermost.sort(key=sp.default_sort_key)
    table = {}
    replacements = {}
    for number, s in enumerate(outermost):
        func = sp.Function(f"S_{number}")
        table[func] = s
        replacements[s] = func(x)
    series = sp.series(expr.xreplace(replacements), x, 0, int(order)).removeO()
    return substitute_taylor_coefficients(series, x, table)


def assume_in_range(expr: sp.Expr, index: sp.Symbol, upper: sp.Expr) -> sp.Expr:
    r"""Keep the branch ``index <= upper`` of every ``Piecewise`` in ``expr``.

    Differentiating ``Sum(f(z[i]), (i, 1, n))`` with respect to ``z[j]`` and evaluating
    the Kronecker delta gives ``Piecewise((f'(z[j]), j <= n), (0, True))``. For a class
    index ``j`` in ``1..n`` the first branch is the one that applies.

    Raises:
        ValueError: if a ``Piecewise`` in ``expr`` has no branch with condition ``index <= upper``.
    """
    cond = sp.Le(index, upper)

    def _branch(pw: sp.Piecewise) -> sp.Expr:
        for branch_expr, branch_cond in pw.args:
            if branch_cond == cond:
                return branch_expr
        raise ValueError(f"expr has a Piecewise without the branch index <= upper ({cond}): {pw}")

    return sp.piecewise_fold(sp.sympify(expr)).replace(lambda e: isinstance(e, sp.Piecewise), _branch)
