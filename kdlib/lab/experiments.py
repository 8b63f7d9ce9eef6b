"""The named chapter-2 experiments, each a function of a scale, and the configs of their runs.

Scales (:data:`SCALES`, one row each; see DESIGN.md): ``smoke`` runs in seconds on the embedded
8×8 digits and only checks that the code path works; ``cpu`` is a reduced but real experiment
on Fashion-MNIST for two CPU cores; ``full`` is the Hinton-scale run. A scale is a size, not a
device: the device is recorded in each record.

Experiments (``python -m kdlib list``):

``hinton``
    Hinton et al.'s MNIST experiment on Fashion-MNIST: a 2×1200 dropout teacher, a 2×800
    student trained alone and distilled with KL at several T, and a 2×30 student across T.
``hinton_budget``
    The training budget of Hinton's 2×800 student: alone and distilled, trained for several
    numbers of epochs, so the main runs use one where both have plateaued on validation data.
``hinton_data_poor``
    Hinton's 2×800 student learning from about 3% of the transfer set (soft targets should
    matter most there).
``renyi_grid``
    Rényi orders × temperatures × beta × seeds, with and without dividing the soft term by alpha.
``omitted_class``
    One class (Fashion-MNIST's class 3, "Dress", echoing Hinton's digit 3) is left out of the
    transfer set; accuracy on it before and after a bias shift chosen on validation data.
``renyi_confirm``
    A confirmatory test on fresh seeds of the grid's strongest lead (order 4 against KL at T = 2).
``renyi_scale_control``
    Its control: KL with the soft term's gradient scaled by 4 (a 4x learning rate at beta = 1).
``renyi_explore``, ``renyi_explore_poor``
    The tuned comparison's exploration: every arm (KL, reverse KL, Rényi orders with and without the
    division by alpha) tuned over temperature and learning rate on validation data, for the 2×800
    student on all images and for the data-poor student.
``hinton_mnist``, ``omitted_class_mnist``
    The same on MNIST (digit 3 omitted), for machines that have MNIST (``cpu``/``full``).

The ``full`` scale trains three convolutional teachers (:data:`CNN_TEACHER`; seeds 0, 1, 2)
with input jitter on all 54,000 training images and commits their logits
(``results/teachers/``); student seed ``s`` learns from teacher ``s mod 3``. The ``cpu`` scale
shares one teacher (same config, hence same cache key): Hinton's 2×1200 dropout MLP trained on
the first 20,000 images of the training split. The students learn from a *transfer set* of the
first 5,000 training images (a prefix of the fixed permutation).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from kdlib.lab.config import ARMS, PRECISION_DTYPE, PROFILES, Arm, StudentSpec, TrainConfig
from kdlib.lab.prereg import (
    HYPOTHESES,
    Hypothesis,
    adam_poor_hypotheses_from,
    hypotheses_dir,
    hypotheses_from,
    load_hypothesis,
    poor_hypotheses_from,
)
from kdlib.lab.results import load_results
from kdlib.lab.store import run_key

INF = math.inf


class UnknownExperimentError(ValueError):
    """No experiment (or no profile of it) by that name."""


# ----------------------------------------------------------------------------- the table of scales

@dataclass(frozen=True)
class Scale:
    """The sizes of one scale: every number an experiment needs that depends on the scale.

    Attributes:
        name: ``smoke``, ``cpu`` or ``full``.
        dataset: the dataset every experiment of this scale uses (``None``: the experiment's own).
        teacher_model: :func:`kdlib.lab.models.build_model` spec of the teacher.
        teacher_train: how the teacher is trained.
        teacher_train_size: the teacher learns from the first this-many training images (``None``: all).
        student_train: how every student is trained.
        transfer_size: the students' transfer set, the first this-many training images (``None``: all).
        val_size: validation images (learning curves, bias-shift choice; ``None``: the split's).
        hidden: student widths by role: ``big`` and ``small`` (Hinton's two students), ``grid``
            (the Rényi grid and the confirmation) and ``omit`` (the omitted-class experiment).
        seeds: student seeds by role: ``hinton``, ``data_poor`` (default: ``hinton``'s), ``grid``
            (the grid and the omitted class) and ``confirm`` (fresh seeds of the confirmation).
        temperatures: by role: ``big``, ``small``, ``grid``, ``omit``.
        orders: Rényi orders by role: ``grid``, ``omit``.
        teachers: the seeds of the independently trained teachers; student seed ``s`` of the
            Hinton experiments learns from teacher ``teachers[s % len(teachers)]``.
        budgets: the student epochs of the budget study (:func:`hinton_budget`).
        data_poor_size: the transfer set of :func:`hinton_data_poor` (about 3% of ``transfer_size``).
        data_poor_epochs: the epochs of its students.
        commit_teacher_logits: write each teacher's logits under ``results/teachers/`` (float16)
            and train the students from exactly those values (see :mod:`kdlib.lab.run`).
        lrs: the peak learning rates every arm of :func:`renyi_explore` is tuned over.
        tune_max_group: the most students of :func:`renyi_explore` trained in one stack (smaller
            stacks lose less work to an interruption; the results do not depend on it).
        threads: torch CPU threads (``None``: :func:`kdlib.lab.config.default_threads`). The smoke
            scale uses 1: its tensors are too small to gain from threads.
        precision: ``fp32``, ``bf16`` or ``auto`` (see :mod:`kdlib.lab.config`); the committed
            ``cpu`` results are float32.
    """

    name: str
    dataset: str | None
    teacher_model: dict[str, Any]
    teacher_train: TrainConfig
    teacher_train_size: int | None
    student_train: TrainConfig
    transfer_size: int | None
    val_size: int | None
    hidden: dict[str, tuple[int, ...]]
    seeds: dict[str, tuple[int, ...]]
    temperatures: dict[str, tuple[float, ...]]
    orders: dict[str, tuple[float, ...]]
    threads: int | None = None
    precision: str = "fp32"
    teachers: tuple[int, ...] = (0,)
    budgets: tuple[int, ...] = ()
    data_poor_size: int = 0
    data_poor_epochs: int = 1
    commit_teacher_logits: bool = False
    lrs: tuple[float, ...] = ()
    tune_max_group: int = 128


HINTON_TEACHER = {"kind": "mlp", "hidden": [1200, 1200], "dropout": 0.5, "input_dropout": 0.2}
#: The full scale's teacher. Hinton's MLP teacher (dropout, input jitter; the first definition of the
#: full scale) reached 88.05% on Fashion-MNIST, below what a 2×800 student trained alone reaches on
#: the same images, so it could not pass the experiment's gate; a small CNN replaced it.
CNN_TEACHER = {"kind": "cnn", "width": 32, "hidden": 256, "dropout": 0.3}
ORDERS = (0.25, 0.5, 1.0, 2.0, 4.0, INF)
TEMPERATURES = {"big": (2.0, 4.0, 8.0, 20.0), "small": (1.0, 2.0, 2.5, 3.0, 4.0, 8.0, 16.0),
                "grid": (1.0, 2.0, 4.0, 8.0, 16.0), "omit": (2.0, 4.0, 8.0), "tune": (1.0, 2.0, 4.0, 8.0)}
#: The learning rates of the tuned Rényi comparison: 1/4, 1 and 4 times the KL default of 0.05.
TUNE_LRS = (0.0125, 0.05, 0.2)

SCALES: dict[str, Scale] = {s.name: s for s in [
    #      teacher: 64-256-256-10 on digits, 30 epochs (a second of CPU); students 12 epochs.
    Scale("smoke", dataset="digits",
          teacher_model={"kind": "mlp", "hidden": [256, 256], "dropout": 0.2},
          teacher_train=TrainConfig(epochs=30, batch_size=64, lr=0.05), teacher_train_size=None,
          student_train=TrainConfig(epochs=12, batch_size=64, lr=0.05), transfer_size=None, val_size=None,
          hidden={"big": (64, 64), "small": (16, 16), "grid": (32, 32), "omit": (32, 32)},
          seeds={"hinton": (0,), "grid": (0,), "confirm": (3, 4), "explore": (0,)},
          temperatures={"big": (2.0, 4.0), "small": (2.0, 4.0), "grid": (2.0, 8.0), "omit": (4.0,),
                        "tune": (2.0,)},
          orders={"grid": (0.5, 1.0, INF), "omit": (0.5, 1.0, INF)}, threads=1,
          budgets=(4, 12), data_poor_size=200, data_poor_epochs=20, lrs=(0.05, 0.2)),
    #      teacher: 6 epochs on 20,000 images (7.4 min measured on two shared cores); students
    #      8 epochs on a 5,000-image transfer set.
    Scale("cpu", dataset=None, teacher_model=HINTON_TEACHER,
          teacher_train=TrainConfig(epochs=6, batch_size=128, lr=0.05), teacher_train_size=20_000,
          student_train=TrainConfig(epochs=8, batch_size=128, lr=0.05), transfer_size=5_000, val_size=2_000,
          hidden={"big": (800, 800), "small": (30, 30), "grid": (100, 100), "omit": (300, 300)},
          seeds={"hinton": (0, 1, 2), "grid": (0, 1, 2), "confirm": tuple(range(3, 13)),
                 "explore": (0, 1, 2)},
          temperatures=TEMPERATURES, orders={"grid": ORDERS, "omit": ORDERS},
          budgets=(8, 32), data_poor_size=150, data_poor_epochs=100, lrs=TUNE_LRS),
    #      Hinton scale: three CNN teachers, each 20 epochs with input jitter on all 54,000 training
    #      images; students 30 epochs on all of them (the budget study checks that this is enough).
    Scale("full", dataset=None, teacher_model=CNN_TEACHER,
          teacher_train=TrainConfig(epochs=20, batch_size=128, lr=0.05, jitter=2), teacher_train_size=None,
          student_train=TrainConfig(epochs=30, batch_size=128, lr=0.05), transfer_size=None, val_size=None,
          hidden={"big": (800, 800), "small": (30, 30), "grid": (800, 800), "omit": (800, 800)},
          seeds={"hinton": tuple(range(15)), "data_poor": tuple(range(6)), "grid": (0, 1, 2),
                 "confirm": tuple(range(3, 13)), "explore": (0, 1, 2)},
          temperatures={**TEMPERATURES, "big": (1.0, 2.0, 4.0, 8.0, 20.0),
                        "small": (1.0, 2.0, 2.5, 3.0, 4.0, 8.0, 20.0)},
          orders={"grid": ORDERS, "omit": ORDERS}, precision="auto", teachers=(0, 1, 2),
          budgets=(10, 20, 30, 40), data_poor_size=1_620, data_poor_epochs=100, commit_teacher_logits=True,
          lrs=TUNE_LRS, tune_max_group=12),
]}
assert tuple(SCALES) == PROFILES, "config.PROFILES names the scales, smallest first"


@dataclass(frozen=True)
class Profile:
    """Everything one run of an experiment needs: a scale applied to an experiment.

    Attributes:
        dataset: a :data:`kdlib.lab.data.DATASETS` name.
        teacher_model: :func:`kdlib.lab.models.build_model` spec of the teacher.
        teacher_train: how the teacher is trained (on the first ``teacher_train_size``
            training images, all when ``None``).
        student_train: how every student is trained.
        students: the student runs (each with its own alpha, T, beta, seed, width).
        transfer_size: students' transfer set = first ``transfer_size`` training images
            (all when ``None``), without class ``omit_class`` when that is set.
        val_size: validation images used for learning curves and the bias-shift choice.
        omit_class: class left out of the transfer set (``None``: none).
        bias_shifts: candidate bias shifts for the omitted class (ascending, >= 0).
        max_group: most students trained together in one stacked model.
        threads: torch CPU threads (``None``: :func:`kdlib.lab.config.default_threads`).
        precision: ``fp32``, ``bf16`` or ``auto``.
        commit_teacher_logits: see :class:`Scale`.
        gradient_probe: record, after every epoch, each student's soft-term gradient relative to
            KL's on the first this-many transfer images (curve ``grad_ratio``;
            :func:`kdlib.lab.train.gradient_ratio_monitor`); 0: off.
        split_seed, val_fraction: seed and split of the data (see kdlib.lab.data).

    Each student names its teacher by seed (:attr:`StudentSpec.teacher`); :attr:`teacher_seeds`
    lists them.
    """

    dataset: str
    teacher_model: dict[str, Any]
    teacher_train: TrainConfig
    student_train: TrainConfig
    students: tuple[StudentSpec, ...]
    transfer_size: int | None = None
    teacher_train_size: int | None = None
    val_size: int | None = None
    omit_class: int | None = None
    bias_shifts: tuple[float, ...] = ()
    max_group: int = 128
    threads: int | None = None
    precision: str = "fp32"
    commit_teacher_logits: bool = False
    gradient_probe: int = 0
    split_seed: int = 0
    val_fraction: float = 0.1

    @property
    def teacher_seeds(self) -> tuple[int, ...]:
        """The seeds of the teachers the students learn from, in order of first appearance."""
        return tuple(dict.fromkeys(s.teacher for s in self.students))

    def student_train_of(self, spec: StudentSpec) -> TrainConfig:
        """How ``spec`` is trained: :attr:`student_train` with the student's own epochs, learning rate
        and optimiser where it has them."""
        own = {k: v for k, v in (("epochs", spec.epochs), ("lr", spec.lr), ("optimizer", spec.optimizer))
               if v is not None}
        return replace(self.student_train, **own) if own else self.student_train


def profile_of(scale: Scale, dataset: str, students: Sequence[StudentSpec], **kw: Any) -> Profile:
    """The :class:`Profile` of ``students`` at ``scale`` (the scale's dataset wins when it has one)."""
    return Profile(scale.dataset or dataset, scale.teacher_model, scale.teacher_train, scale.student_train,
                   tuple(students), transfer_size=scale.transfer_size,
                   teacher_train_size=scale.teacher_train_size, val_size=scale.val_size,
                   threads=scale.threads, precision=scale.precision,
                   commit_teacher_logits=scale.commit_teacher_logits, **kw)


@dataclass(frozen=True)
class Experiment:
    """A named experiment: a description, a builder ``scale -> Profile`` and the metrics its report shows."""

    name: str
    description: str
    build: Callable[[Scale], Profile]
    report_metrics: tuple[str, ...] = ("test_accuracy", "test_errors")
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def profiles(self) -> tuple[str, ...]:
        """The names of the scales this experiment runs at."""
        return PROFILES

    def profile(self, name: str) -> Profile:
        """The profile at scale ``name``; raises :class:`UnknownExperimentError` if there is none."""
        if name not in SCALES:
            raise UnknownExperimentError(
                f"profile must be one of {', '.join(PROFILES)} for experiment {self.name!r}, got {name!r}")
        return self.build(SCALES[name])


# ----------------------------------------------------------------------------- the experiments

def alone(hidden: tuple[int, ...], seeds: Sequence[int], teacher: int = 0, epochs: int | None = None
          ) -> list[StudentSpec]:
    """Students trained on the hard labels only (beta = 0; alpha and T are unused)."""
    return [StudentSpec(alpha=1.0, T=1.0, beta=0.0, seed=s, hidden=hidden, label="alone", teacher=teacher,
                        epochs=epochs) for s in seeds]


def teacher_of(scale: Scale, seed: int) -> int:
    """The teacher of student seed ``seed``: the scale's teachers in turn (seed mod their number)."""
    return scale.teachers[seed % len(scale.teachers)]


def hinton(scale: Scale, dataset: str = "fashion_mnist") -> Profile:
    """Hinton-style reproduction: teacher, 2×800 student alone and distilled, 2×30 student across T.

    The teacher is the scale's: Hinton's 2×1200 dropout MLP at the ``smoke`` and ``cpu`` scales, a
    small CNN at the ``full`` scale (see :data:`CNN_TEACHER`).

    Per seed: a ``big`` student alone and distilled with KL (alpha = 1, beta = 0.9) at the
    ``big`` temperatures (20 is the one Hinton et al. report for 2×800), a ``small`` student alone
    and at the ``small`` temperatures (they found 2.5-4 best for 30 units). Seed ``s`` learns
    from teacher :func:`teacher_of` (full: 15 seeds, 5 for each of 3 teachers).
    """
    students: list[StudentSpec] = []
    for s in scale.seeds["hinton"]:
        t = teacher_of(scale, s)
        for role in ("big", "small"):
            hidden = scale.hidden[role]
            students += alone(hidden, [s], teacher=t)
            students += [StudentSpec(alpha=1.0, T=T, beta=0.9, seed=s, hidden=hidden, teacher=t)
                         for T in scale.temperatures[role]]
    return profile_of(scale, dataset, students)


BUDGET_T = 4.0


def hinton_budget(scale: Scale) -> Profile:
    """The training budget of the Hinton students: the ``big`` student alone and distilled with KL
    at T = :data:`BUDGET_T`, seed 0 (teacher 0), trained for each of the scale's ``budgets``
    epochs (each a full cosine schedule, so each budget is a run of its own).

    The rule, fixed before the study ran: the main runs use the smallest budget whose validation
    accuracy is within 0.2 points (about one seed's standard deviation) of the largest budget's,
    for both the student alone and the distilled one.
    """
    hidden, t = scale.hidden["big"], teacher_of(scale, 0)
    students: list[StudentSpec] = []
    for e in scale.budgets:
        students += alone(hidden, [0], teacher=t, epochs=e)
        students.append(StudentSpec(alpha=1.0, T=BUDGET_T, beta=0.9, seed=0, hidden=hidden, teacher=t,
                                    epochs=e))
    return profile_of(scale, "fashion_mnist", students)


def hinton_data_poor(scale: Scale) -> Profile:
    """Hinton et al.'s data-poor setting: the ``big`` student, alone and with KL at the ``big``
    temperatures, learning from only the first ``data_poor_size`` images of the transfer set
    (about 3%) for ``data_poor_epochs`` epochs; the same teachers as :func:`hinton`, the seeds of
    the ``data_poor`` role (full: 0-5, two per teacher, six runs per cell, a choice made for time:
    its per-epoch validation on 6,000 images costs as much as its training).
    """
    students: list[StudentSpec] = []
    for s in scale.seeds.get("data_poor", scale.seeds["hinton"]):
        t, hidden = teacher_of(scale, s), scale.hidden["big"]
        students += alone(hidden, [s], teacher=t)
        students += [StudentSpec(alpha=1.0, T=T, beta=0.9, seed=s, hidden=hidden, teacher=t)
                     for T in scale.temperatures["big"]]
    return _data_poor(scale, profile_of(scale, "fashion_mnist", students))


def _data_poor(scale: Scale, p: Profile) -> Profile:
    """``p`` with the data-poor transfer set: its first ``scale.data_poor_size`` images, for
    ``scale.data_poor_epochs`` epochs."""
    return replace(p, transfer_size=scale.data_poor_size,
                   student_train=replace(p.student_train, epochs=scale.data_poor_epochs))


GRID_BETAS = (0.9, 1.0)


def grid_students(alphas: Sequence[float], temperatures: Sequence[float], betas: Sequence[float],
                  seeds: Sequence[int], hidden: tuple[int, ...]) -> list[StudentSpec]:
    """The Rényi grid: every (alpha, T, beta, seed), plus the alpha-normalised variant where it differs.

    Dividing by alpha changes nothing for alpha = 1, and for alpha = inf the high-temperature
    gradient is not proportional to alpha, so the normalised copies are made only for finite
    alpha != 1. One student alone per seed is the baseline.
    """
    students = []
    for s in seeds:
        students += alone(hidden, [s])
        for beta in betas:
            for alpha in alphas:
                for T in temperatures:
                    students.append(StudentSpec(alpha=alpha, T=T, beta=beta, seed=s, hidden=hidden))
                    if alpha != 1.0 and math.isfinite(alpha):
                        students.append(StudentSpec(alpha=alpha, T=T, beta=beta, seed=s, hidden=hidden,
                                                    normalize_by_alpha=True))
    return students


def renyi_grid(scale: Scale) -> Profile:
    """Rényi orders × T × beta {0.9, 1} × seeds, and one student alone per seed.

    cpu: 101 students per seed (60 cells, 40 alpha-normalised copies, one alone), 3 seeds of
    2×100 on the 5,000-image transfer set (2×100 keeps 303 students affordable and leaves a clear
    teacher-student gap). full: 2×800 on all images.
    """
    students = grid_students(scale.orders["grid"], scale.temperatures["grid"], GRID_BETAS,
                             scale.seeds["grid"], scale.hidden["grid"])
    return profile_of(scale, "fashion_mnist", students)


BIAS_SHIFTS = tuple(0.25 * i for i in range(1, 81))  # 0.25 ... 20


def omitted_class(scale: Scale, dataset: str = "fashion_mnist", omit: int = 3) -> Profile:
    """Class ``omit`` left out of the transfer set; KL against Rényi orders, before/after a bias shift.

    Students (beta = 0.9, Hinton's mix of hard and soft targets): the ``omit`` orders × temperatures
    plus one student alone, per seed. The shift of the omitted class's output bias is chosen per
    student from 0.25, 0.5, ..., 20 to maximise validation accuracy (Hinton et al. chose theirs
    on the test set).
    """
    students: list[StudentSpec] = []
    hidden = scale.hidden["omit"]
    for s in scale.seeds["grid"]:
        students += alone(hidden, [s])
        students += [StudentSpec(alpha=a, T=T, beta=0.9, seed=s, hidden=hidden)
                     for a in scale.orders["omit"] for T in scale.temperatures["omit"]]
    return profile_of(scale, dataset, students, omit_class=omit, bias_shifts=BIAS_SHIFTS)


CONFIRM_ALPHA, CONFIRM_T = 4.0, 2.0


def renyi_confirm(scale: Scale) -> Profile:
    """A confirmatory test, on fresh seeds, of the Rényi grid's strongest lead.

    In the cpu grid the largest paired gains over KL were those of the order 4 (soft term not
    divided by alpha) at low temperature, none significant after Holm's correction over the
    grid. This experiment states that hypothesis in advance and tests it on seeds the grid did
    not use: per seed, KL and alpha = 4 at T = 2, for beta 0.9 and 1, with the grid's student
    width and training (same teacher).
    """
    students = [StudentSpec(alpha=a, T=CONFIRM_T, beta=b, seed=s, hidden=scale.hidden["grid"])
                for s in scale.seeds["confirm"] for b in GRID_BETAS for a in (1.0, CONFIRM_ALPHA)]
    return profile_of(scale, "fashion_mnist", students)


def renyi_scale_control(scale: Scale) -> Profile:
    """The control for :func:`renyi_confirm`: KL with its gradient made CONFIRM_ALPHA times larger.

    With beta = 1 (soft targets only), no weight decay and no clipping, multiplying the loss by 4
    is exactly multiplying SGD's learning rate by 4, so these students are KL at T = 2, beta = 1,
    trained with ``lr`` 4 times the grid's, on renyi_confirm's seeds (same initial weights and
    minibatch order).
    """
    base = renyi_confirm(scale)
    students = [s for s in base.students if s.alpha == 1.0 and s.beta == 1.0]
    train = replace(base.student_train, lr=base.student_train.lr * CONFIRM_ALPHA)
    return replace(base, students=tuple(students), student_train=train)




def tuned_students(scale: Scale, hidden: tuple[int, ...], arms: Sequence[Arm] = ARMS) -> list[StudentSpec]:
    """Every arm at every temperature of the ``tune`` role and every learning rate of ``scale.lrs``,
    and one student alone per learning rate, for each seed of the ``explore`` role (seed ``s``
    learns from teacher :func:`teacher_of`). ``beta`` is :data:`TUNE_BETA`."""
    students: list[StudentSpec] = []
    for s in scale.seeds["explore"]:
        t = teacher_of(scale, s)
        for lr in scale.lrs:
            students += [replace(a, lr=lr) for a in alone(hidden, [s], teacher=t)]
            students += [arm.student(T, lr, s, hidden, t) for arm in arms for T in scale.temperatures["tune"]]
    return students


def _tuned_profile(scale: Scale, students: Sequence[StudentSpec], **kw: Any) -> Profile:
    p = profile_of(scale, "fashion_mnist", students, max_group=scale.tune_max_group,
                   gradient_probe=GRADIENT_PROBE, **kw)
    return replace(p, student_train=replace(p.student_train, warmup_epochs=TUNE_WARMUP_EPOCHS))


TUNE_WARMUP_EPOCHS = 1.0
GRADIENT_PROBE = 1024  #: training images on which the tuned students' gradient ratio is recorded


def renyi_explore(scale: Scale) -> Profile:
    """The exploration of the tuned Rényi comparison, on the ``grid`` student (full: 2×800 on all
    54,000 images for 30 epochs, the budget of the Hinton study), from the scale's teachers.

    Every arm of :data:`ARMS` gets the same tuning budget: the temperatures 1, 2, 4, 8 times the
    learning rates 0.0125, 0.05, 0.2 (1/4, 1 and 4 times the KL default), each with a linear warmup
    over the first epoch (for every arm, and for the students alone, which are tuned over the same
    learning rates); ``beta = 0.9``. Full: one seed per teacher (seeds 0, 1, 2 learn from teachers
    0, 1, 2), 135 students per seed, 405 in all.

    The analysis, fixed before the runs (the page applies it; none of it looks at the test set):
    for each arm, the (learning rate, T) with the highest mean final validation accuracy over the
    teachers is its tuned configuration (a diverged run counts with the validation accuracy it
    ended with); each arm at its tuned configuration is compared with KL at its own, paired by
    teacher, on validation accuracy, with the Benjamini-Hochberg correction over the arms. The arms
    whose validation accuracy is highest go to a confirmation on freshly trained teachers whose
    hypotheses are committed before it runs.
    """
    return _tuned_profile(scale, tuned_students(scale, scale.hidden["grid"]))


def renyi_explore_poor(scale: Scale) -> Profile:
    """:func:`renyi_explore` for the data-poor student of :func:`hinton_data_poor`: the ``big``
    student on the first ``data_poor_size`` images (full: 1,620, 3%) for ``data_poor_epochs``
    epochs, where soft targets matter most. Same arms, grid and analysis; the arms that lead go to
    :func:`renyi_confirm_poor`, whose hypothesis file
    :func:`kdlib.lab.prereg.poor_hypotheses_from` derives from the complete exploration."""
    return _data_poor(scale, _tuned_profile(scale, tuned_students(scale, scale.hidden["big"])))


def _confirmation(scale: Scale, h: Hypothesis, role: str) -> list[StudentSpec]:
    """:meth:`~kdlib.lab.prereg.Hypothesis.students` of ``h``, of the ``role`` width at ``scale``."""
    return h.students(scale.hidden[role], scale.name == "smoke")


def renyi_confirm_tuned(scale: Scale) -> Profile:
    """The confirmation of the tuned comparison: the students of ``hypotheses/renyi_confirm_tuned.json``
    (:func:`~kdlib.lab.prereg.load_hypothesis`, :meth:`~kdlib.lab.prereg.Hypothesis.students`),
    trained as :func:`renyi_explore` trains
    its students (warmup, budget, stacks), from the freshly trained teachers the file names.

    The file is written from the complete exploration by
    :func:`kdlib.lab.prereg.confirmation_hypothesis` (its rule: arms, hypotheses, runs), with
    ``sd``, the standard deviation of one paired difference, taken as the larger of two estimates
    (the larger sd needs more runs): the pooled standard deviation of the paired validation
    differences from KL over the screened arms that did not diverge, and that of the paired test
    differences between KL at T = 1 and T = 2 in the full-scale Hinton runs (15 pairs).
    The confirmatory analysis: for each arm, the paired t-test (``greater``) or TOST (``equivalent``)
    of its test accuracy against KL's, paired by seed, Holm's correction over the arms at ``level``;
    test NLL, ECE, agreement with the teacher and KL(teacher || student) are reported beside it
    without tests."""
    h = load_hypothesis("renyi_confirm_tuned")
    return _tuned_profile(scale, _confirmation(scale, h, "grid"))


def renyi_confirm_poor(scale: Scale) -> Profile:
    """The confirmation of the data-poor exploration (:func:`renyi_explore_poor`): the students of
    ``hypotheses/renyi_confirm_poor.json`` (written from the complete exploration by
    :func:`kdlib.lab.prereg.poor_hypotheses_from`, the rule of :func:`renyi_confirm_tuned` applied
    unchanged) as ``big`` students trained as :func:`renyi_explore_poor` trains them (the first
    ``data_poor_size`` images, ``data_poor_epochs`` epochs, warmup), from the freshly trained
    teachers the file names. Same confirmatory analysis as :func:`renyi_confirm_tuned`."""
    h = load_hypothesis("renyi_confirm_poor")
    return _data_poor(scale, _tuned_profile(scale, _confirmation(scale, h, "big")))


#: Adam's peak learning rates in :func:`renyi_adam`: 1/4, 1 and 4 times the usual 1e-3, the span
#: the SGD arms are tuned over.
ADAM_LRS = (2.5e-4, 1e-3, 4e-3)
#: Adam's peak learning rates in :func:`renyi_adam_poor`: :data:`ADAM_LRS` and two above them,
#: added after the first three put every arm of the data-poor student at the largest (that
#: student takes about 1,300 steps in all, against about 42,000 on all images).
ADAM_LRS_POOR = (*ADAM_LRS, 8e-3, 1.6e-2)


def renyi_adam(scale: Scale) -> Profile:
    """The scale-invariant check of the confirmation's arms: the reference and every arm of
    ``hypotheses/renyi_confirm_tuned.json``, each at its temperature, trained with Adam at each of
    :data:`ADAM_LRS` on the exploration's teachers and seeds (warmup and budget as in
    :func:`renyi_explore`).

    Adam divides every gradient by a running estimate of its size, so a constant factor on the
    soft term (the order's step-size effect near the fit, chapter 1) changes nothing: what an arm
    keeps of its advantage under Adam is the part that is not step size. Analysis: each arm's
    learning rate chosen on mean validation accuracy over the teachers, as in the exploration.
    """
    h = load_hypothesis("renyi_confirm_tuned")
    return _tuned_profile(scale, _adam_students(scale, h, scale.hidden["grid"]))


def _adam_students(scale: Scale, h: Hypothesis, hidden: tuple[int, ...],
                   lrs: tuple[float, ...] = ADAM_LRS) -> list[StudentSpec]:
    """The reference and every arm of ``h`` at its temperature, with Adam at each of ``lrs``, for
    every seed of the ``explore`` role (seed ``s``: teacher :func:`teacher_of`)."""
    return [a.arm.student(a.T, lr, s, hidden, teacher_of(scale, s), "adam")
            for s in scale.seeds["explore"] for lr in lrs for a in (h.reference, *h.arms)]


def renyi_adam_poor(scale: Scale) -> Profile:
    """:func:`renyi_adam` for the data-poor student: the reference and every arm of
    ``hypotheses/renyi_confirm_poor.json`` with Adam at each of :data:`ADAM_LRS_POOR`, as ``big``
    students on the data-poor transfer set (:func:`renyi_explore_poor`'s teachers and seeds, budget
    and warmup). Added after the confirmation (not pre-registered): it asks whether the confirmed
    gain of the order ∞ survives an optimiser that a constant factor on the loss cannot help. Same
    analysis as :func:`renyi_adam`."""
    h = load_hypothesis("renyi_confirm_poor")
    students = _adam_students(scale, h, scale.hidden["big"], ADAM_LRS_POOR)
    return _data_poor(scale, _tuned_profile(scale, students))


def renyi_confirm_adam_poor(scale: Scale) -> Profile:
    """The confirmation of :func:`renyi_adam_poor`: the students of
    ``hypotheses/renyi_confirm_adam_poor.json`` (KL and the arms at the Adam learning rate the check
    chose for each, all trained with Adam), trained as :func:`renyi_confirm_poor` trains its students
    (the data-poor student and transfer set, budget and warmup), from the teachers the file names.
    The file is written from the complete check by :func:`kdlib.lab.prereg.adam_poor_hypotheses_from`,
    the confirmation rule of :func:`renyi_confirm_poor` applied unchanged, and committed before the
    runs. Same confirmatory analysis as :func:`renyi_confirm_tuned`."""
    h = load_hypothesis("renyi_confirm_adam_poor")
    return _data_poor(scale, _tuned_profile(scale, _confirmation(scale, h, "big")))


def omitted_class_tuned(scale: Scale, omit: int = 3) -> Profile:
    """The omitted-class experiment with tuned arms: the students of
    ``hypotheses/omitted_class_tuned.json`` (the arms with the learning rate and T the exploration
    chose for each), of the ``omit`` width, learning from a transfer set without class ``omit``
    (Fashion-MNIST's Dress), trained as :func:`renyi_explore` trains its students.

    Every record holds the omitted class's accuracy before and after the shift of its output bias
    (chosen per student on validation data from 0.25, 0.5, ..., 20) and the threshold-free AUROC of
    its logit against the other classes' test images (:func:`kdlib.lab.metrics.class_auroc`).
    """
    h = load_hypothesis("omitted_class_tuned")
    return _tuned_profile(scale, _confirmation(scale, h, "omit"), omit_class=omit,
                          bias_shifts=BIAS_SHIFTS)


def omitted_class_kl_temperature(scale: Scale, omit: int = 3) -> Profile:
    """A control of :func:`omitted_class_tuned`, added after its hypothesis file (not pre-registered):
    KL at its own tuned learning rate at every other temperature an arm of the file uses (full: 2
    and 4), with the file's seeds, teachers and student, so that an arm whose tuned temperature is
    not KL's can be compared with KL at the same temperature. The records are those of
    :func:`omitted_class_tuned` (the omitted class before and after the bias shift, its AUROC); the
    two experiments share teachers and seeds, so their students pair by seed.
    """
    h = load_hypothesis("omitted_class_tuned")
    ref = h.reference
    temperatures = sorted({a.T for a in h.arms} - {ref.T})
    students = [ref.arm.student(T, ref.lr, s, scale.hidden["omit"], t)
                for s, t in h.runs(scale.name == "smoke") for T in temperatures]
    return _tuned_profile(scale, students, omit_class=omit, bias_shifts=BIAS_SHIFTS)


OMITTED_METRICS = ("test_accuracy", "omitted_class_accuracy_before_shift",
                   "omitted_class_accuracy_after_shift", "bias_shift")

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in [
    Experiment("hinton", "Hinton-style reproduction on Fashion-MNIST: 2x1200 dropout teacher, 2x800 "
               "student alone vs distilled with KL, 2x30 student across T", hinton),
    Experiment("hinton_budget", "the Hinton students' training budget: 2x800 alone and KL at T = 4 "
               "trained for several numbers of epochs (validation accuracy against budget)", hinton_budget,
               ("final_val_accuracy", "test_accuracy")),
    Experiment("hinton_data_poor", "the Hinton experiment's 2x800 student, alone and distilled with KL, "
               "learning from about 3% of the transfer set", hinton_data_poor),
    Experiment("renyi_grid", "Renyi orders x temperatures x beta x seeds, with and without dividing the "
               "soft term by alpha", renyi_grid, ("test_accuracy",)),
    Experiment("omitted_class", "Fashion-MNIST class 3 (Dress) left out of the transfer set: accuracy on "
               "it before/after a bias shift, KL vs Renyi orders", omitted_class, OMITTED_METRICS),
    Experiment("renyi_confirm", "confirmatory test on fresh seeds: Renyi order 4 against KL at T = 2, "
               "beta 0.9 and 1", renyi_confirm, ("test_accuracy",)),
    Experiment("renyi_scale_control", "control for renyi_confirm: KL at T = 2, beta = 1 with a 4x "
               "learning rate (= the soft term times 4)", renyi_scale_control, ("test_accuracy",)),
    Experiment("renyi_explore", "tuned Renyi comparison, exploration: KL, reverse KL and Renyi orders "
               "(with and without the division by alpha), each tuned over T x learning rate on validation "
               "data",
               renyi_explore, ("final_val_accuracy", "test_accuracy")),
    Experiment("renyi_explore_poor", "renyi_explore for the data-poor student (3% of the images)",
               renyi_explore_poor, ("final_val_accuracy", "test_accuracy")),
    Experiment("hinton_mnist", "the hinton experiment on MNIST (needs the MNIST files)",
               lambda scale: hinton(scale, dataset="mnist")),
    Experiment("omitted_class_mnist", "the omitted_class experiment on MNIST, digit 3 left out "
               "(needs the MNIST files)", lambda scale: omitted_class(scale, dataset="mnist"),
               OMITTED_METRICS),
]}


#: Experiments that a committed hypothesis file defines, by the file they read. Each joins
#: :data:`EXPERIMENTS` once its file exists in :func:`hypotheses_dir`, so that no run, listing or
#: test can build it before its hypotheses are written.
PLANNED: dict[str, tuple[str, Experiment]] = {e.name: (f, e) for f, e in [
    ("renyi_confirm_tuned", Experiment(
        "renyi_confirm_tuned", "confirmation of the tuned Renyi comparison on fresh teachers, as its "
        "committed hypothesis file says", renyi_confirm_tuned, ("final_val_accuracy", "test_accuracy"))),
    ("renyi_confirm_tuned", Experiment(
        "renyi_adam", "the confirmation's arms trained with Adam (scale-invariant check), on the "
        "exploration's teachers", renyi_adam, ("final_val_accuracy", "test_accuracy"))),
    ("renyi_confirm_poor", Experiment(
        "renyi_confirm_poor", "the confirmation of renyi_explore_poor on fresh teachers: the students of "
        "hypotheses/renyi_confirm_poor.json", renyi_confirm_poor, ("final_val_accuracy", "test_accuracy"))),
    ("renyi_confirm_poor", Experiment(
        "renyi_adam_poor", "renyi_adam for the data-poor student: the arms of its confirmation "
        "trained with Adam, on the exploration's teachers", renyi_adam_poor,
        ("final_val_accuracy", "test_accuracy"))),
    ("renyi_confirm_adam_poor", Experiment(
        "renyi_confirm_adam_poor", "the confirmation of renyi_adam_poor on fresh teachers, with Adam: the "
        "students of hypotheses/renyi_confirm_adam_poor.json", renyi_confirm_adam_poor,
        ("final_val_accuracy", "test_accuracy"))),
    ("omitted_class_tuned", Experiment(
        "omitted_class_tuned", "Dress left out of the transfer set, tuned arms, as its committed "
        "hypothesis file says", omitted_class_tuned, (*OMITTED_METRICS, "omitted_class_auroc"))),
    ("omitted_class_tuned", Experiment(
        "omitted_class_kl_T", "control for omitted_class_tuned (not pre-registered): KL at the arms' "
        "other temperatures, same seeds and teachers", omitted_class_kl_temperature,
        (*OMITTED_METRICS, "omitted_class_auroc"))),
]}
EXPERIMENTS.update({name: e for name, (f, e) in PLANNED.items() if (hypotheses_dir() / f"{f}.json").exists()})


def get_experiment(name: str) -> Experiment:
    """The experiment ``name``; raises :class:`UnknownExperimentError` listing the known names (and,
    for a planned one, the hypothesis file it still needs)."""
    if name in PLANNED and name not in EXPERIMENTS:
        raise UnknownExperimentError(f"experiment {name!r} runs only after "
                                     f"{HYPOTHESES}/{PLANNED[name][0]}.json is written and committed "
                                     "(see kdlib.lab.prereg.load_hypothesis)")
    if name not in EXPERIMENTS:
        raise UnknownExperimentError(f"experiment must be one of {', '.join(EXPERIMENTS)}, got {name!r}")
    return EXPERIMENTS[name]


# ----------------------------------------------------------------------------- run configs and keys

def _data_config(p: Profile) -> dict[str, Any]:
    return {"dataset": p.dataset, "split_seed": p.split_seed, "val_fraction": p.val_fraction,
            "val_size": p.val_size}


def teacher_config(p: Profile, precision: str = "fp32", seed: int = 0) -> dict[str, Any]:
    """The config that determines teacher ``seed`` (its key is :func:`~kdlib.lab.store.run_key` of this).

    ``precision`` is the resolved one (``fp32`` or ``bf16``), stored as ``"dtype"``.
    """
    return {"role": "teacher", "data": {**_data_config(p), "train_size": p.teacher_train_size},
            "model": p.teacher_model, "seed": seed, **p.teacher_train.to_dict(),
            "dtype": PRECISION_DTYPE[precision]}


def student_config(experiment: str, profile: str, p: Profile, spec: StudentSpec, teacher_key: str,
                   precision: str = "fp32") -> dict[str, Any]:
    """The config of one student run, stored in its record (its key is ``run_key`` of this).

    ``reverse`` appears only when set, so the keys of runs from before it existed stay valid.
    """
    return {"experiment": experiment, "profile": profile, "dataset": p.dataset,
            "data": {**_data_config(p), "transfer_size": p.transfer_size, "omit_class": p.omit_class},
            "model": {"kind": "mlp", "hidden": list(spec.hidden)}, "alpha": spec.alpha, "T": spec.T,
            "beta": spec.beta, "seed": spec.seed, "normalize_by_alpha": spec.normalize_by_alpha,
            "label": spec.label, **p.student_train_of(spec).to_dict(), "teacher_key": teacher_key,
            "dtype": PRECISION_DTYPE[precision], **({"reverse": True} if spec.reverse else {})}


def expected_keys(name: str, profile: str, p: Profile | None = None,
                  precisions: tuple[str, ...] = tuple(PRECISION_DTYPE)) -> set[str]:
    """Keys of all runs (the teacher and every student) of the *current* definition of a profile.

    A results file can hold records of an earlier definition (other epochs, sizes, ...); they
    have other keys, and reports use only the records whose keys are here. Runs of every
    precision in ``precisions`` count (the precision is part of the key).
    """
    p = p if p is not None else get_experiment(name).profile(profile)
    keys = set()
    for precision in precisions:
        tkeys = {t: run_key(teacher_config(p, precision, t)) for t in p.teacher_seeds}
        keys |= set(tkeys.values())
        keys |= {run_key(student_config(name, profile, p, s, tkeys[s.teacher], precision))
                 for s in p.students}
    return keys


# ----------------------------------------------------------------------------- derived hypothesis files

#: How the confirmatory hypothesis files are derived: exploration -> (the Hinton-style experiment
#: whose runs size the confirmation, the rule). Each rule was committed before its exploration ended,
#: except the Adam confirmation's, which is the data-poor rule applied unchanged to a check that had
#: already run (see :func:`adam_poor_hypotheses_from`).
DERIVATIONS: dict[str, tuple[str, Callable[[pd.DataFrame, pd.DataFrame], dict[str, Hypothesis]]]] = {
    "renyi_explore": ("hinton", hypotheses_from),
    "renyi_explore_poor": ("hinton_data_poor", poor_hypotheses_from),
    "renyi_adam_poor": ("hinton_data_poor", adam_poor_hypotheses_from),
}


#: The hypothesis files derived from the explorations, by the experiment that reads each.
DERIVED_HYPOTHESES = ("renyi_confirm_tuned", "omitted_class_tuned", "renyi_confirm_poor",
                      "renyi_confirm_adam_poor")


def derive_hypotheses(root: str | os.PathLike | None = None) -> dict[str, Hypothesis]:
    """The hypothesis files of :data:`DERIVED_HYPOTHESES`, derived from the committed full-scale
    explorations and Hinton-style runs by the rules of :data:`DERIVATIONS` (:func:`tuned_screen`,
    :func:`confirmation_sd`, :func:`confirmation_hypothesis`, :func:`omitted_hypothesis`).
    ``python -m kdlib hypotheses --write`` writes them; the pages check the committed files against
    this function.

    Raises:
        ValueError: an exploration is not complete (a run of its current definition is missing).
    """
    files: dict[str, Hypothesis] = {}
    for explore, (hinton, rule) in DERIVATIONS.items():
        res = load_results(explore, "full", root)
        keys = expected_keys(explore, "full")
        total = len(get_experiment(explore).profile("full").students)
        done = sum(r["key"] in keys for r in res.students)
        if done < total:
            raise ValueError(f"the exploration {explore}/full is not complete: {done} of {total} runs")
        files.update(rule(res.frame(), load_results(hinton, "full", root).frame()))
    return files
