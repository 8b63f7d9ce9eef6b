"""Student's t distribution and Holm's correction, in plain Python (no scipy at run time).

scipy is only a test dependency, so the few distribution functions that the results store and the
book's analysis need are implemented here; the tests compare them with :mod:`scipy.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t distribution with integer ``df`` degrees of freedom at ``t``.

    Closed form (Abramowitz & Stegun 26.7.3 and 26.7.4): with ``theta = atan(|t| / sqrt(df))``
    the probability ``A = P(|X| < |t|)`` is a finite sum in ``cos(theta)``; ``cdf = (1 + A) / 2``
    for ``t >= 0``.

    Raises:
        ValueError: ``df`` is not an integer ``>= 1``.
    """
    if int(df) != df or df < 1:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    df = int(df)
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2 == 1:
        total, term = 0.0, c
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # coefficients 2/3, 2·4/(3·5), ...
                term *= c * c * (k - 1) / k
                total += term
        a = 2.0 / math.pi * (theta + s * total)
    else:
        total, term = 1.0, 1.0
        for k in range(2, df - 1, 2):  # coefficients 1/2, 1·3/(2·4), ...
            term *= c * c * (k - 1) / k
            total += term
        a = s * total
    a = min(max(a, 0.0), 1.0)
    return 0.5 * (1.0 + a) if t >= 0 else 0.5 * (1.0 - a)


def t_two_sided_p(t: float, df: int) -> float:
    """Two-sided p-value ``P(|X| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    return min(1.0, 2.0 * (1.0 - t_cdf(abs(t), df)))


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile of Student's t with integer ``df`` (bisection on :func:`t_cdf`, to 1e-12).

    Raises:
        ValueError: ``q`` not in (0, 1) or ``df`` not an integer >= 1.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q!r}")
    t_cdf(0.0, df)  # validates df
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    With the m p-values sorted ascending, ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``.
    NaN p-values are left NaN and do not count towards m.
    """
    idx = [i for i, p in enumerate(pvalues) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out
