"""Statistics of the experiments: pure functions of numbers, numpy and scipy only.

Everything the book and the confirmatory analyses compute from accuracies lives here, so that it can
be read and tested apart from the records it is applied to:

* summaries over seeds (:func:`interval`: mean, sample standard deviation, Student-t interval);
* paired comparisons (:func:`paired_test`, from :func:`scipy.stats.ttest_rel`), equivalence
  (:func:`equivalence_test`, TOST), multiplicity corrections (:func:`holm`, family-wise error;
  :func:`benjamini_hochberg`, false discovery rate);
* power (:func:`paired_power`, :func:`runs_for_power`, :func:`detectable_effect`, from the
  noncentral t distribution :data:`scipy.stats.nct`);
* resampling: :func:`paired_bootstrap`, the hierarchical bootstrap of a paired difference over
  groups (teachers), runs (seeds) and the test images themselves, and :func:`share_bootstrap`, the
  share of a teacher-student gap that distillation closes.

Each is checked against scipy or statsmodels, or by simulation, in ``tests/test_stats.py`` and
``tests/test_report.py``. Accuracies are fractions in [0, 1]; nothing here knows about records.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize, stats


def interval(values: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (ddof 1), ``ci95`` (half-width), ``ci_low``, ``ci_high`` of ``values``.

    The interval is Student's: ``mean ± t_{n-1}((1 + confidence) / 2) · std / sqrt(n)``, the quantile
    from :data:`scipy.stats.t`. Sums are exactly rounded (:func:`math.fsum`), so the result does not
    depend on the order of ``values``. ``std`` and the interval are NaN for ``n < 2``; everything is
    NaN for ``n = 0``.
    """
    x = [float(v) for v in values]
    n = len(x)
    mean = math.fsum(x) / n if n else math.nan
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1)) if n >= 2 else math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n) if n >= 2 else math.nan
    return {"n": n, "mean": mean, "std": std, "ci95": half, "ci_low": mean - half, "ci_high": mean + half}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    scipy has no function for it (:func:`scipy.stats.false_discovery_control` adjusts for the false
    discovery rate, a weaker guarantee). With the ``m`` p-values sorted ascending,
    ``p_(i)`` becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (Holm 1979): reject ``H_(i)`` at level
    ``a`` when its adjusted p is below ``a``. NaN p-values stay NaN and do not count towards ``m``.

    Example: ``holm([0.01, 0.04, 0.03, 0.005]) == [0.03, 0.06, 0.06, 0.02]`` (sorted: 4·0.005, 3·0.01,
    2·0.03 = 0.06, then 1·0.04 raised to the running maximum 0.06).
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    factors = len(order) - np.arange(len(order))
    out[order] = np.maximum.accumulate(np.minimum(1.0, factors * p[order]))
    return out.tolist()


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (false discovery rate control).

    From :func:`scipy.stats.false_discovery_control`; NaN p-values stay NaN and do not count towards
    the number of tests.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out.tolist()


def paired_test(values: Sequence[float], reference: Sequence[float],
                confidence: float = 0.95) -> dict[str, float]:
    """The paired t-test of ``values`` against ``reference`` (same seeds, same order): ``n, mean_diff,
    std_diff, ci_low, ci_high, t, p`` of the differences ``d = values - reference``.

    From :func:`scipy.stats.ttest_rel` (two-sided, df = n - 1) and its ``confidence_interval``; the mean
    and standard deviation from :func:`interval`. Edge cases, where scipy would warn: ``n < 2`` gives
    NaN; differences that are all equal give ``t = 0, p = 1`` when they are 0 and ``t = ±inf, p = 0``
    otherwise (the interval is then the point).

    Raises:
        ValueError: ``values`` and ``reference`` differ in length.
    """
    a, b = [float(v) for v in values], [float(v) for v in reference]
    if len(a) != len(b):
        raise ValueError(f"values and reference must have the same length, got {len(a)} and {len(b)}")
    d = [x - y for x, y in zip(a, b, strict=True)]
    s = interval(d, confidence)
    out = {"n": s["n"], "mean_diff": s["mean"], "std_diff": s["std"], "ci_low": s["ci_low"],
           "ci_high": s["ci_high"], "t": math.nan, "p": math.nan}
    if s["n"] < 2:
        return out
    if max(d) == min(d):
        out.update(ci_low=d[0], ci_high=d[0], t=0.0 if d[0] == 0 else math.copysign(math.inf, d[0]),
                   p=1.0 if d[0] == 0 else 0.0)
        return out
    with warnings.catch_warnings():  # near-constant differences: scipy warns about precision; values stand
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_rel(a, b)
        ci = res.confidence_interval(confidence)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high), t=float(res.statistic), p=float(res.pvalue))
    return out


def paired_power(effect: float, sd: float, n: int, level: float = 0.05,
                 alternative: str = "greater") -> float:
    r"""Power of the paired t-test (:func:`scipy.stats.ttest_rel`) with ``n`` pairs.

    The differences are assumed normal with mean ``effect`` and standard deviation ``sd``; the test
    statistic then follows a noncentral t distribution with ``n - 1`` degrees of freedom and
    noncentrality :math:`\delta = \text{effect} \sqrt{n} / \text{sd}` (:data:`scipy.stats.nct`).

    Args:
        effect: the true mean difference (e.g. 0.003 for 0.3 points of accuracy).
        sd: the standard deviation of one pair's difference, ``> 0``.
        n: pairs, ``>= 2``.
        level: the test's significance level in ``(0, 1)``.
        alternative: ``"greater"`` (one-sided, H1: mean > 0) or ``"two-sided"``.

    Returns:
        the probability that the test rejects.

    Raises:
        ValueError: ``sd <= 0``, ``n < 2``, ``level`` outside ``(0, 1)`` or an unknown ``alternative``.
    """
    if not sd > 0 or n < 2 or not 0 < level < 1:
        raise ValueError(f"need sd > 0, n >= 2 and level in (0, 1); got sd={sd}, n={n}, level={level}")
    df, nc = n - 1, effect * math.sqrt(n) / sd
    if alternative == "greater":
        return float(stats.nct.sf(stats.t.ppf(1 - level, df), df, nc))
    if alternative == "two-sided":
        crit = stats.t.ppf(1 - level / 2, df)
        # P(t < -crit | nc) written as P(t > crit | -nc): scipy's nct.cdf returns NaN deep in its left
        # tail at some noncentralities (e.g. df 11, nc 6.9), nct.sf does not
        return float(stats.nct.sf(crit, df, nc) + stats.nct.sf(crit, df, -nc))
    raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")


def runs_for_power(effect: float, sd: float, power: float = 0.8, level: float = 0.05,
                   alternative: str = "greater", max_n: int = 10_000) -> int:
    """The smallest number of pairs ``n >= 2`` whose :func:`paired_power` reaches ``power``.

    Raises:
        ValueError: ``power`` outside ``(0, 1)``, ``effect <= 0``, or no ``n <= max_n`` reaches it.
    """
    if not 0 < power < 1 or not effect > 0:
        raise ValueError(f"need power in (0, 1) and effect > 0; got power={power}, effect={effect}")
    for n in range(2, max_n + 1):
        if paired_power(effect, sd, n, level, alternative) >= power:
            return n
    raise ValueError(f"no n <= max_n={max_n} reaches power {power} for effect {effect} and sd {sd}")


def equivalence_test(values: Sequence[float], reference: Sequence[float], margin: float) -> dict[str, float]:
    """Two one-sided paired t-tests (TOST): is the mean difference inside ``(-margin, margin)``?

    H0: the mean of ``d = values - reference`` is at most ``-margin`` or at least ``margin``. Each
    side is a one-sided :func:`scipy.stats.ttest_1samp` of ``d``; the TOST p-value is the larger
    of the two. Equivalence at level 0.05 is the same as the 90% t-interval of the mean difference
    lying inside the margins.

    Returns:
        ``n``, ``mean_diff``, ``p_lower`` (H1: mean > -margin), ``p_upper`` (H1: mean < margin),
        ``p`` (their maximum) and the 90% interval ``ci90_low``, ``ci90_high``.

    Raises:
        ValueError: different lengths, fewer than 2 pairs, or ``margin <= 0``.
    """
    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.size < 2 or not margin > 0:
        raise ValueError(f"need two sequences of one length >= 2 and margin > 0; got lengths {a.size}, "
                         f"{b.size} and margin {margin}")
    d = a - b
    low = stats.ttest_1samp(d, -margin, alternative="greater")
    high = stats.ttest_1samp(d, margin, alternative="less")
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.90)
    return {"n": int(d.size), "mean_diff": float(d.mean()), "p_lower": float(low.pvalue),
            "p_upper": float(high.pvalue), "p": float(max(low.pvalue, high.pvalue)),
            "ci90_low": float(ci.low), "ci90_high": float(ci.high)}


def detectable_effect(sd: float, n: int, level: float = 0.05, power: float = 0.8,
                      alternative: str = "greater") -> float:
    """The true mean difference that a paired t-test with ``n`` pairs detects with probability
    ``power`` at ``level``, given the standard deviation ``sd`` of one difference: the root in the
    effect of :func:`paired_power` ``= power`` (:func:`scipy.optimize.brentq`). NaN when ``sd`` is not
    positive or ``n < 2``. Beside a negative result it says what the runs could have found."""
    if not sd > 0 or n < 2:
        return math.nan
    hi = sd
    while paired_power(hi, sd, n, level, alternative) < power:  # nct is NaN only far beyond the root
        hi *= 2
    return float(optimize.brentq(lambda e: paired_power(e, sd, n, level, alternative) - power, 0.0, hi))


def gap_share(groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """``(mean d - mean a) / (mean t - mean a)`` over the pairs of all ``groups`` (each ``(d, a, t)``:
    distilled runs, the students alone of the same seeds, their teacher's accuracy repeated): the share
    of the teacher-student gap that distillation closes (:func:`share_bootstrap` gives its interval)."""
    d, a, t = (np.concatenate(x) for x in zip(*groups, strict=True))
    return float((d.mean() - a.mean()) / (t.mean() - a.mean()))


def share_bootstrap(groups: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], resamples: int = 10_000,
                    confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """The share of a teacher-student gap that distillation closes, with a two-level bootstrap interval.

    ``share = (mean d - mean a) / (mean t - mean a)`` over all pairs, where each group (one teacher)
    holds three arrays of one length: ``d`` the distilled runs, ``a`` the students alone of the same
    seeds and ``t`` the teacher's accuracy repeated. The interval resamples what varies between
    replications of the experiment: groups with replacement, then, within each drawn group, its pairs
    with replacement (a paired draw of ``d``, ``a`` and ``t``); the percentile interval of ``resamples``
    draws from ``numpy.random.default_rng(seed)``. With three groups the outer level has few distinct
    draws, so the interval is coarse.

    Returns:
        ``share``, ``ci_low``, ``ci_high``, ``gap`` (mean t - mean a), ``gain`` (mean d - mean a), ``n``
        (pairs).

    Raises:
        ValueError: no groups, a group whose arrays differ in length or are empty, ``resamples < 1``
            or ``confidence`` outside ``(0, 1)``.
    """
    groups = [tuple(np.asarray(x, dtype=float) for x in g) for g in groups]
    if not groups or any(len(d) == 0 or not len(d) == len(a) == len(t) for d, a, t in groups):
        raise ValueError("groups must be a non-empty list of (d, a, t) arrays, each non-empty, of one length")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and confidence in (0, 1); got {resamples}, {confidence}")

    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(len(groups), size=len(groups))
        parts = []
        for j in picked:
            d, a, t = groups[j]
            k = rng.integers(len(d), size=len(d))
            parts.append((d[k], a[k], t[k]))
        draws[i] = gap_share(parts)
    tail = (1 - confidence) / 2
    d, a, t = (np.concatenate(x) for x in zip(*groups, strict=True))
    return {"share": gap_share(groups), "ci_low": float(np.quantile(draws, tail)),
            "ci_high": float(np.quantile(draws, 1 - tail)), "gap": float(t.mean() - a.mean()),
            "gain": float(d.mean() - a.mean()), "n": len(d)}


def paired_bootstrap(a: Any, b: Any, groups: Sequence[Any] | None = None, *, images: bool = True,
                     resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    r"""The mean paired difference of two arms over runs and test images, with a hierarchical bootstrap.

    ``a`` and ``b`` hold per-image scores (1/0 for a correct/wrong prediction, or any per-image
    metric) of ``R`` paired runs on the same ``I`` test images: row ``r`` of ``a`` and row ``r`` of
    ``b`` share everything but the arm (seed, teacher, transfer subset). The estimate is

    .. math:: \bar\Delta = \frac{1}{R I} \sum_{r, i} (a_{ri} - b_{ri}).

    Each bootstrap draw replicates how the experiment could have come out: the ``groups`` (e.g. the
    teachers, or teacher × transfer subset) are drawn with replacement; within each drawn group its
    runs are drawn with replacement; and, with ``images``, the test images are drawn with replacement,
    one draw shared by every run (the runs are evaluated on the same images, so images are crossed with
    runs, not nested in them). ``groups=None`` makes every run its own group (a one-level bootstrap
    over runs). With ``images=False`` only the runs vary: the seed-only interval, the one the t-test
    over runs gives. The interval is the percentile interval of ``resamples`` draws from
    ``numpy.random.default_rng(seed)``; ``se`` is their standard deviation.

    Args:
        a, b: arrays of shape ``(R, I)`` (a 1-D array is one run), finite.
        groups: ``R`` labels, runs with equal labels forming one group; ``None``: every run its own.
        images: resample the test images too.
        resamples: bootstrap draws, ``>= 1``.
        confidence: of the interval, in ``(0, 1)``.
        seed: of the generator.

    Returns:
        ``mean_diff``, ``ci_low``, ``ci_high``, ``se``, ``runs`` (R), ``images`` (I), ``groups``.

    Raises:
        ValueError: ``a`` and ``b`` differ in shape, are not 1- or 2-D, are empty or not finite;
            ``groups`` of the wrong length; ``resamples < 1``; ``confidence`` outside ``(0, 1)``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim == 1 and b.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"a and b must be arrays of one shape (runs, images), got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and confidence in (0, 1); got {resamples}, {confidence}")
    runs, n_images = a.shape
    labels = np.arange(runs) if groups is None else np.asarray(list(groups), dtype=object)
    if len(labels) != runs:
        raise ValueError(f"groups must have one label per run ({runs}), got {len(labels)}")
    members = [np.flatnonzero(labels == g) for g in dict.fromkeys(labels.tolist())]
    d = a - b
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    chunk = 256  # draws computed at once (memory: chunk x (R + I) floats)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        w = np.zeros((size, runs))  # how often draw b takes each run
        picked = rng.integers(len(members), size=(size, len(members)))  # the groups of each draw
        for k, m in enumerate(members):
            hits = np.nonzero(picked == k)[0]  # one entry per time a draw picked group k
            if hits.size:
                np.add.at(w, (hits[:, None], m[rng.integers(len(m), size=(hits.size, len(m)))]), 1.0)
        if images:
            v = np.stack([np.bincount(rng.integers(n_images, size=n_images), minlength=n_images)
                          for _ in range(size)]).astype(float)
            draws[start:start + size] = np.einsum("br,ri,bi->b", w, d, v) / (w.sum(1) * n_images)
        else:
            draws[start:start + size] = (w @ d.mean(1)) / w.sum(1)
    tail = (1 - confidence) / 2
    return {"mean_diff": float(d.mean()), "ci_low": float(np.quantile(draws, tail)),
            "ci_high": float(np.quantile(draws, 1 - tail)), "se": float(draws.std(ddof=1)) if resamples > 1
            else math.nan, "runs": runs, "images": n_images, "groups": len(members)}
