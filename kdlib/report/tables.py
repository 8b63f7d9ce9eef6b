"""Experiment results as tables: the one reporting path of ``python -m kdlib report`` and the book.

The records come from :mod:`kdlib.lab.store` (one JSON line per finished run, with provenance);
this module turns them into what a reader sees, always through a :class:`pandas.DataFrame`:

* **which results** (:func:`load_results`): the best committed profile (``full`` if present, else
  ``cpu``), or the profile named by the rerun switch ``$KDLIB_PROFILE``
  (:func:`kdlib.lab.run.requested_profile`);
* **one row per student run** (:func:`student_frame`), its cell given by :data:`CELL_FIELDS`;
* **summaries over seeds** (:func:`summarize_frame`, :func:`interval`): n, mean, sample standard
  deviation and the 95% Student-t interval (quantile from :data:`scipy.stats.t`);
* **paired comparisons** with a reference cell on the same seeds (:func:`paired_differences`):
  :func:`scipy.stats.ttest_rel` and its confidence interval, Holm's step-down correction
  (:func:`holm`, family-wise error) for the verdicts and Benjamini–Hochberg
  (:func:`scipy.stats.false_discovery_control`, false discovery rate) alongside; and the
  comparison where every arm gets the temperature that is best on *validation* data
  (:func:`tuned_comparison`);
* **deterministic text** (fixed float formats): the book's tables (:func:`summary_table`,
  :func:`paired_table`, :func:`pivot_means`), shown on a page by :func:`book_table` (no index, constant
  columns stated once above the table, one output per table, HTML with a plain-text twin), and the
  command line's report (:func:`report_text`);
* **provenance** built from the records (:func:`provenance`, :func:`provenance_line`,
  :func:`provenance_fields`), never typed by hand.

Accuracies are fractions in [0, 1]; tables show them in percent (``scale=100``).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from kdlib.lab.experiments import ARMS, Arm, expected_keys, get_experiment
from kdlib.lab.run import requested_profile
from kdlib.lab.store import (
    decode_float,
    experiment_files,
    file_at_commit,
    load_experiment_records,
    results_path,
    results_root,
)

#: Profiles shown as results, best first (``smoke`` numbers are never findings).
PROFILE_PREFERENCE = ("full", "cpu")

#: The config fields that make a cell of an experiment: runs that agree on all of them are the same
#: treatment repeated over seeds. ``model`` is written as in :func:`model_name` (``"mlp800x800"``).
CELL_FIELDS = ("label", "model", "alpha", "T", "beta", "normalize_by_alpha", "reverse", "lr", "optimizer")

#: Metrics copied from each record into :func:`student_frame` (missing ones become NaN).
METRICS = ("test_accuracy", "test_errors", "final_val_accuracy", "teacher_agreement", "test_kl_from_teacher",
           "test_ce", "test_ece",
           "omitted_class_accuracy_before_shift", "omitted_class_accuracy_after_shift",
           "test_accuracy_before_shift", "test_accuracy_after_shift", "bias_shift", "omitted_class_auroc",
           "diverged")

#: Significance level of the verdicts of :func:`paired_differences`.
LEVEL = 0.05


# ----------------------------------------------------------------------------- which results

def committed_profile(experiment: str, root: str | os.PathLike | None = None) -> str | None:
    """The best profile with a non-empty results file for ``experiment`` (:data:`PROFILE_PREFERENCE`)."""
    root = Path(root) if root is not None else results_root()
    for profile in PROFILE_PREFERENCE:
        path = results_path(root, experiment, profile)
        if path.is_file() and path.stat().st_size > 0:
            return profile
    return None


@dataclass(frozen=True)
class ExperimentResults:
    """The records of one results file: ``experiment``, ``profile``, ``path``, ``records``."""

    experiment: str
    profile: str
    path: Path
    records: tuple[dict[str, Any], ...]

    @property
    def teachers(self) -> list[dict[str, Any]]:
        """Teacher records."""
        return [r for r in self.records if r.get("kind") == "teacher"]

    @property
    def students(self) -> list[dict[str, Any]]:
        """Student records."""
        return [r for r in self.records if r.get("kind") == "student"]

    def frame(self) -> pd.DataFrame:
        """:func:`student_frame` of the student records."""
        return student_frame(self.students)

    @property
    def transfer_size(self) -> int:
        """The transfer-set size (number of images) recorded in the students' configs.

        Raises:
            ValueError: the students disagree, or there are none (a results file mixing
                experiments of different sizes cannot be described by one number).
        """
        sizes = {r["config"]["data"]["transfer_size"] for r in self.students}
        if len(sizes) != 1:
            raise ValueError(f"students of {self.path} must share one transfer_size, got {sorted(sizes)}")
        return sizes.pop()


def load_results(experiment: str, profile: str | None = None,
                 root: str | os.PathLike | None = None) -> ExperimentResults:
    """Load ``root/<experiment>/<profile>.jsonl`` and its shard files (as one, deduplicated by run key).

    ``profile`` defaults to ``$KDLIB_PROFILE`` when set, else the best committed profile
    (:func:`committed_profile`); ``root`` to :func:`kdlib.lab.store.results_root`.

    Raises:
        FileNotFoundError: no results file; the message says how to produce one.
        kdlib.lab.store.ResultsFileError: the file is not a results file.
    """
    root = Path(root) if root is not None else results_root()
    profile = profile or requested_profile() or committed_profile(experiment, root)
    if profile is None or not experiment_files(results_path(root, experiment, profile)):
        raise FileNotFoundError(
            f"no results for experiment {experiment!r} (profile {profile or 'full/cpu'}) under {root}; "
            f"run `python -m kdlib run {experiment} --profile cpu` (or full on a GPU)")
    path = results_path(root, experiment, profile)
    return ExperimentResults(experiment, profile, path, tuple(load_experiment_records(path)))


# ----------------------------------------------------------------------------- provenance

def provenance(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What produced ``records``: profiles, devices, commits, date range, run counts, training time.

    Returns:
        dict with ``profiles``, ``devices``, ``torch``, ``commits`` (short hash, ``+dirty`` when the
        tree was dirty, ``?`` when unknown), ``started`` and ``finished`` (ISO UTC, earliest and
        latest), ``students``, ``teachers``, ``seeds`` and ``wall_seconds`` (sum over distinct
        training groups, teachers included).
    """
    records = list(records)
    provs = [r.get("provenance", {}) for r in records]
    commits = sorted({(p.get("git_commit") or "?")[:10] + ("+dirty" if p.get("git_dirty") else "")
                      for p in provs})
    groups = {(p.get("started"), p.get("finished"), p.get("wall_seconds")) for p in provs}
    students = [r for r in records if r.get("kind") == "student"]
    return {
        "profiles": sorted({str(r.get("config", {}).get("profile")) for r in records}),
        "devices": sorted({str(p.get("device_name")) for p in provs}),
        "torch": sorted({str(p.get("torch")) for p in provs}),
        "commits": commits,
        "started": min((p.get("started", "") for p in provs), default=""),
        "finished": max((p.get("finished", "") for p in provs), default=""),
        "students": len(students),
        "teachers": sum(r.get("kind") == "teacher" for r in records),
        "seeds": sorted({r["config"].get("seed") for r in students}),
        "wall_seconds": math.fsum(float(g[2] or 0.0) for g in groups),
    }


def provenance_line(results: ExperimentResults) -> str:
    """One line naming profile, device, dates, commit(s) and number of runs, from the records."""
    p = provenance(results.records)
    day = sorted({p["started"][:10], p["finished"][:10]})
    return (f"Results: experiment {results.experiment}, profile {results.profile}; "
            f"{p['students']} student runs and {p['teachers']} teacher; seeds {p['seeds']}; "
            f"device {'; '.join(p['devices'])}; torch {', '.join(p['torch'])}; "
            f"commit {', '.join(p['commits'])}; run {' to '.join(day)} "
            f"({p['started'][11:16]} to {p['finished'][11:16]} UTC, "
            f"{p['wall_seconds'] / 60:.0f} min of training)")


def _seed_list(seeds: Sequence[int]) -> str:
    """``0, 1, 2``; more than ten consecutive seeds as ``0-14``, so the line stays short."""
    seeds = sorted(seeds)
    if len(seeds) > 10 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def provenance_fields(results: ExperimentResults) -> list[tuple[str, str]]:
    """The provenance of :func:`provenance_line` as short ``(name, value)`` pairs, for a block that
    reads without scrolling: results, runs, device, torch, commit, date (each value well under 80 characters
    unless the records name several devices or commits)."""
    p = provenance(results.records)
    day = " to ".join(sorted({p["started"][:10], p["finished"][:10]}))
    teachers = f"{p['teachers']} teacher" + ("s" if p["teachers"] != 1 else "")
    return [
        ("results", f"experiment {results.experiment}, profile {results.profile}"),
        ("runs", f"{p['students']} students and {teachers}; seeds {_seed_list(p['seeds'])}"),
        ("device", "; ".join(p["devices"])),
        ("torch", ", ".join(p["torch"])),
        ("commit", ", ".join(p["commits"])),
        ("run", f"{day}, {p['started'][11:16]} to {p['finished'][11:16]} UTC, "
                f"{p['wall_seconds'] / 60:.0f} min of training"),
    ]


# ----------------------------------------------------------------------------- frames

def model_name(config: dict[str, Any]) -> str:
    """The ``model`` cell field of a run config: its kind and hidden widths, e.g. ``"mlp800x800"``."""
    model = config.get("model") or {}
    if not isinstance(model, dict):
        return str(model)
    hidden = model.get("hidden") or []
    if not isinstance(hidden, list):  # a CNN: width and hidden units
        return f"{model.get('kind', '')}{model.get('width', '')}-{hidden}"
    return f"{model.get('kind', '')}{'x'.join(str(h) for h in hidden)}"


def student_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per student record, sorted by the :data:`CELL_FIELDS`, then the seed.

    Columns: ``key``, the :data:`CELL_FIELDS` (``model`` from :func:`model_name`; ``alpha`` a float,
    ``inf`` allowed; ``reverse`` False unless the record sets it; ``lr`` the peak learning rate,
    ``optimizer`` its name), ``arm`` (:attr:`kdlib.lab.experiments.Arm.name`, e.g. ``"KL"``,
    ``"α=4 /α"``; ``"alone"`` for a student trained on the labels alone), ``seed, epochs,
    teacher_key``, the :data:`METRICS` (NaN where a record lacks one; ``diverged`` a bool), and
    ``curve_val_accuracy`` / ``curve_train_loss`` / ``curve_grad_ratio`` (lists, one value per epoch;
    the last empty unless the profile records it), ``reliability`` (the test reliability diagram,
    :func:`kdlib.lab.metrics.reliability`; ``None`` in records older than it). Teacher records are
    skipped.
    """
    rows = []
    for r in records:
        if r.get("kind") != "student":
            continue
        c, m = r["config"], r["metrics"]
        row = {"key": r["key"], "label": c.get("label"), "model": model_name(c),
               "alpha": float(c.get("alpha", 1.0)),  # "inf" strings are decoded by float() too
               "T": float(c.get("T")), "beta": float(c.get("beta")),
               "normalize_by_alpha": bool(c.get("normalize_by_alpha", False)),
               "reverse": bool(c.get("reverse", False)), "lr": float(c.get("lr", math.nan)),
               "optimizer": c.get("optimizer", "sgd"), "seed": int(c.get("seed")), "epochs": c.get("epochs"),
               "teacher_key": c.get("teacher_key")}
        arm = Arm(row["alpha"], row["normalize_by_alpha"], row["reverse"])
        row["arm"] = "alone" if row["beta"] == 0 else arm.name
        for name in METRICS:
            value = m.get(name)
            row[name] = math.nan if value is None else (bool(value) if name == "diverged" else float(value))
        curves = m.get("curves", {})
        row["curve_val_accuracy"] = list(curves.get("val_accuracy", []))
        row["curve_train_loss"] = list(curves.get("train_loss", []))
        row["curve_grad_ratio"] = [decode_float(x) for x in curves.get("grad_ratio", [])]
        row["reliability"] = m.get("test_reliability")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values([*CELL_FIELDS, "seed"], kind="mergesort").reset_index(drop=True)


def teacher_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per teacher record, sorted by seed: ``teacher_key``, ``teacher`` (its seed), ``model``
    (its spec), ``experiment`` and ``profile`` (of the run that trained it), ``epochs``, ``jitter``
    (pixels), ``test_accuracy``, ``test_errors``, ``final_val_accuracy``, ``wall_seconds`` and
    ``curve_val_accuracy`` / ``curve_train_loss`` (one value per epoch)."""
    rows = []
    for r in records:
        if r.get("kind") != "teacher":
            continue
        c, m = r["config"], r["metrics"]
        curves = m.get("curves", {})
        rows.append({"teacher_key": r["key"], "teacher": int(c.get("seed", 0)), "model": c.get("model", {}),
                     "experiment": c.get("experiment"), "profile": c.get("profile"),
                     "epochs": c.get("epochs"),
                     "jitter": int(c.get("jitter", 0)), "test_accuracy": float(m["test_accuracy"]),
                     "test_errors": int(m["test_errors"]),
                     "final_val_accuracy": float(m.get("final_val_accuracy", math.nan)),
                     "wall_seconds": float(r.get("provenance", {}).get("wall_seconds", math.nan)),
                     "curve_val_accuracy": list(curves.get("val_accuracy", [])),
                     "curve_train_loss": list(curves.get("train_loss", []))})
    df = pd.DataFrame(rows)
    return df if df.empty else df.sort_values("teacher", kind="mergesort").reset_index(drop=True)


def committed_teachers(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """:func:`teacher_frame` of every teacher whose logits are committed (``<root>/teachers/*.json``,
    :class:`kdlib.lab.store.CommittedTeachers`), including teachers of earlier definitions of a
    profile that no current experiment trains."""
    root = Path(root) if root is not None else results_root()
    return teacher_frame(json.loads(p.read_text()) for p in sorted((root / "teachers").glob("*.json")))


# ----------------------------------------------------------------------------- summaries

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


def paired_differences(df: pd.DataFrame, metric: str, cells: Sequence[str], reference: dict[str, Any],
                       match: Sequence[str]) -> pd.DataFrame:
    """Each cell minus the reference cell with the same ``match`` fields, paired by seed.

    For every group of ``cells`` that is not itself a reference, the reference rows are those
    whose fields equal ``reference`` and whose ``match`` fields equal the cell's; the two are
    joined on ``seed`` and the differences ``d = cell - reference`` tested with :func:`paired_test`:
    ``n, mean_diff, std_diff, ci_low, ci_high`` (95% t-interval), ``t``, the two-sided ``p``, then
    over all rows returned ``p_holm`` (:func:`holm`) and ``p_bh`` (:func:`benjamini_hochberg`).
    ``verdict``: ``"better"`` / ``"worse"`` when ``p_holm < LEVEL`` (0.05), else ``"no difference"``.

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
    out["verdict"] = [("better" if md > 0 else "worse") if ph < LEVEL else "no difference"
                      for md, ph in zip(out["mean_diff"], out["p_holm"], strict=True)]
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


def tuned_screen(df: pd.DataFrame, reference: str = "KL", select: str = "final_val_accuracy",
                 over: Sequence[str] = ("lr", "T")) -> pd.DataFrame:
    """The screen of a tuned comparison: every arm at its tuned setting against the reference arm at its own.

    Each ``arm`` of ``df`` (the students alone excluded) is tuned over ``over`` on ``select``
    (:func:`tuned_comparison`: the setting with the highest mean over seeds); each tuned arm is then
    compared with the tuned ``reference``, paired by seed (:func:`paired_differences`, two-sided
    paired t-tests on ``select``, Benjamini-Hochberg's ``p_bh`` over the arms). Nothing here looks
    at a test metric.

    Returns:
        one row per arm other than the reference, best first: ``arm``, the chosen ``over`` values,
        ``mean`` (the arm's mean ``select``), ``n``, ``mean_diff``, ``ci_low``, ``ci_high``, ``p``,
        ``p_bh``; the reference's own setting and mean are in ``df.attrs`` of the result
        (``reference_setting``, ``reference_mean``).

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
    out.attrs["reference_setting"] = {k: settings.loc[reference, k] for k in over}
    out.attrs["reference_mean"] = float(settings.loc[reference, "mean"])
    return out


def confirmation_hypothesis(screen: pd.DataFrame, sd: float, *, experiment: str = "renyi_confirm_tuned",
                            teachers: Sequence[int] = (3, 4, 5), first_seed: int = 100,
                            smallest_effect: float = 0.003, level: float = 0.05, power: float = 0.8,
                            max_arms: int = 3, min_runs: int = 12, metric: str = "test_accuracy"
                            ) -> dict[str, Any]:
    """The hypothesis file of the confirmation, derived from the exploration's screen by a rule fixed
    before the exploration finished (so that the screen's outcome cannot shape the rule).

    1. **Arms.** The arms whose tuned mean validation accuracy is above KL's (``mean_diff > 0`` in
       :func:`tuned_screen`), best first, at most ``max_arms``, each with the hypothesis
       ``"greater"`` (one-sided paired t-test on ``metric``). If no arm is above KL, the
       ``max_arms`` arms closest to it, each with the hypothesis ``"equivalent"`` (TOST with margin
       ``smallest_effect``). Every arm keeps the learning rate and T the exploration chose for it;
       the reference is KL at its own.
    2. **Runs.** The smallest ``n`` at which a one-sided paired t-test at Holm's first level
       ``level / arms`` detects a true difference of ``smallest_effect`` with probability ``power``
       (:func:`runs_for_power`; for equivalence, each of TOST's two tests needs ``1 - (1 - power) / 2``
       so that both pass together at least with ``power`` when there is no difference), given the
       standard deviation ``sd`` of one paired difference; at least ``min_runs``; rounded up to a
       multiple of the number of ``teachers`` so that every teacher teaches as many seeds.
    3. **Seeds and teachers.** Student seeds ``first_seed, first_seed + 1, ...``; seed ``s`` learns
       from ``teachers[s mod len(teachers)]``, teachers trained for the confirmation only.

    Returns:
        a dict that :func:`kdlib.lab.experiments.load_hypothesis` accepts (write it as
        ``hypotheses/<experiment>.json`` and commit it before the runs), with ``power``, ``sd``
        and ``runs_needed`` (before ``min_runs`` and the rounding) recorded as well.

    Raises:
        ValueError: ``sd <= 0``, ``max_arms < 1``, no teachers, or the screen has no arms.
    """
    if not sd > 0 or max_arms < 1 or not teachers or screen.empty:
        raise ValueError(f"need sd > 0, max_arms >= 1, teachers and a non-empty screen; got sd={sd}, "
                         f"max_arms={max_arms}, teachers={list(teachers)}, {len(screen)} screened arms")
    ranked = screen.sort_values("mean_diff", ascending=False, kind="mergesort")
    above = ranked[ranked["mean_diff"] > 0].head(max_arms)
    kind, chosen = ("greater", above) if len(above) else ("equivalent", ranked.head(max_arms))
    k = len(chosen)
    one_sided_power = power if kind == "greater" else 1 - (1 - power) / 2
    needed = runs_for_power(smallest_effect, sd, one_sided_power, level / k, "greater")
    n = max(needed, min_runs)
    n = -(-n // len(teachers)) * len(teachers)

    ref = screen.attrs["reference_setting"]
    return {
        "experiment": experiment,
        "reference": _arm_entry("KL", ref["lr"], ref["T"]),
        "arms": [{**_arm_entry(r["arm"], r["lr"], r["T"]), "hypothesis": kind} for _, r in chosen.iterrows()],
        "teachers": list(teachers), "seeds": list(range(first_seed, first_seed + n)),
        "metric": metric, "smallest_effect": smallest_effect, "level": level,
        "correction": "holm", "power": power, "sd": sd, "runs_needed": needed,
    }


def _arm_entry(name: str, lr: float, T: float) -> dict[str, Any]:
    """A hypothesis file's entry for the arm called ``name`` (:attr:`Arm.name`) at ``lr`` and ``T``."""
    a = {arm.name: arm for arm in ARMS}[name]
    return {"arm": name, "alpha": "inf" if math.isinf(a.alpha) else a.alpha,
            "normalize_by_alpha": a.normalize_by_alpha, "reverse": a.reverse, "lr": float(lr), "T": float(T)}


def omitted_hypothesis(screen: pd.DataFrame, *, teachers: Sequence[int] = (0, 1, 2), first_seed: int = 200,
                       runs: int = 12, smallest_effect: float = 0.01, level: float = 0.05,
                       metric: str = "omitted_class_auroc") -> dict[str, Any]:
    """The hypothesis file of the tuned omitted-class experiment, derived from the exploration's
    screen by a rule fixed before the exploration finished.

    1. **Arms.** For each Rényi order of :data:`ARMS` (0.25, 0.5, 2, 4, ∞), its variant (with or
       without the division by α) with the higher tuned mean validation accuracy in the screen
       (:func:`tuned_screen`), and reverse KL; each at the learning rate and T the exploration chose
       for it, the reference KL at its own. Every arm's hypothesis is ``"two-sided"``: the earlier,
       reduced run gave no direction to pre-register (orders above 1 were below KL on the omitted
       class after the shift in the means, none significantly).
    2. **Runs.** ``runs`` per arm (default 12: the issue's minimum of 10, rounded up to a multiple
       of the teachers), fixed rather than powered because no earlier run recorded ``metric`` (the
       AUROC) to estimate its standard deviation from; the effect detectable with these runs is
       reported from the observed one afterwards, as such.
    3. **Seeds and teachers.** Student seeds ``first_seed, first_seed + 1, ...``; seed ``s`` learns
       from ``teachers[s mod len(teachers)]`` (the exploration's teachers: the omitted class is a
       question of its own, on a transfer set without the class).

    The analysis: for each arm the two-sided paired t-test of ``metric`` against KL's, paired by
    seed, Holm's correction over the arms at ``level``; the omitted class's accuracy before and
    after the bias shift reported beside it.

    Returns:
        a dict that :func:`kdlib.lab.experiments.load_hypothesis` accepts (write it as
        ``hypotheses/omitted_class_tuned.json`` and commit it before the runs).

    Raises:
        ValueError: ``runs`` is not a positive multiple of the number of ``teachers``, or the
            screen lacks an order's variants or reverse KL.
    """
    if not teachers or runs < 1 or runs % len(teachers):
        raise ValueError(f"runs must be a positive multiple of the {len(teachers)} teachers, got {runs}")
    by_name = screen.set_index("arm")
    arms = []
    for alpha in dict.fromkeys(a.alpha for a in ARMS if a.alpha != 1.0 and not a.reverse):
        names = [a.name for a in ARMS if a.alpha == alpha and not a.reverse]
        if not set(names) <= set(by_name.index):
            raise ValueError(f"screen must hold the arms {names}, has {sorted(by_name.index)}")
        arms.append(max(names, key=lambda n: (by_name.loc[n, "mean"], -names.index(n))))
    if "reverse KL" not in by_name.index:
        raise ValueError(f"screen must hold the arm 'reverse KL', has {sorted(by_name.index)}")
    arms.append("reverse KL")
    ref = screen.attrs["reference_setting"]
    return {
        "experiment": "omitted_class_tuned",
        "reference": _arm_entry("KL", ref["lr"], ref["T"]),
        "arms": [{**_arm_entry(n, by_name.loc[n, "lr"], by_name.loc[n, "T"]), "hypothesis": "two-sided"}
                 for n in arms],
        "teachers": list(teachers), "seeds": list(range(first_seed, first_seed + runs)),
        "metric": metric, "smallest_effect": smallest_effect, "level": level, "correction": "holm",
    }


def confirmation_sd(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, float]:
    """The standard deviation of one paired difference that sizes a confirmation (the rule in
    :func:`kdlib.lab.experiments.renyi_confirm_tuned`'s docstring), the larger of two estimates:

    * ``exploration``: the pooled sd (root of the mean variance) of the paired validation
      differences from KL of the arms of :func:`tuned_screen` whose runs at their tuned setting
      did not diverge (a diverged run's difference measures a breakdown, not noise);
    * ``hinton``: the sd of the paired test differences between the 2×800 students distilled with KL
      at T = 1 and at T = 2 in a Hinton-style experiment on the same data (one pair per seed and
      teacher): ``hinton`` for the student on all images (15 pairs at full scale),
      ``hinton_data_poor`` for the data-poor one (6 pairs).

    Returns:
        ``exploration``, ``hinton`` and ``sd`` (their maximum), as fractions of accuracy.
    """
    dist = explore[explore["arm"] != "alone"]
    tuned = tuned_comparison(dist, ["arm"], over=["lr", "T"])
    broken = set(tuned.loc[tuned["diverged"].astype(bool), "arm"])
    paired = paired_differences(tuned[~tuned["arm"].isin(broken)], "final_val_accuracy", ["arm"],
                                {"arm": "KL"}, [])
    pooled = float(np.sqrt((paired["std_diff"] ** 2).mean()))
    big = hinton[(hinton["model"] == "mlp800x800") & (hinton["label"] == "distilled")
                 & hinton["T"].isin([1.0, 2.0])]
    kl12 = paired_differences(big, "test_accuracy", ["T"], {"T": 1.0}, [])
    return {"exploration": pooled, "hinton": float(kl12["std_diff"].iloc[0]),
            "sd": max(pooled, float(kl12["std_diff"].iloc[0]))}


def hypotheses_from(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The hypothesis files derived from the exploration of the 2×800 student on all images, from
    its and the Hinton runs' :func:`student_frame`: ``{"renyi_confirm_tuned": ...,
    "omitted_class_tuned": ...}``, the first with the two estimates of :func:`confirmation_sd`
    recorded as ``sd_estimates``."""
    screen = tuned_screen(explore)
    return {"renyi_confirm_tuned": _sized_confirmation(screen, explore, hinton),
            "omitted_class_tuned": omitted_hypothesis(screen)}


def _sized_confirmation(screen: pd.DataFrame, explore: pd.DataFrame, hinton: pd.DataFrame,
                        **rule: Any) -> dict[str, Any]:
    """:func:`confirmation_hypothesis` of ``screen`` (with the keywords ``rule``), sized by
    :func:`confirmation_sd` of ``explore`` and ``hinton``, its two estimates recorded as ``sd_estimates``."""
    sd = confirmation_sd(explore, hinton)
    confirm = confirmation_hypothesis(screen, sd["sd"], **rule)
    confirm["sd_estimates"] = {k: sd[k] for k in ("exploration", "hinton")}
    return confirm


def poor_hypotheses_from(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The hypothesis file derived from the data-poor exploration (``renyi_explore_poor``) and the
    data-poor Hinton runs (``hinton_data_poor``): ``{"renyi_confirm_poor": ...}``, the rule of the
    confirmation on all images applied unchanged (:func:`confirmation_hypothesis` of
    :func:`tuned_screen`, sized by :func:`confirmation_sd`, recorded as ``sd_estimates``: at most
    three arms, a smallest effect of 0.3 points, power 0.8, at least 12 runs), on the confirmation's
    fresh teachers 3, 4 and 5 (the data-poor exploration used 0, 1 and 2) with student seeds from
    300 (the confirmation on all images has 100-111, the omitted class 200-211). Written before the
    data-poor exploration ended, like the rule it applies."""
    return {"renyi_confirm_poor": _sized_confirmation(tuned_screen(explore), explore, hinton,
                                                      experiment="renyi_confirm_poor", first_seed=300)}


def adam_poor_hypotheses_from(adam: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The hypothesis file derived from the data-poor Adam check (``renyi_adam_poor``, the
    confirmed arms of ``renyi_confirm_poor`` with Adam at five learning rates on three teachers) and
    the data-poor Hinton runs: ``{"renyi_confirm_adam_poor": ...}``. The confirmation rule of
    :func:`poor_hypotheses_from` applied unchanged to the check's screen (:func:`tuned_screen`: each
    arm's Adam learning rate chosen on mean validation accuracy, at its temperature from the SGD
    file), sized by :func:`confirmation_sd` of the check and the Hinton runs, on the fresh teachers
    3, 4 and 5 (the check used 0, 1 and 2), student seeds from 400, every student trained with Adam
    (``"optimizer": "adam"``). The check is this confirmation's exploration: it was not
    pre-registered, the file is written from it before any confirmatory run."""
    confirm = _sized_confirmation(tuned_screen(adam), adam, hinton, experiment="renyi_confirm_adam_poor",
                                  first_seed=400)
    return {"renyi_confirm_adam_poor": {**confirm, "optimizer": "adam"}}


#: How the confirmatory hypothesis files are derived: exploration -> (the Hinton-style experiment
#: whose runs size the confirmation, the rule). Each rule was committed before its exploration ended,
#: except the Adam confirmation's, which is the data-poor rule applied unchanged to a check that had
#: already run (see :func:`adam_poor_hypotheses_from`).
DERIVATIONS: dict[str, tuple[str, Callable[[pd.DataFrame, pd.DataFrame], dict[str, dict[str, Any]]]]] = {
    "renyi_explore": ("hinton", hypotheses_from),
    "renyi_explore_poor": ("hinton_data_poor", poor_hypotheses_from),
    "renyi_adam_poor": ("hinton_data_poor", adam_poor_hypotheses_from),
}
#: The hypothesis files derived from the explorations, by the experiment that reads each.
DERIVED_HYPOTHESES = ("renyi_confirm_tuned", "omitted_class_tuned", "renyi_confirm_poor",
                      "renyi_confirm_adam_poor")


def derive_hypotheses(root: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The hypothesis files of :data:`DERIVED_HYPOTHESES`, derived from the committed full-scale
    explorations and Hinton-style runs by the rules of :data:`DERIVATIONS` (:func:`tuned_screen`,
    :func:`confirmation_sd`, :func:`confirmation_hypothesis`, :func:`omitted_hypothesis`).
    ``python -m kdlib hypotheses --write`` writes them; the pages check the committed files against
    this function.

    Raises:
        ValueError: an exploration is not complete (a run of its current definition is missing).
    """
    files: dict[str, dict[str, Any]] = {}
    for explore, (hinton, rule) in DERIVATIONS.items():
        res = load_results(explore, "full", root)
        keys = expected_keys(explore, "full")
        total = len(get_experiment(explore).profile("full").students)
        done = sum(r["key"] in keys for r in res.students)
        if done < total:
            raise ValueError(f"the exploration {explore}/full is not complete: {done} of {total} runs")
        files.update(rule(res.frame(), load_results(hinton, "full", root).frame()))
    return files


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


#: Verdicts of :func:`confirmatory_tests` by hypothesis: (rejected and the difference > 0, rejected
#: and < 0, not rejected).
VERDICTS = {"greater": ("greater", "greater", "not shown greater"),
            "two-sided": ("greater", "smaller", "no difference shown"),
            "equivalent": ("equivalent", "equivalent", "equivalence not shown")}


def confirmatory_tests(df: pd.DataFrame, h: dict[str, Any], metric: str | None = None) -> pd.DataFrame:
    """The confirmatory analysis that a hypothesis file ``h`` fixes
    (:func:`kdlib.lab.experiments.load_hypothesis`).

    For each arm of ``h``, its runs in ``df`` (:func:`student_frame` rows with the arm's name,
    learning rate and T) are paired by seed with the reference's, and ``metric`` (default
    ``h["metric"]``) is tested as the arm's ``hypothesis`` says: ``"greater"``, the one-sided
    :func:`scipy.stats.ttest_rel` (H1: arm > reference); ``"two-sided"``, the two-sided one;
    ``"equivalent"``, :func:`equivalence_test` with margin ``h["smallest_effect"]``. Holm's
    correction over the arms (:func:`holm`) gives ``p_holm`` and the ``verdict`` at ``h["level"]``
    (:data:`VERDICTS`). ``detectable`` is :func:`detectable_effect` at Holm's first level with the
    observed ``std_diff`` (one-sided for ``greater`` and ``equivalent``).

    Returns:
        one row per arm, in the file's order: ``arm, lr, T, hypothesis, n, mean_diff, std_diff,
        ci_low, ci_high`` (95% t-interval), ``p, p_holm, verdict, detectable``.

    Raises:
        ValueError: an arm (or the reference) has no runs in ``df``, or an arm's seeds differ from
            the reference's.
    """
    metric = metric or h["metric"]
    level, k = float(h["level"]), len(h["arms"])

    def runs(arm: dict[str, Any]) -> tuple[str, pd.Series]:
        name = Arm.from_dict(arm).name
        sel = df[(df["arm"] == name) & np.isclose(df["lr"], float(arm["lr"])) & (df["T"] == float(arm["T"]))]
        if sel.empty:
            raise ValueError(f"df has no runs of the arm {name!r} at lr {arm['lr']}, T {arm['T']}")
        return name, sel.set_index("seed")[metric].sort_index()

    _, ref = runs(h["reference"])
    rows = []
    for arm in h["arms"]:
        name, a = runs(arm)
        if list(a.index) != list(ref.index):
            raise ValueError(f"the seeds of {name!r} {list(a.index)} differ from the reference's "
                             f"{list(ref.index)}")
        kind = arm["hypothesis"]
        test = paired_test(a.tolist(), ref.tolist())
        if kind == "equivalent":
            p = equivalence_test(a.tolist(), ref.tolist(), float(h["smallest_effect"]))["p"]
        elif kind == "greater":
            p = float(stats.ttest_rel(a, ref, alternative="greater").pvalue)
        else:
            p = test["p"]
        detectable = detectable_effect(test["std_diff"], test["n"], level / k,
                                       alternative="two-sided" if kind == "two-sided" else "greater")
        rows.append({"arm": name, "lr": float(arm["lr"]), "T": float(arm["T"]), "hypothesis": kind,
                     **{f: test[f] for f in ("n", "mean_diff", "std_diff", "ci_low", "ci_high")}, "p": p,
                     "detectable": detectable})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].tolist())
    out["verdict"] = [VERDICTS[kind][2 if p >= level else (0 if d > 0 else 1)]
                      for kind, p, d in zip(out["hypothesis"], out["p_holm"], out["mean_diff"], strict=True)]
    cols = ["arm", "lr", "T", "hypothesis", "n", "mean_diff", "std_diff", "ci_low", "ci_high", "p", "p_holm",
            "verdict", "detectable"]
    return out[cols]


def hypothesis_preceded(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> dict[str, bool | None]:
    """For each commit the ``records`` were run from, whether it already held the hypothesis file
    ``path`` exactly as it is now (:func:`kdlib.lab.store.file_at_commit`): ``True`` yes, ``False``
    no (missing or different there: the runs did not follow the file as committed), ``None``
    unknown (no git history here, or a record without a commit, under the key ``"?"``)."""
    current = Path(path).read_bytes()
    out: dict[str, bool | None] = {}
    for r in records:
        commit = r.get("provenance", {}).get("git_commit") or "?"
        if commit in out:
            continue
        try:
            out[commit] = None if commit == "?" else file_at_commit(path, commit) == current
        except LookupError:
            out[commit] = None
    return out


def check_hypothesis_preceded(records: Iterable[dict[str, Any]], path: str | os.PathLike) -> str:
    """:func:`hypothesis_preceded`, as a page states it: one line saying in how many commits the
    ``records`` ran from the file ``path`` was already committed as it is now (and whether some
    commits are not in this clone's history).

    Raises:
        ValueError: a record ran from a commit that did not hold the file as it is now (it is
            named), so the runs did not follow the committed hypotheses.
    """
    preceded = hypothesis_preceded(records, path)
    late = sorted(c for c, ok in preceded.items() if ok is False)
    if late:
        raise ValueError(f"records ran from commits without {Path(path).name} as committed now: "
                         f"{', '.join(c[:10] for c in late)}")
    known = sum(ok is True for ok in preceded.values())
    unknown = "; some are not in this clone's history" if None in preceded.values() else ""
    return ("the hypothesis file, as committed now, is in every commit\n"
            f"the runs started from ({known} commits{unknown})")


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
    groups = []  # per teacher: arrays (distilled, alone, teacher) of its pairs
    for key, g in distilled.groupby("teacher_key", sort=True):
        d = g[metric].to_numpy(float)
        a = alone_by_seed.loc[g["seed"]].to_numpy(float)
        groups.append((key, d, a, np.full(len(d), teacher_acc[key])))

    def share(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
        d, a, t = (np.concatenate(x) for x in zip(*parts, strict=True))
        return float((d.mean() - a.mean()) / (t.mean() - a.mean()))

    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for i in range(resamples):
        picked = rng.integers(len(groups), size=len(groups))
        parts = []
        for j in picked:
            _, d, a, t = groups[j]
            k = rng.integers(len(d), size=len(d))
            parts.append((d[k], a[k], t[k]))
        draws[i] = share(parts)
    tail = (1 - confidence) / 2
    whole = [(d, a, t) for _, d, a, t in groups]
    d, a, t = (np.concatenate(x) for x in zip(*whole, strict=True))
    return {"share": share(whole), "ci_low": float(np.quantile(draws, tail)),
            "ci_high": float(np.quantile(draws, 1 - tail)), "gap": float(t.mean() - a.mean()),
            "gain": float(d.mean() - a.mean()), "n": len(d), "teachers": len(groups),
            "per_teacher": {key: share([(d_, a_, t_)]) for key, d_, a_, t_ in groups}}


# ----------------------------------------------------------------------------- formatting

def fmt_alpha(alpha: float) -> str:
    """``'∞'`` for infinity, else ``'%g'``."""
    return "∞" if math.isinf(alpha) else f"{alpha:g}"


def fmt_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``'85.12 ± 0.31'`` (``mean`` and ``std`` times ``scale``).

    ``'85.12'`` when std is NaN; ``'-'`` when the mean is.
    """
    if math.isnan(mean):
        return "-"
    head = f"{mean * scale:.{digits}f}"
    return head if math.isnan(std) else f"{head} ± {std * scale:.{digits}f}"


def fmt_interval(low: float, high: float, scale: float = 100.0, digits: int = 2) -> str:
    """``'[84.40, 85.84]'`` (times ``scale``); ``'-'`` when undefined."""
    if math.isnan(low) or math.isnan(high):
        return "-"
    return f"[{low * scale:.{digits}f}, {high * scale:.{digits}f}]"


def fmt_p(p: float) -> str:
    """A p-value with three decimals (``'<0.001'`` below that, ``'-'`` for NaN)."""
    if math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_key(name: str, value: Any) -> Any:
    """A cell field for display: an order via :func:`fmt_alpha`, floats ``%g``, booleans ``yes``/``no``."""
    if name == "alpha":
        return fmt_alpha(float(value))
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return value


def _estimates(frame: pd.DataFrame, keys: Sequence[str], mean: str, std: str, title: str,
               scale: float, digits: int) -> pd.DataFrame:
    """The ``keys`` (:func:`fmt_key`), ``n``, ``title`` (``mean ± std``) and ``95% interval`` columns."""
    out = pd.DataFrame({k: [fmt_key(k, v) for v in frame[k]] for k in keys})
    out["n"] = frame["n"].astype(int).tolist()
    out[title] = [fmt_mean_std(m, s, scale, digits) for m, s in zip(frame[mean], frame[std], strict=True)]
    out["95% interval"] = [fmt_interval(lo, hi, scale, digits)
                           for lo, hi in zip(frame["ci_low"], frame["ci_high"], strict=True)]
    return out


def summary_table(summary: pd.DataFrame, keys: Sequence[str], labels: dict[str, str] | None = None,
                  scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """Strings for a page: the ``keys`` columns (:func:`fmt_key`), ``n``, ``mean ± std`` and the 95% interval.

    ``labels`` renames columns.
    """
    return _estimates(summary, keys, "mean", "std", "mean ± std", scale, digits).rename(columns=labels or {})


def paired_table(paired: pd.DataFrame, keys: Sequence[str], labels: dict[str, str] | None = None,
                 scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """Strings for :func:`paired_differences`: keys, n, mean difference, interval, p, Holm p, verdict."""
    out = _estimates(paired, keys, "mean_diff", "std_diff", "diff ± std", scale, digits)
    out["p"] = [fmt_p(p) for p in paired["p"]]
    out["p (Holm)"] = [fmt_p(p) for p in paired["p_holm"]]
    out["verdict"] = paired["verdict"].tolist()
    return out.rename(columns=labels or {})


def pivot_means(summary: pd.DataFrame, index: str = "alpha", columns: str = "T",
                scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """A grid of ``'mean ± std'`` strings (rows ``index``, columns ``columns``), sorted both ways."""
    table: dict[Any, dict[Any, str]] = {}
    for _, row in summary.sort_values([index, columns]).iterrows():
        r = fmt_alpha(row[index]) if index == "alpha" else row[index]
        c = f"T = {row[columns]:g}" if columns == "T" else row[columns]
        table.setdefault(c, {})[r] = fmt_mean_std(row["mean"], row["std"], scale, digits)
    out = pd.DataFrame(table)
    out.index.name = "α" if index == "alpha" else index
    return out


# ----------------------------------------------------------------------------- tables on a page

#: A cell that reads as a number (right-aligned on the page): digits, a sign, an interval, ``<0.001``,
#: ``∞``, ``-`` (undefined).
_NUMERIC = re.compile(r"^(?:[<\[]?\s*[-−+]?\s*[\d.∞]|-$)")


def _constant(values: pd.Series) -> bool:
    return values.astype(str).nunique(dropna=False) == 1


class BookTable:
    """A table as the book shows it: no index, readable headers, constant columns stated once.

    Made by :func:`book_table`. In a notebook it displays as one output: HTML (``_repr_html_``: a
    caption, the line naming the constant columns, the table; rows of a ``group`` under a full-width
    heading) with plain text as its twin (``repr``, :meth:`to_text`: the same lines, then
    ``DataFrame.to_string(index=False)``). Both are deterministic, so nbval compares them.

    Attributes:
        frame: the columns shown (strings as given; no index).
        caption: what the table shows ('' for none).
        constants: ``(column, value)`` of the columns left out because every row has the same value.
        group: the column whose values head groups of rows in HTML (``None``: no groups); it is not a
            column of the HTML table, and the first column of the text.
    """

    def __init__(self, frame: pd.DataFrame, caption: str = "", constants: Sequence[tuple[str, str]] = (),
                 group: str | None = None) -> None:
        self.frame = frame
        self.caption = caption
        self.constants = list(constants)
        self.group = group

    @property
    def note(self) -> str:
        """``'Every row: n = 3; verdict = no difference'`` ('' when no column is constant)."""
        if not self.constants:
            return ""
        return "Every row: " + "; ".join(f"{k} = {v}" for k, v in self.constants)

    def to_text(self) -> str:
        """Caption, note and the table as plain text (``DataFrame.to_string(index=False)``)."""
        lines = [x for x in (self.caption, self.note) if x]
        return "\n".join([*lines, self.frame.to_string(index=False)])

    def __repr__(self) -> str:
        return self.to_text()

    def to_html(self) -> str:
        """The table as an HTML fragment (classes ``kd-table``, styled by the book's CSS)."""
        e = html.escape
        cols = [c for c in self.frame.columns if c != self.group]
        numeric = {c: all(_NUMERIC.match(str(v)) for v in self.frame[c]) for c in cols}
        # labels longer than a few words may wrap between words; numbers and short labels never wrap
        kind = {c: "num" if numeric[c] else ("text wrap" if self.frame[c].str.len().max() > 20 else "text")
                for c in cols}
        out = ['<div class="kd-table">']
        head = ([e(self.caption)] if self.caption else []) + (
            [f'<span class="kd-table-note">{e(self.note)}</span>'] if self.note else [])
        if head:
            out.append('<p class="kd-table-caption">' + "<br>".join(head) + "</p>")
        out.append('<div class="kd-table-scroll"><table>')
        out.append("<thead><tr>" + "".join(f'<th class="{kind[c]}">{e(str(c))}</th>'
                                           for c in cols) + "</tr></thead>")
        out.append("<tbody>")
        current = None
        for _, row in self.frame.iterrows():
            if self.group is not None and row[self.group] != current:
                current = row[self.group]
                out.append(f'<tr class="kd-group"><th colspan="{len(cols)}">{e(str(current))}</th></tr>')
            out.append("<tr>" + "".join(f'<td class="{kind[c]}">{e(str(row[c]))}</td>'
                                        for c in cols) + "</tr>")
        out.append("</tbody></table></div></div>")
        return "\n".join(out)

    def _repr_html_(self) -> str:
        return self.to_html()


def book_table(frame: pd.DataFrame, caption: str = "", keep: Sequence[str] = (), group: str | None = None,
               drop_constant: bool = True) -> BookTable:
    """``frame`` as the book shows a table (:class:`BookTable`), its values unchanged.

    A named index (:func:`pivot_means`) becomes the first column; any other index is dropped. With
    ``drop_constant``, a column whose value is the same in every row (n = 3 everywhere, a verdict that
    never changes) is left out and stated once above the table, unless it is in ``keep`` or is the
    ``group`` column; a table of one row keeps all its columns. Every value is shown as text
    (:func:`str`), so the digits are those of the frame.
    """
    named = any(n is not None for n in frame.index.names)
    df = frame.reset_index() if named else frame.reset_index(drop=True)
    df = df.astype(object).where(df.notna(), "-").astype(str)
    constants = []
    if drop_constant and len(df) > 1:
        for c in list(df.columns):
            if c not in keep and c != group and _constant(df[c]):
                constants.append((str(c), df[c].iloc[0]))
                df = df.drop(columns=c)
    return BookTable(df, caption, constants, group)


# ----------------------------------------------------------------------------- the command line's report

#: Metrics counted in units (errors, nats of logit shift), shown with one decimal; others are fractions.
COUNT_METRICS = ("test_errors", "bias_shift")


def cell_summary(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per cell (:data:`CELL_FIELDS`): ``n``, then per metric its ``mean``/``std``/``ci95``.

    Columns ``<metric>`` (mean), ``<metric> std`` and ``<metric> ci95``; ``n`` counts the runs of the
    first metric. Cells where the first metric is missing everywhere are left out.
    """
    out = None
    for i, metric in enumerate(metrics):
        s = summarize_frame(df, CELL_FIELDS, metric)
        s = s[[*CELL_FIELDS, *(["n"] if i == 0 else []), "mean", "std", "ci95"]].rename(
            columns={"mean": metric, "std": f"{metric} std", "ci95": f"{metric} ci95"})
        out = s if out is None else out.merge(s, on=list(CELL_FIELDS), how="left")
    return out


def _cli_number(metric: str, mean: float, std: float) -> str:
    digits = 1 if metric in COUNT_METRICS else 4
    return fmt_mean_std(mean, std, scale=1.0, digits=digits)


def report_text(experiment: str, path: str | os.PathLike, include_stale: bool = False) -> str:
    """The command line's report of one results file (and its shard files): provenance, teachers, cells.

    Cells are summarised by :func:`cell_summary` (the same :func:`summarize_frame` as the book) over
    the metrics the experiment declares (``report_metrics``): ``mean ± std`` over seeds, ``n`` and the
    95% t half-width of the first metric. Records that the current definition of the profile would not
    produce (:func:`kdlib.lab.experiments.expected_keys`) are left out unless ``include_stale``.

    Raises:
        kdlib.lab.store.ResultsFileError: the file is missing or not a results file.
        kdlib.lab.experiments.UnknownExperimentError: ``experiment`` is not defined.
    """
    exp = get_experiment(experiment)
    path = Path(path)
    records = load_experiment_records(path)
    stale = 0
    if not include_stale and path.stem in exp.profiles:
        keep = expected_keys(experiment, path.stem)
        stale = sum(r["key"] not in keep for r in records)
        records = [r for r in records if r["key"] in keep]
    teachers = [r for r in records if r.get("kind") == "teacher"]
    df = student_frame(records)
    lines = [f"== {experiment} / {path.stem}: {len(df)} student runs, {len(teachers)} teacher(s) =="]
    if stale:
        lines.append(f"left out: {stale} records of an earlier definition of this profile "
                     "(--all includes them)")
    if records:
        p = provenance(records)
        lines.append(f"commits: {', '.join(p['commits'])}; devices: {'; '.join(p['devices'])}; "
                     f"run {p['started']} .. {p['finished']}")
    for t in teachers:
        m = t["metrics"]
        lines.append(f"teacher {t['key']}: test accuracy {m['test_accuracy']:.4f}, "
                     f"test errors {m.get('test_errors', '-')}")
    if df.empty:
        return "\n".join(lines)
    diverged = df[df["diverged"].fillna(False).astype(bool)]
    if len(diverged):
        cells = sorted({f"alpha={r.alpha:g} T={r.T:g} beta={r.beta:g}"
                        f"{' /alpha' if r.normalize_by_alpha else ''}{' reverse' if r.reverse else ''}"
                        f"{f' lr={r.lr:g}' if df['lr'].nunique() > 1 else ''}"
                        for r in diverged.itertuples()})
        lines.append(f"diverged (non-finite training loss): {len(diverged)} runs: {'; '.join(cells)}")
    metrics = list(exp.report_metrics)
    summary = cell_summary(df, metrics)
    hard = summary["beta"] == 0  # trained on the labels alone: the order and temperature are unused
    table = pd.DataFrame({
        "label": summary["label"], "model": summary["model"],
        "alpha": ["-" if h else f"{a:g}" for a, h in zip(summary["alpha"], hard, strict=True)],
        "T": ["-" if h else f"{t:g}" for t, h in zip(summary["T"], hard, strict=True)],
        "beta": [f"{b:g}" for b in summary["beta"]],
        "normalize_by_alpha": ["yes" if v else "no" for v in summary["normalize_by_alpha"]],
        **({"reverse": ["yes" if v else "no" for v in summary["reverse"]]}
           if summary["reverse"].any() else {}),
        **({"lr": [f"{v:g}" for v in summary["lr"]]} if summary["lr"].nunique() > 1 else {}),
        **({"optimizer": list(summary["optimizer"])} if summary["optimizer"].nunique() > 1 else {}),
        "n": summary["n"].astype(int),
        **{m: [_cli_number(m, mean, std) for mean, std in zip(summary[m], summary[f"{m} std"], strict=True)]
           for m in metrics},
        f"{metrics[0]} ci95": [_cli_number(metrics[0], h, math.nan) for h in summary[f"{metrics[0]} ci95"]],
    })
    lines.append(table.to_string(index=False))
    return "\n".join(lines)
