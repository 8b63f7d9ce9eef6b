"""Which results, as frames: the committed records of an experiment, one row per run, and what
produced them.

* **which results** (:func:`load_results`): the best committed profile (``full`` if present, else
  ``cpu``), or the profile named by the rerun switch ``$KDLIB_PROFILE``
  (:func:`kdlib.lab.config.requested_profile`);
* **one row per student run** (:func:`student_frame`), its cell given by :data:`CELL_FIELDS`, and one
  per teacher (:func:`teacher_frame`, :func:`committed_teachers`);
* **provenance** built from the records (:func:`provenance`), never typed by hand.

The statistics of these frames are in :mod:`kdlib.lab.analysis` and :mod:`kdlib.stats`; how the book
and the command line show them, in :mod:`kdlib.report.tables`. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from kdlib.lab.config import requested_profile
from kdlib.lab.records import Record, StudentRecord, TeacherRecord, parse_record
from kdlib.lab.store import (
    decode_float,
    experiment_files,
    load_experiment_records,
    results_path,
    results_root,
)

#: Profiles shown as results, best first (``smoke`` numbers are never findings).
PROFILE_PREFERENCE = ("full", "cpu")


#: The config fields that make a cell of an experiment: runs that agree on all of them are the same
#: treatment repeated over seeds. ``model`` is written as in :func:`model_name` (``"mlp800x800"``). The
#: precision is one: the same student in float32 and in bfloat16 is two runs, not two seeds.
CELL_FIELDS = ("label", "model", "alpha", "T", "beta", "normalize_by_alpha", "reverse", "lr", "optimizer",
               "precision")


#: Metrics copied from each record into :func:`student_frame` (missing ones become NaN).
METRICS = ("test_accuracy", "test_errors", "final_val_accuracy", "teacher_agreement", "test_kl_from_teacher",
           "test_ce", "test_ece",
           "omitted_class_accuracy_before_shift", "omitted_class_accuracy_after_shift",
           "test_accuracy_before_shift", "test_accuracy_after_shift", "bias_shift", "omitted_class_auroc",
           "diverged")


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
    """The records of one results file (and its shard files), typed: ``experiment``, ``profile``,
    ``path``, ``records``."""

    experiment: str
    profile: str
    path: Path
    records: tuple[Record, ...]

    @property
    def teachers(self) -> list[TeacherRecord]:
        """Teacher records."""
        return [r for r in self.records if isinstance(r, TeacherRecord)]

    @property
    def students(self) -> list[StudentRecord]:
        """Student records."""
        return [r for r in self.records if isinstance(r, StudentRecord)]

    @property
    def precisions(self) -> list[str]:
        """The precisions the students were trained in (``"float32"``, ``"bf16-autocast"``), sorted."""
        return sorted({r.precision for r in self.students})

    def frame(self, precision: str | None = None) -> pd.DataFrame:
        """:func:`student_frame` of the student records of one precision.

        The same student trained in float32 and in bfloat16 is two runs with two keys, not two seeds:
        a table that pooled them would count one seed twice. So a file whose students mix precisions
        gives its frame only for the ``precision`` named.

        Raises:
            ValueError: the students mix precisions and ``precision`` is ``None``, or no student has
                ``precision``.
        """
        students = self.students
        if precision is None and len(self.precisions) > 1:
            raise ValueError(f"the students of {self.path} mix precisions {', '.join(self.precisions)}; a "
                             "table pools one: pass precision= (frame(precision='bf16-autocast'))")
        if precision is not None:
            students = [r for r in students if r.precision == precision]
            if not students:
                raise ValueError(f"precision must be one of {', '.join(self.precisions)} for {self.path}, "
                                 f"got {precision!r}")
        return student_frame(students)

    @property
    def transfer_size(self) -> int:
        """The transfer-set size (number of images) recorded in the students' configs.

        Raises:
            ValueError: the students disagree, or there are none (a results file mixing
                experiments of different sizes cannot be described by one number).
        """
        sizes = {r.transfer_size for r in self.students}
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
    records = tuple(parse_record(r, checked=True) for r in load_experiment_records(path))
    return ExperimentResults(experiment, profile, path, records)


def provenance(records: Iterable[Record | dict[str, Any]]) -> dict[str, Any]:
    """What produced ``records``: profiles, devices, commits, date range, run counts, training time.

    Returns:
        dict with ``profiles``, ``devices``, ``torch``, ``commits`` (short hash, ``+dirty`` when the
        tree was dirty, ``?`` when unknown), ``started`` and ``finished`` (ISO UTC, earliest and
        latest), ``students``, ``teachers``, ``seeds`` and ``wall_seconds`` (sum over distinct
        training groups, teachers included).
    """
    records = [parse_record(r) for r in records]
    provs = [r.provenance for r in records]
    commits = sorted({(p.get("git_commit") or "?")[:10] + ("+dirty" if p.get("git_dirty") else "")
                      for p in provs})
    groups = {(p.get("started"), p.get("finished"), p.get("wall_seconds")) for p in provs}
    students = [r for r in records if isinstance(r, StudentRecord)]
    return {
        "profiles": sorted({str(r.profile) for r in records}),
        "devices": sorted({str(p.get("device_name")) for p in provs}),
        "torch": sorted({str(p.get("torch")) for p in provs}),
        "commits": commits,
        "started": min((p.get("started", "") for p in provs), default=""),
        "finished": max((p.get("finished", "") for p in provs), default=""),
        "students": len(students),
        "teachers": sum(isinstance(r, TeacherRecord) for r in records),
        "seeds": sorted({r.seed for r in students}),
        "precisions": sorted({r.precision for r in records}),
        "wall_seconds": math.fsum(float(g[2] or 0.0) for g in groups),
    }


def model_name(config: dict[str, Any]) -> str:
    """The ``model`` cell field of a run config: its kind and hidden widths, e.g. ``"mlp800x800"``."""
    model = config.get("model") or {}
    if not isinstance(model, dict):
        return str(model)
    hidden = model.get("hidden") or []
    if not isinstance(hidden, list):  # a CNN: width and hidden units
        return f"{model.get('kind', '')}{model.get('width', '')}-{hidden}"
    return f"{model.get('kind', '')}{'x'.join(str(h) for h in hidden)}"


def student_frame(records: Iterable[Record | dict[str, Any]]) -> pd.DataFrame:
    """One row per student record, sorted by the :data:`CELL_FIELDS`, then the seed.

    Columns: ``key``, the :data:`CELL_FIELDS` (``model`` from :func:`model_name`; ``alpha`` a float,
    ``inf`` allowed; ``reverse`` False unless the record sets it; ``lr`` the peak learning rate,
    ``optimizer`` its name; ``precision`` ``"float32"`` or ``"bf16-autocast"``), ``arm``
    (:attr:`kdlib.lab.records.StudentRecord.arm_name`, e.g. ``"KL"``, ``"α=4 /α"``; ``"alone"`` for a
    student trained on the labels alone), ``seed, epochs, teacher_key``, the :data:`METRICS` (NaN where
    a record lacks one; ``diverged`` a bool), and ``curve_val_accuracy`` / ``curve_train_loss`` /
    ``curve_grad_ratio`` (lists, one value per epoch; the last empty unless the profile records it),
    ``reliability`` (the test reliability diagram, :func:`kdlib.lab.metrics.reliability`; ``None`` in
    records older than it). Records may be typed or JSON objects (checked by
    :func:`~kdlib.lab.records.parse_record`); teacher records are skipped.
    """
    rows = []
    for r in map(parse_record, records):
        if not isinstance(r, StudentRecord):
            continue
        m = r.metrics
        row = {"key": r.key, "label": r.label, "model": model_name(r.config), "alpha": r.alpha, "T": r.T,
               "beta": r.beta, "normalize_by_alpha": r.normalize_by_alpha, "reverse": r.reverse, "lr": r.lr,
               "optimizer": r.optimizer, "precision": r.precision, "seed": r.seed, "epochs": r.epochs,
               "teacher_key": r.teacher_key, "arm": r.arm_name}
        for name in METRICS:
            value = m.get(name)
            row[name] = math.nan if value is None else (bool(value) if name == "diverged" else float(value))
        curves = r.curves
        row["curve_val_accuracy"] = list(curves.get("val_accuracy", []))
        row["curve_train_loss"] = list(curves.get("train_loss", []))
        row["curve_grad_ratio"] = [decode_float(x) for x in curves.get("grad_ratio", [])]
        row["reliability"] = m.get("test_reliability")
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return df.sort_values([*CELL_FIELDS, "seed"], kind="mergesort").reset_index(drop=True)


def teacher_frame(records: Iterable[Record | dict[str, Any]]) -> pd.DataFrame:
    """One row per teacher record, sorted by seed: ``teacher_key``, ``teacher`` (its seed), ``model``
    (its spec), ``experiment`` and ``profile`` (of the run that trained it), ``epochs``, ``jitter``
    (pixels), ``test_accuracy``, ``test_errors``, ``final_val_accuracy``, ``wall_seconds`` and
    ``curve_val_accuracy`` / ``curve_train_loss`` (one value per epoch)."""
    rows = []
    for r in map(parse_record, records):
        if not isinstance(r, TeacherRecord):
            continue
        rows.append({"teacher_key": r.key, "teacher": r.seed, "model": dict(r.model),
                     "experiment": r.experiment, "profile": r.profile, "epochs": r.epochs, "jitter": r.jitter,
                     "test_accuracy": r.test_accuracy, "test_errors": r.test_errors,
                     "final_val_accuracy": r.final_val_accuracy,
                     "wall_seconds": float(r.provenance.get("wall_seconds", math.nan)),
                     "curve_val_accuracy": list(r.curves.get("val_accuracy", [])),
                     "curve_train_loss": list(r.curves.get("train_loss", []))})
    df = pd.DataFrame(rows)
    return df if df.empty else df.sort_values("teacher", kind="mergesort").reset_index(drop=True)


def committed_teachers(root: str | os.PathLike | None = None) -> pd.DataFrame:
    """:func:`teacher_frame` of every teacher whose logits are committed (``<root>/teachers/*.json``,
    :class:`kdlib.lab.cache.CommittedTeachers`), including teachers of earlier definitions of a
    profile that no current experiment trains."""
    root = Path(root) if root is not None else results_root()
    return teacher_frame(json.loads(p.read_text()) for p in sorted((root / "teachers").glob("*.json")))
