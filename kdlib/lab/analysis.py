"""The analyses of student frames (:func:`kdlib.lab.results.student_frame`): summaries over seeds,
paired comparisons with a reference cell, and the tuning of every arm on validation data.

* **summaries over seeds** (:func:`summarize_frame`, from :func:`kdlib.stats.interval`);
* **paired comparisons** with a reference cell on the same seeds (:func:`paired_differences`):
  :func:`kdlib.stats.paired_test`, Holm's correction for the verdicts and Benjamini–Hochberg beside it;
* **tuned comparisons** (:func:`tuned_comparison`, :func:`tuned_screen`): every arm at the setting
  that is best on *validation* data, the screen returned as a :class:`Screen`;
* the pooled reliability diagram and the share of the teacher-student gap closed.

Everything here returns frames or plain values; :mod:`kdlib.report.tables` formats them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kdlib.lab.config import Arm
from kdlib.stats import benjamini_hochberg, gap_share, holm, interval, paired_test, share_bootstrap

#: Significance level of the verdicts of :func:`paired_differences`.
LEVEL = 0.05


def verdict(mean_diff: float, p_adjusted: float, level: float = LEVEL) -> str:
    """The book's word for a two-sided comparison: ``"better"`` or ``"worse"`` (the sign of
    ``mean_diff``) when the corrected p-value ``p_adjusted`` is below ``level``, else
    ``"no difference shown"``. A test that does not reject has not shown the two equal (that takes an
    equivalence test, :func:`kdlib.stats.equivalence_test`), so the word never says "no difference"
    alone; a NaN p-value (fewer than two pairs) shows nothing either."""
    if p_adjusted < level:
        return "better" if mean_diff > 0 else "worse"
    return "no difference shown"


def runs_of(df: pd.DataFrame, arm: Arm, *, lr: float | None = None, T: float | None = None) -> pd.DataFrame:
    """The rows of ``df`` (:func:`~kdlib.lab.results.student_frame`) distilled with ``arm`` (its order,
    division and direction; students alone, ``beta = 0``, excluded), at ``lr`` and ``T`` where given
    (exact equality: a run's setting is the float its declaration or hypothesis file gave)."""
    keep = ((df["beta"] > 0) & (df["alpha"] == arm.alpha) & (df["reverse"] == arm.reverse)
            & (df["normalize_by_alpha"] == arm.normalize_by_alpha))
    if lr is not None:
        keep &= df["lr"] == lr
    if T is not None:
        keep &= df["T"] == T
    return df[keep]


def summarize_frame(df: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy") -> pd.DataFrame:
    """Per group of ``by``: ``n, mean, std, ci95, ci_low, ci_high`` of ``metric`` (:func:`interval`),
    and the ``seeds``.

    Rows with a NaN ``metric`` are dropped first. Groups are sorted by ``by``.
    """
    by = list(by)
    sub = df.dropna(subset=[metric])
    columns = [*by, "n", "mean", "std", "ci95", "ci_low", "ci_high", "seeds"]
    if sub.empty:
        return pd.DataFrame(columns=columns)
    rows = [{**dict(zip(by, key, strict=True)), **interval(g[metric]),
             "seeds": sorted(int(s) for s in g["seed"])}
            for key, g in sub.groupby(by, sort=True, dropna=False)]
    return pd.DataFrame(rows, columns=columns)


def paired_differences(df: pd.DataFrame, metric: str, cells: Sequence[str], reference: dict[str, Any],
                       match: Sequence[str]) -> pd.DataFrame:
    """Each cell minus the reference cell with the same ``match`` fields, paired by seed.

    For every group of ``cells`` that is not itself a reference, the reference rows are those
    whose fields equal ``reference`` and whose ``match`` fields equal the cell's; the two are
    joined on ``seed`` and the differences ``d = cell - reference`` tested with :func:`paired_test`:
    ``n, mean_diff, std_diff, ci_low, ci_high`` (95% t-interval), ``t``, the two-sided ``p``, then
    over all rows returned ``p_holm`` (:func:`holm`) and ``p_bh`` (:func:`benjamini_hochberg`).
    ``verdict``: :func:`verdict` of the difference and ``p_holm`` at ``LEVEL`` (0.05).

    Raises:
        ValueError: a name in ``reference`` or ``match`` is not in ``cells``.
    """
    for name in (*reference, *match):
        if name not in cells:
            raise ValueError(f"reference and match fields must be among cells {list(cells)}, got {name!r}")
    is_ref = pd.Series(True, index=df.index)
    for k, v in reference.items():
        is_ref &= df[k] == v
    refs, others = df[is_ref], df[~is_ref]
    rows = []
    for key, g in others.groupby(list(cells), sort=True, dropna=False):
        cell = dict(zip(cells, key, strict=True))
        r = refs
        for k in match:
            r = r[r[k] == cell[k]]
        joined = g[["seed", metric]].merge(r[["seed", metric]], on="seed", suffixes=("", "_ref")).dropna()
        rows.append({**cell, **paired_test(joined[metric].tolist(), joined[f"{metric}_ref"].tolist())})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].tolist())
    out["p_bh"] = benjamini_hochberg(out["p"].tolist())
    out["verdict"] = [verdict(md, ph) for md, ph in zip(out["mean_diff"], out["p_holm"], strict=True)]
    return out


def tuned_comparison(df: pd.DataFrame, groups: Sequence[str], over: str | Sequence[str] = "T",
                     select: str = "final_val_accuracy") -> pd.DataFrame:
    """For each group, the setting of ``over`` whose seed-mean ``select`` (validation) is highest.

    ``over`` is one column (e.g. ``"T"``) or several (e.g. ``["lr", "T"]``: every arm tuned over its
    learning rate and temperature together). Returns one row per (group, seed) of the chosen cell,
    with the columns of ``df``, so the result can be fed to :func:`summarize_frame` and
    :func:`paired_differences` (choosing on validation data keeps the test split out of the choice;
    ties go to the setting that sorts first, e.g. the smaller T).
    """
    over = [over] if isinstance(over, str) else list(over)
    chosen = []
    for _, g in df.groupby(list(groups), sort=True, dropna=False):
        means = g.groupby(over, sort=True)[select].mean()
        best = means.index[int(means.to_numpy().argmax())]
        best = best if isinstance(best, tuple) else (best,)
        keep = pd.Series(True, index=g.index)
        for name, value in zip(over, best, strict=True):
            keep &= g[name] == value
        chosen.append(g[keep])
    return pd.concat(chosen).sort_values([*groups, "seed"], kind="mergesort").reset_index(drop=True)


@dataclass(frozen=True)
class Screen:
    """The screen of a tuned comparison (:func:`tuned_screen`).

    Attributes:
        arms: one row per arm other than the reference, best first: ``arm``, the chosen ``over``
            values, ``mean`` (the arm's mean ``select`` at them), ``n``, ``mean_diff`` (against the
            reference, paired by seed), ``ci_low``, ``ci_high``, ``p``, ``p_bh``.
        reference: the reference arm's name (``"KL"``).
        reference_setting: the reference's chosen ``over`` values, e.g. ``{"lr": 0.05, "T": 2.0}``.
        reference_mean: the reference's mean ``select`` at its setting.
        select: the validation metric the arms were tuned and compared on.
    """

    arms: pd.DataFrame
    reference: str
    reference_setting: dict[str, Any]
    reference_mean: float
    select: str = "final_val_accuracy"

    def setting(self, arm: str) -> dict[str, Any]:
        """The chosen setting of ``arm`` (the reference included), by the ``over`` names.

        Raises:
            KeyError: ``arm`` is not screened.
        """
        if arm == self.reference:
            return dict(self.reference_setting)
        row = self.arms.set_index("arm").loc[arm]
        return {k: row[k] for k in self.reference_setting}


def tuned_screen(df: pd.DataFrame, reference: str = "KL", select: str = "final_val_accuracy",
                 over: Sequence[str] = ("lr", "T")) -> Screen:
    """The screen of a tuned comparison: every arm at its tuned setting against the reference arm at its own.

    Each ``arm`` of ``df`` (the students alone excluded) is tuned over ``over`` on ``select``
    (:func:`tuned_comparison`: the setting with the highest mean over seeds); each tuned arm is then
    compared with the tuned ``reference``, paired by seed (:func:`paired_differences`, two-sided
    paired t-tests on ``select``, Benjamini-Hochberg's ``p_bh`` over the arms). Nothing here looks
    at a test metric.

    Returns:
        a :class:`Screen`: the arms' rows, best first, and the reference's setting and mean.

    Raises:
        ValueError: ``reference`` is not an arm of ``df``.
    """
    dist = df[df["arm"] != "alone"]
    if reference not in set(dist["arm"]):
        raise ValueError(f"reference must be one of the arms {sorted(set(dist['arm']))}, got {reference!r}")
    tuned = tuned_comparison(dist, ["arm"], over=list(over), select=select)
    settings = tuned.groupby("arm", sort=False).agg(**{k: (k, "first") for k in over}, mean=(select, "mean"))
    paired = paired_differences(tuned, select, ["arm"], {"arm": reference}, [])
    out = paired.merge(settings, left_on="arm", right_index=True)
    cols = ["arm", *over, "mean", "n", "mean_diff", "ci_low", "ci_high", "p", "p_bh"]
    out = out[cols].sort_values("mean_diff", ascending=False, kind="mergesort").reset_index(drop=True)
    return Screen(out, reference, {k: settings.loc[reference, k] for k in over},
                  float(settings.loc[reference, "mean"]), select)


def pooled_reliability(diagrams: Iterable[dict[str, list[Any]] | None]) -> pd.DataFrame:
    """The reliability diagrams of several runs pooled bin by bin (the runs' test images together).

    Each diagram is a record's ``test_reliability`` (:func:`kdlib.lab.metrics.reliability`); ``None``
    (older records) and diverged runs (entries ``None``) are skipped. Returns one row per bin:
    ``low``, ``high`` (its confidence range), ``count`` (images over the runs), ``confidence`` and
    ``accuracy`` (count-weighted means; NaN in an empty bin), and ``attrs["runs"]`` the runs pooled.
    ``sum(count * |accuracy - confidence|) / sum(count)`` is the ECE of the pooled predictions.

    Raises:
        ValueError: the diagrams have different numbers of bins, or none is usable.
    """
    usable = [d for d in diagrams if d is not None and d["count"] and d["count"][0] is not None]
    if not usable:
        raise ValueError("diagrams must hold at least one reliability diagram of a run that did not diverge")
    bins = {len(d["count"]) for d in usable}
    if len(bins) != 1:
        raise ValueError(f"diagrams must all have the same number of bins, got {sorted(bins)}")
    (k,) = bins
    count = np.zeros(k)
    conf = np.zeros(k)
    acc = np.zeros(k)
    for d in usable:
        c = np.asarray(d["count"], dtype=float)
        count += c
        conf += c * np.array([x if x is not None else 0.0 for x in d["confidence"]])
        acc += c * np.array([x if x is not None else 0.0 for x in d["accuracy"]])
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame({"low": np.arange(k) / k, "high": np.arange(1, k + 1) / k,
                            "count": count.astype(int),
                            "confidence": np.where(count > 0, conf / count, np.nan),
                            "accuracy": np.where(count > 0, acc / count, np.nan)})
    out.attrs["runs"] = len(usable)
    return out


def gap_closed(distilled: pd.DataFrame, alone: pd.DataFrame, teachers: pd.DataFrame,
               metric: str = "test_accuracy", resamples: int = 10_000, confidence: float = 0.95,
               seed: int = 0) -> dict[str, Any]:
    """The share of the teacher-student gap that distillation closes, with a two-level bootstrap interval.

    ``share = (mean distilled - mean alone) / (mean teacher - mean alone)``, where the means run over
    the distilled runs, the students alone *of the same seeds* and the teachers of those runs
    (a distilled run names its teacher by ``teacher_key``; a student alone is paired with the
    distilled run of its seed). 1 means the distilled students match their teachers, 0 the
    students alone.

    The interval resamples what varies between replications of the whole experiment: teachers
    with replacement, then, within each drawn teacher, its seeds with replacement (a paired
    draw of the distilled run, its student alone and the teacher); percentile interval of
    ``resamples`` draws from a ``numpy`` generator seeded with ``seed``. With three teachers the
    outer level has few distinct draws, so the interval is coarse; it ignores the choice of T.

    Returns:
        ``share``, ``ci_low``, ``ci_high``, ``gap`` (mean teacher - mean alone, same units as
        ``metric``), ``gain`` (mean distilled - mean alone), ``n`` (pairs), ``teachers`` and
        ``per_teacher`` (teacher_key -> share computed on that teacher's runs alone).

    Raises:
        ValueError: a distilled run's seed has no student alone, or its teacher is not in ``teachers``.
    """
    alone_by_seed = alone.set_index("seed")[metric]
    teacher_acc = teachers.set_index("teacher_key")[metric]
    missing = set(distilled["seed"]) - set(alone_by_seed.index)
    unknown = set(distilled["teacher_key"]) - set(teacher_acc.index)
    if missing or unknown:
        raise ValueError(f"every distilled run needs its student alone and its teacher; seeds without a "
                         f"student alone: {sorted(missing)}, unknown teachers: {sorted(unknown)}")
    groups = {}  # per teacher: arrays (distilled, alone, teacher) of its pairs
    for key, g in distilled.groupby("teacher_key", sort=True):
        d = g[metric].to_numpy(float)
        a = alone_by_seed.loc[g["seed"]].to_numpy(float)
        groups[key] = (d, a, np.full(len(d), teacher_acc[key]))
    out = share_bootstrap(list(groups.values()), resamples, confidence, seed)
    return {**out, "teachers": len(groups),
            "per_teacher": {key: gap_share([g]) for key, g in groups.items()}}
