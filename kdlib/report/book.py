"""Helpers for the book's notebooks, so that no notebook repeats another's code.

Every page:
    :func:`setup_page` (the figure style, pandas' display width, no tqdm notebook warning).

Chapter 1 (derivations):
    :func:`show` displays ``lhs = rhs`` typeset; :func:`assert_identity` and :func:`assert_differs`
    turn a symbolic identity (or a deliberately false one, to show that a check can fail) into an
    assertion that fails with the residual.

Chapter 2 (experiments):
    :func:`smoke_run` runs an experiment at the ``smoke`` scale into a temporary folder and checks
    that every run was recorded; :func:`results_page` reruns the experiment if ``$KDLIB_PROFILE``
    asks for it, loads the committed results and prints the page header (:func:`page_header`:
    results and provenance, data, teacher, as short ``name: value`` lines);
    :func:`confirmation_results` does so for a confirmation and checks it against its hypothesis file.

Both:
    :func:`glue_many` glues many numbers for the prose (``{glue:text}`key``` in MyST) in one call,
    :func:`glue_figure` glues a figure and closes it.

This module needs the ``book`` extra (myst-nb, IPython, sympy); ``python -m kdlib report`` does not
import it.
"""

from __future__ import annotations

import html
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import sympy as sp
from IPython.display import Math, display
from myst_nb import glue
from sympy.printing.latex import LatexPrinter
from tqdm import TqdmWarning

from kdlib.lab.data import CLASS_NAMES
from kdlib.lab.experiments import expected_keys, get_experiment
from kdlib.lab.prereg import Hypothesis, check_hypothesis_preceded, hypotheses_dir
from kdlib.lab.results import PROFILE_PREFERENCE, ExperimentResults, load_results
from kdlib.lab.run import rerun_if_requested, run_experiment
from kdlib.report.figures import use_book_style
from kdlib.report.tables import provenance_fields

#: The longest line of the page header (:func:`page_header`): an output box at the book's width shows
#: about 75 characters of code font without scrolling.
WIDTH = 75


def setup_page() -> None:
    """Prepare a notebook: the book's figure style, tables up to 120 characters wide, and no
    "IProgress not found" warning from tqdm (progress bars are off under ``TQDM_DISABLE=1`` anyway)."""
    use_book_style()
    pd.set_option("display.width", 120)
    warnings.filterwarnings("ignore", category=TqdmWarning)


# ----------------------------------------------------------------------------- chapter 1

#: Characters of LaTeX source that fit on one line of a displayed equation at the book's column width
#: (about 700 px at a 1280 px window): longer results are broken over several lines.
LINE_CHARS = 150


def _add_terms(expr: sp.Expr) -> list[str]:
    """The terms of a sum as sympy's LaTeX printer writes them, each with its sign (`` + t``/`` - t``)."""

    printer = LatexPrinter()
    pieces = []
    for index, term in enumerate(printer._as_ordered_terms(expr)):
        sign = "" if index == 0 else " + "
        if index and term.could_extract_minus_sign():
            sign, term = " - ", -term
        tex = printer._print(term)
        if printer._needs_add_brackets(term):
            tex = rf"\left({tex}\right)"
        pieces.append(sign + tex)
    return pieces


def _lines(expr: sp.Expr) -> list[str]:
    """``expr`` as LaTeX lines of at most about :data:`LINE_CHARS` characters (a sum breaks between terms)."""
    tex = sp.latex(expr)
    if len(tex) <= LINE_CHARS or not isinstance(expr, sp.Add):
        return [tex]
    lines = [""]
    for piece in _add_terms(expr):
        if lines[-1] and len(lines[-1]) + len(piece) > LINE_CHARS:
            lines.append("")
        lines[-1] += piece
    return lines


def latex_chain(lhs: str, *rhs: sp.Expr) -> str:
    """LaTeX for ``lhs = rhs[0] = rhs[1] ...``, on one line when it is short and otherwise as an
    ``aligned`` block: each ``= rhs`` on its own line, a long sum broken between its terms, so that no
    result is wider than the book's column (the book's browser test checks this)."""
    parts = [_lines(r) for r in rhs]
    one_line = lhs + "".join(" = " + " ".join(p) for p in parts)
    if len(one_line) <= LINE_CHARS:
        return one_line
    rows = []
    for n, lines in enumerate(parts):
        for m, line in enumerate(lines):
            if m == 0:
                rows.append((lhs if n == 0 else "") + " &= " + line)
            else:
                rows.append(r"&\phantom{{}={}}" + line)
    return r"\begin{aligned}" + r" \\ ".join(rows) + r"\end{aligned}"


def show(lhs: str, rhs: sp.Expr, *more: sp.Expr) -> None:
    """Display ``lhs = rhs`` (``= more[0] = ...``): ``lhs`` is LaTeX, the others sympy expressions
    typeset by :func:`sympy.latex` (deterministic for a pinned sympy, so nbval can compare it) and
    broken over lines by :func:`latex_chain` when they would be wider than the book's column."""
    display(Math(latex_chain(lhs, rhs, *more)))


def expand_logs(expr: sp.Expr) -> sp.Expr:
    """``sympy.expand_log(expr, force=True)``: ``log(a b) = log a + log b`` and ``log(a^k) = k log a``
    without asking sympy to prove positivity (every probability in chapter 1 is positive). A
    ``prepare`` for :func:`assert_identity`."""
    return sp.expand_log(expr, force=True)


def _residual(lhs: Any, rhs: Any, prepare: Callable[[sp.Expr], sp.Expr] | None,
              simplify: Callable[[sp.Expr], sp.Expr]) -> Any:
    difference = sp.sympify(lhs) if rhs is None else sp.sympify(lhs) - sp.sympify(rhs)

    def reduce(e: sp.Expr) -> sp.Expr:
        return simplify(prepare(e) if prepare is not None else e)

    if isinstance(difference, sp.MatrixBase):
        return difference.applyfunc(reduce)
    return reduce(difference)


def _is_zero(residual: Any) -> bool:
    if isinstance(residual, sp.MatrixBase):
        return all(e == 0 for e in residual)
    return residual == 0


def assert_identity(lhs: Any, rhs: Any = None, *, prepare: Callable[[sp.Expr], sp.Expr] | None = None,
                    simplify: Callable[[sp.Expr], sp.Expr] = sp.simplify, what: str = "") -> None:
    """Assert the symbolic identity ``lhs = rhs``: ``simplify(prepare(lhs - rhs)) == 0``.

    The assertion of every derivation in chapter 1, in place of ``assert sp.simplify(lhs - rhs) == 0``.

    Args:
        lhs, rhs: sympy expressions, numbers or matrices (compared entry by entry); without
            ``rhs``, ``lhs`` is the difference itself (an expression or a matrix that must vanish).
        prepare: applied to the difference before ``simplify``: :func:`expand_logs`, a ``Sum``
            expansion (``lambda e: kdlib.symbolic.expand_sums(e, index=k)``), ...
        simplify: the normal form; :func:`sympy.simplify` by default, :func:`sympy.expand` for
            polynomials (much faster).
        what: named in the error message (the equation, say).

    Raises:
        AssertionError: the difference does not reduce to 0; the message shows what it reduced to.
    """
    residual = _residual(lhs, rhs, prepare, simplify)
    if not _is_zero(residual):
        raise AssertionError(f"{what + ': ' if what else ''}lhs - rhs reduces to {residual}, not 0")


def assert_differs(lhs: Any, rhs: Any = None, *, prepare: Callable[[sp.Expr], sp.Expr] | None = None,
                   simplify: Callable[[sp.Expr], sp.Expr] = sp.simplify, what: str = "") -> None:
    """Assert that ``lhs = rhs`` is *not* an identity (the reduction of :func:`assert_identity` leaves a
    non-zero residual): the control that shows a check can fail.

    Raises:
        AssertionError: the difference reduces to 0.
    """
    if _is_zero(_residual(lhs, rhs, prepare, simplify)):
        raise AssertionError(f"{what + ': ' if what else ''}lhs - rhs reduces to 0: it is an identity")


# ----------------------------------------------------------------------------- glue

def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def glue_many(prefix_or_mapping: str | Mapping[str, Any], numbers: Mapping[str, Any] | None = None) -> None:
    """Glue numbers for the book's prose (myst-nb ``glue``, not displayed), as plain Python numbers.

    ``glue_many({"hinton-teacher-errors": 1337, ...})`` glues each key as given;
    ``glue_many("hinton", {"teacher-errors": 1337, ...})`` glues ``hinton-teacher-errors``, ...
    numpy and torch scalars are converted with ``.item()`` first, so the text a page shows does not
    depend on which library computed a number.

    Nothing is returned (a notebook cell ending in the call shows no output).

    Raises:
        TypeError: a prefix is given without a mapping of numbers, or a mapping with a second mapping.
    """
    if isinstance(prefix_or_mapping, str):
        if numbers is None:
            raise TypeError("glue_many(prefix, numbers): numbers (a mapping) is missing")
        glued = {f"{prefix_or_mapping}-{k}": _plain(v) for k, v in numbers.items()}
    else:
        if numbers is not None:
            raise TypeError("glue_many(mapping) takes no second mapping; merge them, or pass a prefix first")
        glued = {str(k): _plain(v) for k, v in prefix_or_mapping.items()}
    for key, value in glued.items():
        glue(key, value, display=False)


def glue_figure(key: str, fig: Any) -> None:
    """Glue ``fig`` under ``key`` for a ``{glue:figure}`` directive, then close it (so it is shown once)."""
    glue(key, fig, display=False)
    plt.close(fig)


# ----------------------------------------------------------------------------- chapter 2

def smoke_run(experiment: str) -> ExperimentResults:
    """Run ``experiment`` at the ``smoke`` scale on the CPU, into a temporary folder, and check it.

    Seconds on two cores (scikit-learn's 8×8 digits); it proves the code path, its numbers are not
    findings. Checked here: the records are the teacher and every student of the profile, once each
    (keys from :func:`kdlib.lab.experiments.expected_keys`), and every student has one validation
    accuracy per epoch. The folder is deleted; the records stay in the result.

    Raises:
        AssertionError: a run is missing, duplicated or unexpected, or a learning curve is incomplete.
    """
    with tempfile.TemporaryDirectory() as tmp:
        run_experiment(experiment, "smoke", device="cpu", out=tmp, cache_dir=tmp, log=lambda msg: None)
        res = load_results(experiment, "smoke", tmp)
    keys = [r.key for r in res.records]
    assert len(keys) == len(set(keys)) and set(keys) <= expected_keys(experiment, "smoke"), \
        "every record is a run of the smoke profile, recorded once"
    profile = get_experiment(experiment).profile("smoke")
    assert len(res.teachers) == len(profile.teacher_seeds), "every teacher is recorded"
    assert len(res.students) == len(profile.students), "every student is recorded"
    for r in res.students:
        assert len(r.curves["val_accuracy"]) == r.epochs, "one value per epoch"
    return res


class Fields:
    """``(name, value)`` pairs shown as a block: an HTML definition list (``kd-fields``, styled by the
    book's CSS) with ``name: value`` lines as its plain-text twin (``repr``). One output in a notebook;
    deterministic, so nbval compares it."""

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self.fields = list(fields)

    def __repr__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.fields)

    def _repr_html_(self) -> str:
        rows = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in self.fields)
        return f'<dl class="kd-fields">{rows}</dl>'


def describe_model(spec: dict[str, Any]) -> str:
    """A model spec in words: ``MLP, hidden layers 1200-1200`` or ``CNN, conv 32-64, hidden 256``."""
    if spec.get("kind") == "cnn":
        width = spec.get("width", 32)
        return f"CNN, conv {width}-{2 * width}, hidden {spec.get('hidden', 256)}"
    return f"MLP, hidden layers {'-'.join(map(str, spec['hidden']))}"


def page_header(res: ExperimentResults, details: bool = True) -> Fields:
    """The header of a chapter-2 page as short ``name: value`` lines (:class:`Fields`): the provenance
    (:func:`~kdlib.report.tables.provenance_fields`: results, runs, device, commit, date) and, with
    ``details``, the data (dataset, split sizes), the students' transfer set (with the class it
    leaves out, if any) and the teacher
    (architecture, training images, test accuracy and errors). Each line is at most about
    :data:`WIDTH` characters, so the block reads without scrolling."""
    fields = provenance_fields(res)
    if details:
        teachers = sorted(res.teachers, key=lambda r: r.seed)
        info, first = teachers[0].data_info, teachers[0]
        size = res.transfer_size
        jitter = first.jitter
        accs = [100 * t.test_accuracy for t in teachers]
        errs = [t.test_errors for t in teachers]
        omitted = sorted({r.omit_class for r in res.students} - {None})
        transfer = (f"the first {size} training images" if size is not None
                    else f"all {info['n_train']} training images")
        if omitted:
            names = CLASS_NAMES.get(info["dataset"])
            transfer += " less class " + ", ".join(f"{c} ({names[c]})" if names else str(c) for c in omitted)
        fields += [
            ("data", f"{info['dataset']}: {info['n_train']} training, {info['n_val']} validation, "
                     f"{info['n_test']} test images"),
            ("transfer set", transfer + " (students)"),
        ]
        images = (f"the first {first.train_size}" if first.train_size else "all") + " training images"
        if len(teachers) == 1 and not jitter:
            fields.append(("teacher", f"{describe_model(first.model)}, on {images}"))
        else:
            fields += [("teachers" if len(teachers) > 1 else "teacher",
                        (f"{len(teachers)} trained independently: " if len(teachers) > 1 else "")
                        + describe_model(first.model)),
                       ("teacher data", images + (f", input jitter ±{jitter} px" if jitter else ""))]
        fields += [
            ("teacher, test" if len(teachers) == 1 else "teachers, test",
             f"accuracy {accs[0]:.2f}% ({errs[0]} errors)" if len(teachers) == 1 else
             f"accuracy {', '.join(f'{a:.2f}' for a in accs)}% ({', '.join(map(str, errs))} errors)"),
        ]
    return Fields(fields)


def results_page(experiment: str, details: bool = True) -> ExperimentResults:
    """The results a chapter-2 page shows, with its header displayed.

    If ``$KDLIB_PROFILE`` is set, the experiment is first run (or resumed) at that profile into
    ``results/`` (:func:`kdlib.lab.run.rerun_if_requested`, device ``$KDLIB_DEVICE``); then the best
    committed profile is loaded (:func:`~kdlib.lab.results.load_results`) and :func:`page_header`
    displayed (one output).

    Raises:
        AssertionError: the results are not of a profile shown as findings (``full``, ``cpu``), or
            every student diverged.
        FileNotFoundError: no results file (the message says how to produce one).
    """
    rerun_if_requested(experiment)
    res = load_results(experiment)
    assert res.profile in PROFILE_PREFERENCE, "smoke numbers are never shown as results"
    diverged = [r.diverged for r in res.students]
    assert not diverged or not all(diverged), f"every student of {experiment} diverged"
    display(page_header(res, details))
    return res


def confirmation_results(h: Hypothesis, *, page: bool = True,
                         teachers_too: bool = False) -> ExperimentResults:
    """The full-scale results of the confirmation that the hypothesis file ``h`` defines, checked
    against the file, with their header displayed.

    With ``page`` the experiment is the page's own (:func:`results_page`: the rerun switch, the header
    with data and teachers); otherwise a short header (:func:`page_header` without details) for a
    confirmation shown on another experiment's page. Then one line says that the file, as committed
    now, preceded every run (:func:`~kdlib.lab.prereg.check_hypothesis_preceded`) of the students, or of
    the teachers too with ``teachers_too`` (teachers trained for the confirmation after the file).

    Raises:
        AssertionError: the results are not full-scale, or a run the file names has not finished.
        ValueError: a run started from a commit that did not hold the file as it is now.
    """
    if page:
        res = results_page(h.experiment)
    else:
        res = load_results(h.experiment, "full")
        display(page_header(res, details=False))
    assert res.profile == "full", "the confirmation is shown at full scale"
    print(check_hypothesis_preceded(res.records if teachers_too else res.students,
                                    hypotheses_dir() / f"{h.experiment}.json"))
    assert len(res.students) == len(h.seeds) * (2 + len(h.arms)), "every run of the file has finished"
    return res
