"""Analysis of committed experiment results for the chapter-2 pages.

The records themselves come from :mod:`kdlib.results` (one JSON line per finished run, with
provenance); this module turns them into what a book page shows:

* which results to show: the best committed profile (``full`` if present, else ``cpu``), or the
  profile named by the environment switch ``KDLIB_PROFILE`` (see :func:`requested_profile`);
* one row per student run (:func:`student_frame`), summaries over seeds (mean, sample standard
  deviation, 95% Student-t interval; :func:`summarize_frame`, which reuses
  :func:`kdlib.results.mean_std_ci`);
* paired comparisons against a reference (KL, alpha = 1) on the same seeds, with two-sided
  t-test p-values and Holm's step-down correction for multiple comparisons
  (:func:`paired_differences`, :func:`holm`), and a comparison where every order gets the
  temperature that is best on the *validation* split (:func:`tuned_comparison`);
* deterministic text for tables (fixed float formats) and the book's figures (heatmaps,
  accuracy against temperature, learning curves);
* a provenance line built from the records (:func:`provenance_line`), never typed by hand.

Accuracies are fractions in [0, 1]; tables show them in percent.

The Student-t distribution and Holm's correction come from :mod:`kdlib.stats` (re-exported
here), since scipy is only a test dependency.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdlib.results import load_records, mean_std_ci
from kdlib.stats import holm as holm
from kdlib.stats import t_cdf as t_cdf
from kdlib.stats import t_quantile as t_quantile
from kdlib.stats import t_two_sided_p as t_two_sided_p

PROFILE_PREFERENCE = ("full", "cpu")
ENV_PROFILE = "KDLIB_PROFILE"
ENV_DEVICE = "KDLIB_DEVICE"
ENV_RESULTS = "KDLIB_RESULTS_DIR"

#: Metrics copied from each record into :func:`student_frame` (missing ones become NaN).
METRICS = ("test_accuracy", "test_errors", "final_val_accuracy", "teacher_agreement", "test_kl_from_teacher",
           "omitted_class_accuracy_before_shift", "omitted_class_accuracy_after_shift",
           "test_accuracy_before_shift", "test_accuracy_after_shift", "bias_shift", "diverged")


def interval(values: Sequence[float]) -> dict[str, float]:
    """``n``, ``mean``, ``std`` (ddof 1), ``ci95`` half-width, ``ci_low``, ``ci_high`` of ``values``.

    From :func:`kdlib.results.mean_std_ci` (exact Student-t quantile). NaN spread for n < 2.
    """
    s = mean_std_ci([float(v) for v in values])
    return {**s, "ci_low": s["mean"] - s["ci95"], "ci_high": s["mean"] + s["ci95"]}


# ----------------------------------------------------------------------------- which results

def results_root() -> Path:
    """Directory of the committed results: ``$KDLIB_RESULTS_DIR`` or ``results/`` of this repository."""
    env = os.environ.get(ENV_RESULTS)
    return Path(env) if env else Path(__file__).resolve().parent.parent / "results"


def requested_profile() -> str | None:
    """The profile named by ``$KDLIB_PROFILE`` (``None`` when unset or empty): the rerun switch.

    Raises:
        ValueError: the variable names no profile of :data:`kdlib.experiments.PROFILES`.
    """
    from kdlib.experiments import PROFILES

    value = os.environ.get(ENV_PROFILE, "").strip()
    if not value:
        return None
    if value not in PROFILES:
        raise ValueError(f"{ENV_PROFILE} must be one of {', '.join(PROFILES)} (or unset), got {value!r}")
    return value


def requested_device() -> str:
    """``$KDLIB_DEVICE`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``auto`` when unset."""
    return os.environ.get(ENV_DEVICE, "").strip() or "auto"


def _path(experiment: str, profile: str, root: Path) -> Path:
    return root / experiment / f"{profile}.jsonl"


def committed_profile(experiment: str, root: str | os.PathLike | None = None) -> str | None:
    """The best profile with a results file for ``experiment``: ``full`` if present, else ``cpu``."""
    root = Path(root) if root is not None else results_root()
    for profile in PROFILE_PREFERENCE:
        path = _path(experiment, profile, root)
        if path.is_file() and path.stat().st_size > 0:
            return profile
    return None


def rerun_if_requested(experiment: str, root: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print) -> str | None:
    """If ``$KDLIB_PROFILE`` is set, run (or resume) ``experiment`` at that profile into ``root``.

    The device comes from ``$KDLIB_DEVICE`` (default ``auto``: CUDA when present). Finished runs
    already in ``root`` are skipped (the store resumes). A ``smoke`` request writes to
    ``root/_scratch`` so committed results are never touched. Returns the profile run, or
    ``None`` when no rerun was asked for.
    """
    profile = requested_profile()
    if profile is None:
        return None
    from kdlib.experiments import run_experiment

    root = Path(root) if root is not None else results_root()
    out = root / "_scratch" if profile == "smoke" else root
    run_experiment(experiment, profile, device=requested_device(), out=out, log=log)
    return profile


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
    """Load ``root/<experiment>/<profile>.jsonl``.

    ``profile`` defaults to ``$KDLIB_PROFILE`` when set, else the best committed profile
    (:func:`committed_profile`).

    Raises:
        FileNotFoundError: no results file; the message says how to produce one.
        kdlib.results.ResultsFileError: the file is not a results file.
    """
    root = Path(root) if root is not None else results_root()
    profile = profile or requested_profile() or committed_profile(experiment, root)
    if profile is None or not _path(experiment, profile, root).is_file():
        raise FileNotFoundError(
            f"no results for experiment {experiment!r} (profile {profile or 'full/cpu'}) under {root}; "
            f"run `python -m kdlib run {experiment} --profile cpu` (or full on a GPU)")
    path = _path(experiment, profile, root)
    return ExperimentResults(experiment, profile, path, tuple(load_records(path)))


def glue_number(key: str, value: Any) -> None:
    """Glue ``value`` under ``key`` for the book's prose (myst-nb), as a plain Python number.

    numpy and torch scalars are converted with ``.item()`` first, so the text a page shows does
    not depend on which library computed the number.
    """
    from myst_nb import glue  # a book dependency, imported only where a page glues

    glue(key, value.item() if hasattr(value, "item") else value, display=False)


# ----------------------------------------------------------------------------- provenance

def provenance(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What produced ``records``: profiles, devices, commits, date range, run counts, CPU/GPU time.

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


# ----------------------------------------------------------------------------- tables

def _width(cfg: dict[str, Any]) -> str:
    hidden = cfg.get("model", {}).get("hidden") or []
    return "x".join(str(h) for h in hidden)


def student_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per student record, sorted by (hidden, label, beta, normalize_by_alpha, alpha, T, seed).

    Columns: ``key, label, hidden`` (e.g. ``"800x800"``), ``alpha`` (float, ``inf`` allowed),
    ``T, beta, normalize_by_alpha, seed, epochs``, the :data:`METRICS` (NaN where a record lacks
    one), and ``curve_val_accuracy`` / ``curve_train_loss`` (lists, one value per epoch).
    """
    rows = []
    for r in records:
        if r.get("kind") != "student":
            continue
        c, m = r["config"], r["metrics"]
        alpha = c.get("alpha", 1.0)
        row = {"key": r["key"], "label": c.get("label"), "hidden": _width(c),
               "alpha": float(alpha),  # "inf" strings are decoded by float() too
               "T": float(c.get("T")), "beta": float(c.get("beta")),
               "normalize_by_alpha": bool(c.get("normalize_by_alpha", False)),
               "seed": int(c.get("seed")), "epochs": c.get("epochs")}
        for name in METRICS:
            value = m.get(name)
            row[name] = math.nan if value is None else (bool(value) if name == "diverged" else float(value))
        curves = m.get("curves", {})
        row["curve_val_accuracy"] = list(curves.get("val_accuracy", []))
        row["curve_train_loss"] = list(curves.get("train_loss", []))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = ["hidden", "label", "beta", "normalize_by_alpha", "alpha", "T", "seed"]
    return df.sort_values(order, kind="mergesort").reset_index(drop=True)


def summarize_frame(df: pd.DataFrame, by: Sequence[str], metric: str = "test_accuracy") -> pd.DataFrame:
    """Per group of ``by``: ``n, mean, std, ci95, ci_low, ci_high`` of ``metric`` over the rows (seeds).

    Rows with a NaN metric are dropped first. Groups are sorted by ``by``.
    """
    rows = []
    sub = df.dropna(subset=[metric])
    for key, g in sub.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), **interval(g[metric].tolist()),
                     "seeds": sorted(int(s) for s in g["seed"])})
    return pd.DataFrame(rows)


def paired_differences(df: pd.DataFrame, metric: str, cells: Sequence[str], reference: dict[str, Any],
                       match: Sequence[str]) -> pd.DataFrame:
    """Each cell minus the reference cell with the same ``match`` fields, paired by seed.

    For every group of ``cells`` that is not itself a reference, the reference rows are those
    whose fields equal ``reference`` and whose ``match`` fields equal the cell's; the two are
    joined on ``seed`` and the differences ``d = cell - reference`` summarised: ``n,
    mean_diff, std_diff, ci_low, ci_high`` (95% t-interval), the paired t statistic
    ``t = mean / (std / sqrt(n))``, its two-sided ``p`` (df = n - 1) and ``p_holm`` over all
    rows returned. ``verdict``: ``"better"`` / ``"worse"`` when ``p_holm < 0.05``, else
    ``"no difference"``.

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
    for key, g in others.groupby(list(cells), sort=True):
        cell = dict(zip(cells, key, strict=True))
        r = refs
        for k in match:
            r = r[r[k] == cell[k]]
        joined = g[["seed", metric]].merge(r[["seed", metric]], on="seed", suffixes=("", "_ref")).dropna()
        d = (joined[metric] - joined[f"{metric}_ref"]).tolist()
        s = interval(d)
        se = s["std"] / math.sqrt(s["n"]) if s["n"] >= 2 else math.nan
        if s["n"] >= 2 and se > 0:
            t = s["mean"] / se
            p = t_two_sided_p(t, s["n"] - 1)
        elif s["n"] >= 2 and s["mean"] == 0:
            t, p = 0.0, 1.0
        else:
            t = p = math.nan
        rows.append({**cell, "n": s["n"], "mean_diff": s["mean"], "std_diff": s["std"],
                     "ci_low": s["ci_low"], "ci_high": s["ci_high"], "t": t, "p": p})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = holm(out["p"].tolist())
    out["verdict"] = [("better" if md > 0 else "worse") if ph < 0.05 else "no difference"
                      for md, ph in zip(out["mean_diff"], out["p_holm"], strict=True)]
    return out


def tuned_comparison(df: pd.DataFrame, groups: Sequence[str], over: str = "T",
                     select: str = "final_val_accuracy") -> pd.DataFrame:
    """For each group, the value of ``over`` whose seed-mean ``select`` (validation) is highest.

    Returns one row per (group, seed) of the chosen cell, with the columns of ``df``, so the
    result can be fed to :func:`summarize_frame` and :func:`paired_differences` (choosing T on
    validation data keeps the test split out of the choice; ties go to the smaller ``over``).
    """
    chosen = []
    for _, g in df.groupby(list(groups), sort=True):
        means = g.groupby(over, sort=True)[select].mean()
        best = means.index[int(means.to_numpy().argmax())]
        chosen.append(g[g[over] == best])
    return pd.concat(chosen).sort_values([*groups, "seed"], kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------- formatting

def fmt_alpha(alpha: float) -> str:
    """``'∞'`` for infinity, else ``'%g'``."""
    return "∞" if math.isinf(alpha) else f"{alpha:g}"


def fmt_mean_std(mean: float, std: float, scale: float = 100.0, digits: int = 2) -> str:
    """``'85.12 ± 0.31'`` (``mean`` and ``std`` times ``scale``); ``'85.12'`` when std is NaN."""
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


def _key_column(frame: pd.DataFrame, key: str) -> list[Any]:
    """A key column for display: orders via :func:`fmt_alpha`, floats ``%g``, booleans yes/no."""
    out = []
    for v in frame[key]:
        if key == "alpha":
            out.append(fmt_alpha(float(v)))
        elif isinstance(v, bool) or type(v).__name__ == "bool_":
            out.append("yes" if v else "no")
        elif isinstance(v, float):
            out.append(f"{v:g}")
        else:
            out.append(v)
    return out


def summary_table(summary: pd.DataFrame, keys: Sequence[str], labels: dict[str, str] | None = None,
                  scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """Strings for a page: the ``keys`` columns, ``n``, ``mean ± std`` and the 95% interval.

    Key columns: ``alpha`` via :func:`fmt_alpha`, other floats ``%g``, booleans ``yes``/``no``;
    ``labels`` renames columns.
    """
    out = pd.DataFrame({k: _key_column(summary, k) for k in keys})
    out["n"] = summary["n"].astype(int).tolist()
    out["mean ± std"] = [fmt_mean_std(m, s, scale, digits) for m, s in zip(summary["mean"], summary["std"],
                                                                          strict=True)]
    out["95% interval"] = [fmt_interval(lo, hi, scale, digits)
                           for lo, hi in zip(summary["ci_low"], summary["ci_high"], strict=True)]
    return out.rename(columns=labels or {})


def paired_table(paired: pd.DataFrame, keys: Sequence[str], labels: dict[str, str] | None = None,
                 scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """Strings for :func:`paired_differences`: keys, n, mean difference, interval, p, Holm p, verdict."""
    out = pd.DataFrame({k: _key_column(paired, k) for k in keys})
    out["n"] = paired["n"].astype(int).tolist()
    out["diff ± std"] = [fmt_mean_std(m, s, scale, digits)
                         for m, s in zip(paired["mean_diff"], paired["std_diff"], strict=True)]
    out["95% interval"] = [fmt_interval(lo, hi, scale, digits)
                           for lo, hi in zip(paired["ci_low"], paired["ci_high"], strict=True)]
    out["p"] = [fmt_p(p) for p in paired["p"]]
    out["p (Holm)"] = [fmt_p(p) for p in paired["p_holm"]]
    out["verdict"] = paired["verdict"].tolist()
    return out.rename(columns=labels or {})


def pivot_means(summary: pd.DataFrame, index: str = "alpha", columns: str = "T",
                scale: float = 100.0, digits: int = 2) -> pd.DataFrame:
    """A grid of ``'mean ± std'`` strings (rows ``index``, columns ``columns``), sorted both ways."""
    table = {}
    for _, row in summary.sort_values([index, columns]).iterrows():
        r = fmt_alpha(row[index]) if index == "alpha" else row[index]
        c = f"T = {row[columns]:g}" if columns == "T" else row[columns]
        table.setdefault(c, {})[r] = fmt_mean_std(row["mean"], row["std"], scale, digits)
    out = pd.DataFrame(table)
    out.index.name = "α" if index == "alpha" else index
    return out


# ----------------------------------------------------------------------------- figures

def heatmap(ax: Any, summary: pd.DataFrame, index: str = "alpha", columns: str = "T", value: str = "mean",
            scale: float = 100.0, vmin: float | None = None, vmax: float | None = None,
            cmap: str = "viridis", digits: int = 1) -> Any:
    """Draw ``summary[value]`` (times ``scale``) as an annotated grid on ``ax``; returns the image."""
    rows = sorted(summary[index].unique())
    cols = sorted(summary[columns].unique())
    grid = [[math.nan] * len(cols) for _ in rows]
    for _, r in summary.iterrows():
        grid[rows.index(r[index])][cols.index(r[columns])] = float(r[value]) * scale
    im = ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", origin="upper")
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [fmt_alpha(r) if index == "alpha" else str(r) for r in rows])
    ax.set_xlabel(columns)
    ax.set_ylabel("α" if index == "alpha" else index)
    ax.grid(False)
    finite = [v for row in grid for v in row if not math.isnan(v)]
    lo = vmin if vmin is not None else (min(finite) if finite else 0.0)
    hi = vmax if vmax is not None else (max(finite) if finite else 1.0)
    mid = (lo + hi) / 2
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if not math.isnan(v):
                ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=8,
                        color="white" if v < mid else "black")
    return im


def plot_against_temperature(ax: Any, summary: pd.DataFrame, scale: float = 100.0,
                             offset: float = 0.02) -> None:
    """Mean ± 95% interval of each order (``alpha`` column) against ``T`` (log axis), book colours.

    Orders are shifted by a small multiplicative ``offset`` along T so that error bars do not overlap.
    """
    from kdlib.plotting import order_color, order_label

    alphas = sorted(summary["alpha"].unique())
    for i, a in enumerate(alphas):
        s = summary[summary["alpha"] == a].sort_values("T")
        shift = (1 + offset) ** (i - (len(alphas) - 1) / 2)
        ci = s["ci95"].fillna(0.0) * scale
        ax.errorbar(s["T"] * shift, s["mean"] * scale, yerr=ci, marker="o", markersize=3, capsize=2,
                    color=order_color(a), label=order_label(a), linewidth=1.2 if a != 1.0 else 2.0)
    ax.set_xscale("log")
    temps = sorted(summary["T"].unique())
    ax.set_xticks(temps, [f"{t:g}" for t in temps])
    ax.minorticks_off()
    ax.set_xlabel("temperature T")


def plot_learning_curves(ax: Any, df: pd.DataFrame, group: str = "alpha", curve: str = "curve_val_accuracy",
                         scale: float = 100.0, labels: dict[Any, str] | None = None) -> None:
    """Seed-mean of the per-epoch ``curve`` for each value of ``group``, in sorted order.

    Orders (``group == "alpha"``) get the book's colours and labels; otherwise ``labels`` maps a
    group value to its legend label (default ``str(value)``).
    """
    from kdlib.plotting import order_color, order_label

    for value, g in df.groupby(group, sort=True):
        curves = [c for c in g[curve] if len(c)]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        mean = [math.fsum(c[e] for c in curves) / len(curves) * scale for e in range(n)]
        kw = ({"color": order_color(value), "label": order_label(value)} if group == "alpha"
              else {"label": (labels or {}).get(value, str(value))})
        ax.plot(range(1, n + 1), mean, marker="o", markersize=2.5, **kw)
    ax.set_xlabel("epoch")
