"""Experiment results as the reader sees them: deterministic text and HTML tables, and the command
line's report.

What is shown comes from :mod:`kdlib.lab.results` (records as frames, provenance),
:mod:`kdlib.lab.analysis` (summaries, paired comparisons, screens) and :mod:`kdlib.stats`; this
module only formats it:

* **fixed float formats** (:func:`fmt_mean_std`, :func:`fmt_interval`, :func:`fmt_p`, ...) and the
  book's tables (:func:`summary_table`, :func:`paired_table`, :func:`pivot_means`), shown on a page by
  :func:`book_table` (no index, constant columns stated once above the table, one output per table,
  HTML with a plain-text twin);
* **provenance** as a page shows it (:func:`provenance_line`, :func:`provenance_fields`);
* **the command line's report** (:func:`report_text`).

Accuracies are fractions in [0, 1]; tables show them in percent (``scale=100``).
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kdlib.lab.analysis import summarize_frame
from kdlib.lab.experiments import expected_keys, get_experiment
from kdlib.lab.prereg import Hypothesis
from kdlib.lab.records import TeacherRecord, parse_record
from kdlib.lab.results import CELL_FIELDS, ExperimentResults, provenance, student_frame
from kdlib.lab.store import load_experiment_records


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


#: A recorded precision as a page names it.
PRECISION_WORDS = {"float32": "float32",
                   "bf16-autocast": "bfloat16 matrix products (autocast), float32 weights and loss"}


def provenance_fields(results: ExperimentResults) -> list[tuple[str, str]]:
    """The provenance of :func:`provenance_line` as short ``(name, value)`` pairs, for a block that
    reads without scrolling: results, runs, device, torch, precision, commit, date (each value well under
    80 characters unless the records name several devices or commits)."""
    p = provenance(results.records)
    day = " to ".join(sorted({p["started"][:10], p["finished"][:10]}))
    teachers = f"{p['teachers']} teacher" + ("s" if p["teachers"] != 1 else "")
    return [
        ("results", f"experiment {results.experiment}, profile {results.profile}"),
        ("runs", f"{p['students']} students and {teachers}; seeds {_seed_list(p['seeds'])}"),
        ("device", "; ".join(p["devices"])),
        ("torch", ", ".join(p["torch"])),
        ("precision", "; ".join(PRECISION_WORDS.get(x, x) for x in p["precisions"])),
        ("commit", ", ".join(p["commits"])),
        ("run", f"{day}, {p['started'][11:16]} to {p['finished'][11:16]} UTC, "
                f"{p['wall_seconds'] / 60:.0f} min of training"),
    ]


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
        """``'Every row: n = 3; verdict = no difference shown'`` ('' when no column is constant)."""
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


def metric_means(groups: Iterable[tuple[str, pd.DataFrame]], metrics: Mapping[str, tuple[str, float, int]],
                 label: str = "arm", count: bool = True) -> pd.DataFrame:
    """One row of strings per group: its ``label`` column, ``n`` (its rows, with ``count``) and, for each
    metric ``m`` of ``metrics`` (``m -> (title, scale, digits)``), the column ``title`` holding
    :func:`fmt_mean_std` of the group's ``m`` (mean ± sample std, times ``scale``)."""
    rows = []
    for name, g in groups:
        row = {label: name, **({"n": str(len(g))} if count else {})}
        for m, (title, scale, digits) in metrics.items():
            row[title] = fmt_mean_std(g[m].mean(), g[m].std(), scale, digits)
        rows.append(row)
    return pd.DataFrame(rows)


def hypothesis_arms(h: Hypothesis, caption: str, reference: bool = True) -> BookTable:
    """The arms of a hypothesis file as a page shows them (:func:`book_table`): ``arm``, ``lr``, ``T``
    and ``hypothesis`` (``"reference"`` for the reference, listed first unless ``reference`` is false)."""
    arms = ((h.reference,) if reference else ()) + h.arms
    return book_table(pd.DataFrame([{"arm": a.name, "lr": f"{a.lr:g}", "T": f"{a.T:g}",
                                     "hypothesis": a.hypothesis or "reference"} for a in arms]), caption)


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
    records = [parse_record(r, checked=True) for r in load_experiment_records(path)]
    stale = 0
    if not include_stale and path.stem in exp.profiles:
        keep = expected_keys(experiment, path.stem)
        stale = sum(r.key not in keep for r in records)
        records = [r for r in records if r.key in keep]
    teachers = [r for r in records if isinstance(r, TeacherRecord)]
    df = student_frame(records)
    lines = [f"== {experiment} / {path.stem}: {len(df)} student runs, {len(teachers)} teacher(s) =="]
    if stale:
        lines.append(f"left out: {stale} records of an earlier definition of this profile "
                     "(--all includes them)")
    if records:
        p = provenance(records)
        lines.append(f"commits: {', '.join(p['commits'])}; devices: {'; '.join(p['devices'])}; "
                     f"precision: {', '.join(p['precisions'])}; run {p['started']} .. {p['finished']}")
    for t in teachers:
        errors = "-" if t.test_errors is None else t.test_errors
        lines.append(f"teacher {t.key}: test accuracy {t.test_accuracy:.4f}, "
                     f"test errors {errors}")
    if df.empty:
        return "\n".join(lines)
    diverged = df[df["diverged"].eq(True)]  # NaN (a record without the flag) is not diverged
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
        **({"precision": list(summary["precision"])} if summary["precision"].nunique() > 1 else {}),
        "n": summary["n"].astype(int),
        **{m: [_cli_number(m, mean, std) for mean, std in zip(summary[m], summary[f"{m} std"], strict=True)]
           for m in metrics},
        f"{metrics[0]} ci95": [_cli_number(metrics[0], h, math.nan) for h in summary[f"{metrics[0]} ci95"]],
    })
    lines.append(table.to_string(index=False))
    return "\n".join(lines)
