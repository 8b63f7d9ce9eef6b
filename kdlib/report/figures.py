"""One figure style for the whole book, and the figures drawn from experiment summaries.

Call :func:`use_book_style` at the top of a notebook (:func:`kdlib.report.book.setup_page` does);
every figure then shares fonts, sizes and colours. :data:`ORDER_COLORS` gives each Rényi order the
same colour on every page. The plotting functions draw on a matplotlib ``Axes`` from the frames of
:mod:`kdlib.report.tables` (:func:`~kdlib.lab.analysis.summarize_frame` for :func:`heatmap` and
:func:`plot_against_temperature`, :func:`~kdlib.lab.results.student_frame` for
:func:`plot_learning_curves`); accuracies are fractions, drawn in percent (``scale=100``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd

from kdlib.report.tables import fmt_alpha

#: A fixed colour for each Rényi order used in the book (KL, alpha = 1, is black).
ORDER_COLORS: dict[float, str] = {
    0.0: "#8c564b",
    0.25: "#9467bd",
    0.5: "#1f77b4",
    1.0: "#000000",
    2.0: "#ff7f0e",
    4.0: "#d62728",
    math.inf: "#2ca02c",
}


#: The widest figure, in inches: the book's text column is about 700 CSS pixels at a 1280 px window,
#: and a figure this wide is shown at about its own size there (700 px / 96 px per inch), so a font of
#: f points in the figure reads as about f points on the page. Wider figures are scaled down with
#: their text: a 9.6-inch figure shows 8-point text at 6 points.
MAX_WIDTH = 7.2

#: The smallest font in the book's figures (points): legends, tick labels and annotations.
MIN_FONT = 8.5


def use_book_style() -> None:
    """Set matplotlib's rc parameters to the book's style (deterministic, no date or backend stamps).

    Figures are at most :data:`MAX_WIDTH` inches wide and no text is smaller than :data:`MIN_FONT`
    points, so that legends, ticks and labels read at 8 points or more at the book's width.
    """
    mpl.rcParams.update(
        {
            "figure.figsize": (MAX_WIDTH, 3.6),
            "figure.dpi": 150,  # the PNGs stored in the notebooks (and shown by the book)
            "savefig.dpi": 150,
            "font.size": 9.5,
            "axes.titlesize": 9.5,
            "axes.labelsize": 9.5,
            "xtick.labelsize": MIN_FONT,
            "ytick.labelsize": MIN_FONT,
            "legend.fontsize": MIN_FONT,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "svg.hashsalt": "kdlib",
        }
    )


def order_label(alpha: float) -> str:
    """A legend label for a Rényi order: ``'α = 2'``, ``'α = 1 (KL)'``, ``'α = ∞'``."""
    if math.isinf(alpha):
        return "α = ∞"
    if alpha == 1.0:
        return "α = 1 (KL)"
    return f"α = {alpha:g}"


def order_color(alpha: float) -> str:
    """The book's colour for ``alpha`` (a neutral grey for orders without a fixed colour)."""
    return ORDER_COLORS.get(float(alpha), "#7f7f7f")


def heatmap(ax: Any, summary: pd.DataFrame, index: str = "alpha", columns: str = "T", value: str = "mean",
            scale: float = 100.0, vmin: float | None = None, vmax: float | None = None,
            cmap: str = "viridis", digits: int = 1) -> Any:
    """Draw ``summary[value]`` (times ``scale``) as an annotated grid on ``ax``; returns the image.

    Rows are the sorted values of ``index``, columns those of ``columns``; empty cells stay blank.
    """
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
                ax.text(j, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=MIN_FONT,
                        color="white" if v < mid else "black")
    return im


def plot_against_temperature(ax: Any, summary: pd.DataFrame, scale: float = 100.0,
                             offset: float = 0.02) -> None:
    """Mean ± 95% interval of each order (``alpha`` column) against ``T`` (log axis), book colours.

    Orders are shifted by a small multiplicative ``offset`` along T so that error bars do not overlap.
    """
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


def curve_mean(curves: Iterable[Sequence[float]]) -> np.ndarray:
    """The per-epoch mean of several runs' curves, over the runs whose value at that epoch is finite.

    A run that diverged has NaN (or infinite) values from some epoch on; a plain mean would make the
    whole curve NaN, and a figure would lose its line (count and state the diverged runs beside the
    figure). Curves are cut to the shortest. Returns an array of that length, NaN at an epoch where no
    run is finite.

    Raises:
        ValueError: no curves, or a curve is empty.
    """
    curves = [np.asarray(c, dtype=float) for c in curves]
    if not curves or min(len(c) for c in curves) == 0:
        raise ValueError("curves must be one or more non-empty curves")
    stack = np.stack([c[:min(len(c) for c in curves)] for c in curves])
    finite = np.isfinite(stack)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, stack, 0.0).sum(0) / finite.sum(0)


def plot_learning_curves(ax: Any, df: pd.DataFrame, group: str = "alpha", curve: str = "curve_val_accuracy",
                         scale: float = 100.0, labels: dict[Any, str] | None = None) -> None:
    """Seed-mean of the per-epoch ``curve`` for each value of ``group``, in sorted order.

    Orders (``group == "alpha"``) get the book's colours and labels; otherwise ``labels`` maps a
    group value to its legend label (default ``str(value)``). The mean is :func:`curve_mean`'s: curves
    of different lengths are cut to the shortest, and a diverged run's non-finite values are left out
    instead of blanking the whole curve.
    """
    for value, g in df.groupby(group, sort=True):
        curves = [c for c in g[curve] if len(c)]
        if not curves:
            continue
        mean = curve_mean(curves) * scale
        kw = ({"color": order_color(value), "label": order_label(value)} if group == "alpha"
              else {"label": (labels or {}).get(value, str(value))})
        ax.plot(range(1, len(mean) + 1), mean, marker="o", markersize=2.5, **kw)
    ax.set_xlabel("epoch")


def reliability_diagram(ax: Any, pooled: pd.DataFrame, label: str | None = None, color: str | None = None,
                        min_count: int = 1) -> None:
    """Accuracy against mean confidence per confidence bin, in percent, with the diagonal of a
    calibrated model; ``pooled`` from :func:`kdlib.lab.analysis.pooled_reliability`. Bins with
    fewer than ``min_count`` images are left out."""
    shown = pooled[pooled["count"] >= min_count]
    ax.plot([0, 100], [0, 100], color="0.6", linewidth=0.8, linestyle=":")
    ax.plot(100 * shown["confidence"], 100 * shown["accuracy"], marker="o", markersize=3, label=label,
            color=color)
    ax.set_xlabel("confidence (%)")
    ax.set_ylabel("accuracy (%)")
