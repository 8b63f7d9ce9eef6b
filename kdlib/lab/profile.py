"""What one run of an experiment is: a :class:`Profile` (an experiment's declaration at one scale), and
the configs of its teacher and student runs, whose hashes are their run keys.

A run's config is built by one rule (:func:`kdlib.lab.config.key_fields`): the fields every committed
record has are always there, any field added later only when it differs from its declared default.
So a new option changes no existing key, and needs no exception here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from kdlib.lab.config import ALWAYS_KEYED, PRECISION_DTYPE, StudentSpec, TrainConfig, key_fields


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
        commit_teacher_logits: write each teacher's logits under ``results/teachers/`` (float16) and
            train the students from exactly those values (see :mod:`kdlib.lab.run`).
        gradient_probe: record, after every epoch, each student's soft-term gradient relative to
            KL's on the first this-many transfer images (curve ``grad_ratio``;
            :func:`kdlib.lab.train.gradient_ratio_monitor`); 0: off.
        split_seed, val_fraction: seed and split of the data (see kdlib.lab.data).

    Each student names its teacher by seed (:attr:`StudentSpec.teacher`); :attr:`teacher_seeds`
    lists them.
    """

    dataset: str = field(metadata={**ALWAYS_KEYED, "data": "both"})
    teacher_model: dict[str, Any]
    teacher_train: TrainConfig
    student_train: TrainConfig
    students: tuple[StudentSpec, ...]
    transfer_size: int | None = field(default=None, metadata={**ALWAYS_KEYED, "data": "student"})
    teacher_train_size: int | None = field(default=None, metadata={**ALWAYS_KEYED, "data": "teacher",
                                                                   "as": "train_size"})
    val_size: int | None = field(default=None, metadata={**ALWAYS_KEYED, "data": "both"})
    omit_class: int | None = field(default=None, metadata={**ALWAYS_KEYED, "data": "student"})
    bias_shifts: tuple[float, ...] = ()
    max_group: int = 128
    threads: int | None = None
    precision: str = "fp32"
    commit_teacher_logits: bool = False
    gradient_probe: int = 0
    split_seed: int = field(default=0, metadata={**ALWAYS_KEYED, "data": "both"})
    val_fraction: float = field(default=0.1, metadata={**ALWAYS_KEYED, "data": "both"})

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


def data_config(p: Profile, role: str) -> dict[str, Any]:
    """The ``data`` part of a run's config for ``role`` (``"teacher"`` or ``"student"``): the fields of
    :class:`Profile` whose metadata names that role (or ``"both"``), under their ``"as"`` name, by the
    rule of :func:`~kdlib.lab.config.key_fields` (a data field added later, such as a seed that
    resamples the transfer set, enters a key only when it is not its default)."""
    out = {}
    for f in fields(p):
        if f.metadata.get("data") in (role, "both"):
            value = getattr(p, f.name)
            if f.metadata.get("key") == "always" or value != f.default:
                out[f.metadata.get("as", f.name)] = value
    return out


def teacher_config(p: Profile, precision: str = "fp32", seed: int = 0) -> dict[str, Any]:
    """The config that determines teacher ``seed`` (its key is :func:`~kdlib.lab.store.run_key` of this).

    ``precision`` is the resolved one (``fp32`` or ``bf16``), stored as ``"dtype"``.
    """
    return {"role": "teacher", "data": data_config(p, "teacher"),
            "model": p.teacher_model, "seed": seed, **key_fields(p.teacher_train),
            "dtype": PRECISION_DTYPE[precision]}


def student_config(experiment: str, profile: str, p: Profile, spec: StudentSpec, teacher_key: str,
                   precision: str = "fp32") -> dict[str, Any]:
    """The config of one student run, stored in its record (its key is ``run_key`` of this): the
    experiment, profile and data, the model, the student's :func:`~kdlib.lab.config.key_fields`, its
    training config's (:meth:`Profile.student_train_of`), its teacher's key and the precision."""
    return {"experiment": experiment, "profile": profile, "dataset": p.dataset,
            "data": data_config(p, "student"),
            "model": {"kind": "mlp", "hidden": list(spec.hidden)}, **key_fields(spec),
            **key_fields(p.student_train_of(spec)), "teacher_key": teacher_key,
            "dtype": PRECISION_DTYPE[precision]}
