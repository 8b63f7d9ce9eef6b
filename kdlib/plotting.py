"""One figure style for the whole book.

Call :func:`use_book_style` at the top of a notebook; every figure then shares
fonts, sizes and colours. :data:`ORDER_COLORS` gives each Rényi order the same
colour on every page.
"""

from __future__ import annotations

import math

import matplotlib as mpl

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


def use_book_style() -> None:
    """Set matplotlib's rc parameters to the book's style (deterministic, no date or backend stamps)."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "font.size": 10,
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
