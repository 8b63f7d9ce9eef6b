"""Records, typed: the one path from a results file's JSON object to what the lab, the report, the command
line and the notebooks read.

A record is one JSON object per finished run (:func:`kdlib.lab.store.make_record` writes it)::

    {"schema": 1, "key": "3f2a...", "kind": "student" | "teacher",
     "config": {...}, "metrics": {...}, "provenance": {...}}

:func:`record_problem` checks one in full (the store refuses a file holding a record that fails it);
:func:`parse_record` turns a checked one into a :class:`StudentRecord` or a :class:`TeacherRecord`,
whose properties name what the readers use (the arm, the learning rate, the test accuracy, the
curves, the precision), so that no reader indexes ``["config"]`` itself. The raw mappings stay
available as ``config``, ``metrics`` and ``provenance`` for what is rarely read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kdlib._validation import is_finite_number, short_repr
from kdlib.lab.config import PRECISION_DTYPE, Arm

SCHEMA_VERSION = 1  #: the ``schema`` of every record :func:`kdlib.lab.store.make_record` builds
#: The fields every record has, with their types.
RECORD_FIELDS = {"schema": int, "key": str, "kind": str, "config": dict, "metrics": dict, "provenance": dict}
KINDS = ("teacher", "student")
#: Metrics that are fractions in [0, 1] wherever a record has them.
FRACTIONS = ("test_accuracy", "final_val_accuracy", "teacher_agreement", "test_ece",
             "omitted_class_accuracy_before_shift", "omitted_class_accuracy_after_shift",
             "omitted_class_auroc")


def encode_float(x: float | None) -> float | str | None:
    """``x`` for JSON: finite floats unchanged, ``inf``/``-inf``/``nan`` as strings, ``None`` kept."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(x: float | int | str | None) -> float | None:
    """Inverse of :func:`encode_float`.

    Raises:
        ValueError: for a string other than ``"inf"``, ``"-inf"``, ``"nan"``.
    """
    if x is None:
        return None
    if isinstance(x, str):
        if x not in ("inf", "-inf", "nan"):
            raise ValueError(f"expected a number or 'inf'/'-inf'/'nan', got {x!r}")
        return float(x)
    return float(x)


def _float(value: Any) -> float:
    """A stored number as a float (:func:`decode_float`), ``None`` as NaN."""
    decoded = decode_float(value)
    return math.nan if decoded is None else decoded


def record_problem(rec: object) -> str | None:
    """What is wrong with ``rec`` as a record (``None`` when nothing is).

    A record is a JSON object with the :data:`RECORD_FIELDS` of their types, ``schema`` equal to
    :data:`SCHEMA_VERSION` (an integer, not a boolean), ``kind`` one of :data:`KINDS`, a non-empty
    ``key``, and in ``metrics`` a finite ``test_accuracy`` in [0, 1] (not a boolean); the other
    :data:`FRACTIONS`, where present and not ``null`` or ``"nan"`` (a diverged run's), are numbers in
    [0, 1] too.
    A student's config names ``alpha`` (a number, or ``"inf"``), ``T``, ``beta`` and ``seed``;
    ``dtype``, where present, is a recorded precision.
    """
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    for name, kind in RECORD_FIELDS.items():
        value = rec.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"field {name!r} missing or not a {kind.__name__}"
    if rec["schema"] != SCHEMA_VERSION:
        return f"schema must be {SCHEMA_VERSION}, got {short_repr(rec['schema'])}"
    if rec["kind"] not in KINDS:
        return f"kind must be 'teacher' or 'student', got {short_repr(rec['kind'])}"
    if not rec["key"]:
        return "key is empty"
    metrics, config = rec["metrics"], rec["config"]
    for name in FRACTIONS:
        if name not in metrics or (metrics[name] in (None, "nan") and name != "test_accuracy"):
            if name == "test_accuracy":
                return "metrics.test_accuracy missing"
            continue
        value = metrics[name]
        if not (is_finite_number(value) and 0.0 <= value <= 1.0):
            return f"metrics.{name} must be a number in [0, 1], got {short_repr(value)}"
    if "dtype" in config and config["dtype"] not in PRECISION_DTYPE.values():
        return (f"config.dtype must be one of {', '.join(PRECISION_DTYPE.values())}, "
                f"got {short_repr(config['dtype'])}")
    if rec["kind"] == "student":
        alpha = config.get("alpha")
        if not (is_finite_number(alpha) or alpha in ("inf", math.inf)):
            return f"config.alpha must be a number or 'inf', got {short_repr(alpha)}"
        for name in ("T", "beta"):
            if not is_finite_number(config.get(name)):
                return f"config.{name} must be a number, got {short_repr(config.get(name))}"
        if not (is_finite_number(config.get("seed")) and float(config["seed"]).is_integer()):
            return f"config.seed must be an integer, got {short_repr(config.get('seed'))}"
    return None


@dataclass(frozen=True)
class Record:
    """A checked record (:func:`record_problem`); :func:`parse_record` makes the right subclass.

    Attributes:
        key: the run key (:func:`kdlib.lab.store.run_key` of ``config``).
        config, metrics, provenance: the record's three mappings, as stored.
        schema: the record format's version.
    """

    key: str
    config: Mapping[str, Any]
    metrics: Mapping[str, Any]
    provenance: Mapping[str, Any]
    schema: int = SCHEMA_VERSION

    kind = "record"

    @property
    def test_accuracy(self) -> float:
        """Accuracy on the test images, a fraction."""
        return float(self.metrics["test_accuracy"])

    @property
    def test_errors(self) -> int | None:
        """Misclassified test images (``None`` where the record lacks them)."""
        value = self.metrics.get("test_errors")
        return None if value is None else int(value)

    @property
    def final_val_accuracy(self) -> float:
        """Validation accuracy after the last epoch (NaN where the record lacks it)."""
        return _float(self.metrics.get("final_val_accuracy"))

    @property
    def curves(self) -> Mapping[str, list[Any]]:
        """Per-epoch curves by name (``val_accuracy``, ``train_loss``, ...; empty where none)."""
        return self.metrics.get("curves") or {}

    @property
    def seed(self) -> int:
        """The run's seed (a teacher's initialisation, a student's initialisation and data order)."""
        return int(self.config.get("seed", 0))

    @property
    def precision(self) -> str:
        """The recorded precision, ``"float32"`` or ``"bf16-autocast"`` (records from before the option
        are float32)."""
        return str(self.config.get("dtype", "float32"))

    @property
    def experiment(self) -> str | None:
        """The experiment that ran it."""
        return self.config.get("experiment")

    @property
    def profile(self) -> str | None:
        """The profile (scale) it ran at."""
        return self.config.get("profile")

    @property
    def epochs(self) -> int | None:
        """Its training epochs."""
        value = self.config.get("epochs")
        return None if value is None else int(value)

@dataclass(frozen=True)
class TeacherRecord(Record):
    """A teacher's record."""

    kind = "teacher"

    @property
    def model(self) -> Mapping[str, Any]:
        """Its :func:`kdlib.lab.models.build_model` spec."""
        return self.config.get("model") or {}

    @property
    def data_info(self) -> Mapping[str, Any]:
        """What its data was: ``dataset``, ``n_train``, ``n_val``, ``n_test``, ..."""
        return self.config.get("data_info") or {}

    @property
    def train_size(self) -> int | None:
        """The training images it learnt from (the first this many; ``None``: all)."""
        return (self.config.get("data") or {}).get("train_size")

    @property
    def jitter(self) -> int:
        """Its input jitter in pixels (0: none)."""
        return int(self.config.get("jitter", 0))


@dataclass(frozen=True)
class StudentRecord(Record):
    """A student's record."""

    kind = "student"

    @property
    def alpha(self) -> float:
        """The Rényi order (``inf`` allowed; 1 is KL)."""
        return _float(self.config["alpha"])

    @property
    def T(self) -> float:
        """The temperature."""
        return float(self.config["T"])

    @property
    def beta(self) -> float:
        """The soft term's weight (0: trained on the labels alone)."""
        return float(self.config["beta"])

    @property
    def normalize_by_alpha(self) -> bool:
        """Whether the soft term was divided by the order."""
        return bool(self.config.get("normalize_by_alpha", False))

    @property
    def reverse(self) -> bool:
        """Whether the divergence ran from the student to the teacher."""
        return bool(self.config.get("reverse", False))

    @property
    def arm(self) -> Arm:
        """Its distillation method (order, division, direction); for a student alone, KL's fields."""
        return Arm(self.alpha, self.normalize_by_alpha, self.reverse)

    @property
    def alone(self) -> bool:
        """Whether it learnt from the labels alone (``beta = 0``)."""
        return self.beta == 0

    @property
    def arm_name(self) -> str:
        """``"alone"`` for a student alone, else :attr:`kdlib.lab.config.Arm.name` (``"α=4 /α"``)."""
        return "alone" if self.alone else self.arm.name

    @property
    def lr(self) -> float:
        """The peak learning rate (NaN where the record lacks it)."""
        return _float(self.config.get("lr"))

    @property
    def optimizer(self) -> str:
        """The optimiser's name (``"sgd"`` in records from before the option)."""
        return str(self.config.get("optimizer", "sgd"))

    @property
    def label(self) -> str | None:
        """The run's label (``"distilled"``, ``"alone"``)."""
        return self.config.get("label")

    @property
    def hidden(self) -> tuple[int, ...]:
        """The student MLP's hidden widths."""
        return tuple((self.config.get("model") or {}).get("hidden") or ())

    @property
    def teacher_key(self) -> str | None:
        """The run key of its teacher."""
        return self.config.get("teacher_key")

    @property
    def transfer_size(self) -> int | None:
        """Its transfer set: the first this many training images (``None``: all)."""
        return (self.config.get("data") or {}).get("transfer_size")

    @property
    def omit_class(self) -> int | None:
        """The class left out of its transfer set (``None``: none)."""
        return (self.config.get("data") or {}).get("omit_class")

    @property
    def diverged(self) -> bool:
        """Whether its training loss became non-finite."""
        return bool(self.metrics.get("diverged", False))


def parse_record(rec: Any, where: str = "record", *, checked: bool = False) -> StudentRecord | TeacherRecord:
    """The typed record of the JSON object ``rec``, checked by :func:`record_problem` unless ``checked``
    says a reader did so already (every record the store loads).

    Raises:
        ValueError: ``rec`` is not a record; the message starts with ``where``.
    """
    if isinstance(rec, Record):
        return rec
    problem = None if checked else record_problem(rec)
    if problem is not None:
        raise ValueError(f"{where}: not a result record ({problem})")
    cls = StudentRecord if rec["kind"] == "student" else TeacherRecord
    return cls(rec["key"], rec["config"], rec["metrics"], rec["provenance"], rec["schema"])
