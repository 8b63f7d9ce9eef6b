"""What a run is: how a network is trained (:class:`TrainConfig`), one student (:class:`StudentSpec`),
the device, the numerical precision and the CPU threads.

Everything here is a plain value that goes into a run's config, and so into its run key
(:func:`kdlib.lab.store.run_key`); nothing here trains or stores anything.

Precision (:func:`resolve_precision`): ``"fp32"`` trains in float32 throughout; ``"bf16"``
runs the forward and backward matrix products under ``torch.autocast`` in bfloat16 with float32
master weights, optimiser state and loss (the loss is evaluated on float32 logits); ``"auto"``
picks ``bf16`` where the hardware multiplies bfloat16 natively (CPUs with AVX512-BF16 or AMX,
CUDA GPUs of compute capability 8.0 and later) and ``fp32`` elsewhere. The resolved value is
stored in a run's config as ``"dtype"``: ``"float32"`` (the value records had before this option
existed, so their keys stay valid) or ``"bf16-autocast"``.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from kdlib._validation import is_finite_number, short_repr

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
#: The most CPU threads a run may ask for (more than the largest machines have cores; a count beyond
#: it is a typo, and ``torch.set_num_threads`` cannot take an arbitrarily large one).
MAX_THREADS = 1024
#: ``"dtype"`` recorded in a run's config for each resolved precision.
PRECISION_DTYPE = {"fp32": "float32", "bf16": "bf16-autocast"}
#: The scales every experiment runs at (:data:`kdlib.lab.experiments.SCALES`), smallest first.
PROFILES = ("smoke", "cpu", "full")
#: The rerun switch: a notebook reruns its experiment at this profile before showing it.
ENV_PROFILE = "KDLIB_PROFILE"


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. ``cuda``) is not available on this machine."""


def check_device(device: str | torch.device) -> torch.device | None:
    """Parse ``device`` without looking at this machine's hardware: ``None`` for ``"auto"``, else a
    ``cpu`` or ``cuda[:N]`` device (for jobs that run elsewhere: :func:`kdlib.lab.cluster.submit`).

    Raises:
        ValueError: a device string torch does not know, or a device type other than ``cpu`` and ``cuda``.
    """
    if isinstance(device, str) and device == "auto":
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({e})") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; ``"cpu"``/``"cuda"``/``"cuda:N"`` checked.

    Raises:
        DeviceUnavailableError: ``cuda`` requested but no usable GPU (or index out of range).
        ValueError: a device string torch does not know (:func:`check_device`).
    """
    dev = check_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} requested but only "
                                         f"{torch.cuda.device_count()} GPU(s) are present")
    return dev


def cpu_flags() -> set[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (AVX512-BF16/AMX, or CUDA >= sm80)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"fp32"`` or ``"bf16"`` for ``precision`` in :data:`PRECISIONS` on ``device``.

    Raises:
        ValueError: ``precision`` is not one of ``auto``, ``fp32``, ``bf16``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def check_threads(threads: object, name: str = "threads") -> int:
    """``threads`` as an ``int`` in ``[1, MAX_THREADS]``: what ``torch.set_num_threads`` may be given.

    Call it before anything is done with the count (a huge one makes ``torch.set_num_threads``
    raise an ``OverflowError``, or start that many threads). ``name`` is the parameter named in the error.

    Raises:
        ValueError: ``threads`` is not an integer (``bool`` included) from 1 to :data:`MAX_THREADS`.
    """
    if (isinstance(threads, bool) or not isinstance(threads, numbers.Integral)
            or not 1 <= threads <= MAX_THREADS):
        raise ValueError(f"{name} must be an integer >= 1 and <= {MAX_THREADS}, got {threads!r}")
    return int(threads)


def default_threads() -> int:
    """The CPU threads a run uses unless told otherwise: ``$KDLIB_THREADS``, else the usable cores.

    Raises:
        ValueError: ``$KDLIB_THREADS`` is set but not an integer from 1 to :data:`MAX_THREADS`.
    """
    env = os.environ.get("KDLIB_THREADS", "").strip()
    if env:
        return check_threads(int(env) if env.isdecimal() else env, "KDLIB_THREADS")
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


#: Field metadata: the field enters every run key, even at its default (the fields every committed
#: record has). A field without it enters a key only when it differs from its declared default, so a
#: field added later changes no existing key (:func:`key_fields`).
ALWAYS_KEYED = {"key": "always"}
#: Field metadata: the field reaches a run key through another part of the config (a student's
#: ``hidden`` through ``model``, its ``teacher`` through ``teacher_key``, its ``epochs``, ``lr`` and
#: ``optimizer`` through its training config), so :func:`key_fields` leaves it out.
KEYED_ELSEWHERE = {"key": "elsewhere"}


def key_fields(obj: Any) -> dict[str, Any]:
    """The fields of a config dataclass as they enter a run's config and key: the one rule, so that no
    new field needs an exception. A field marked :data:`ALWAYS_KEYED` is always there, one marked
    :data:`KEYED_ELSEWHERE` never, and any other only when its value differs from its declared default.

    Raises:
        TypeError: ``obj`` is not a dataclass instance.
    """
    out = {}
    for f in fields(obj):
        how = f.metadata.get("key")
        value = getattr(obj, f.name)
        if how == "elsewhere":
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        if how == "always" or default is MISSING or value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def requested_profile() -> str | None:
    """The profile named by ``$KDLIB_PROFILE`` (``None`` when unset or empty): the rerun switch.

    Raises:
        ValueError: the variable names no profile of :data:`PROFILES`.
    """
    value = os.environ.get(ENV_PROFILE, "").strip()
    if not value:
        return None
    if value not in PROFILES:
        raise ValueError(f"{ENV_PROFILE} must be one of {', '.join(PROFILES)} (or unset), got {value!r}")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained (shared by all students of a stacked group).

    Attributes:
        epochs: passes over the training tensors, ``>= 1``.
        batch_size: examples per step, ``>= 1``.
        lr: peak learning rate, ``> 0``.
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adam"``.
        momentum: SGD momentum in ``[0, 1)``.
        weight_decay: L2 coefficient ``>= 0`` (coupled, as in ``torch.optim.SGD``).
        schedule: ``"cosine"`` (lr decays to 0 over all steps) or ``"constant"``.
        warmup_steps: the lr rises linearly over the first ``warmup_steps`` steps (``>= 0``).
        warmup_epochs: the same in epochs (``>= 0``; the steps are rounded up), for configs shared
            by transfer sets of different sizes; at most one of the two is set.
        clip_norm: clip each network's gradient to this L2 norm (``> 0``; ``None``: no
            clipping). For stacked students the norm is taken per student, exactly as
            ``torch.nn.utils.clip_grad_norm_`` would on that student alone.
        jitter: input jitter, ``>= 0`` pixels: each training image of each step is translated
            by a random whole number of pixels in ``[-jitter, jitter]`` in each direction
            (:func:`kdlib.lab.data.random_translate`; Hinton et al.'s teacher). 0: none.
        val_every: the validation accuracy is measured after every ``val_every``-th epoch and after
            the last (``>= 1``; the other epochs' entries of the curve are NaN). Where the validation
            set is much larger than the transfer set (the data-poor students: 6,000 images against
            1,620) measuring it every epoch costs as much as the training; the final value, which
            tuning selects on, is always measured.

    Raises:
        ValueError: a field outside the range given above.
    """

    epochs: int = field(metadata=ALWAYS_KEYED)
    batch_size: int = field(default=128, metadata=ALWAYS_KEYED)
    lr: float = field(default=0.05, metadata=ALWAYS_KEYED)
    optimizer: str = field(default="sgd", metadata=ALWAYS_KEYED)
    momentum: float = field(default=0.9, metadata=ALWAYS_KEYED)
    weight_decay: float = field(default=0.0, metadata=ALWAYS_KEYED)
    schedule: str = field(default="cosine", metadata=ALWAYS_KEYED)
    warmup_steps: int = 0
    clip_norm: float | None = None
    jitter: int = 0
    warmup_epochs: float = 0.0
    val_every: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not (is_finite_number(self.lr) and self.lr > 0) or not 0 <= self.momentum < 1 or not (
                is_finite_number(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError("need lr > 0, momentum in [0, 1), weight_decay >= 0, each a finite number; got "
                             + ", ".join(map(short_repr, (self.lr, self.momentum, self.weight_decay))))
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} and schedule one of {SCHEDULES}; "
                             f"got {self.optimizer!r}, {self.schedule!r}")
        if self.warmup_steps < 0 or (self.clip_norm is not None and not self.clip_norm > 0):
            raise ValueError(f"warmup_steps must be >= 0 and clip_norm > 0 or None; got "
                             f"{self.warmup_steps}, {self.clip_norm}")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0) or (
                self.warmup_epochs and self.warmup_steps):
            raise ValueError(f"warmup_epochs must be a finite number >= 0, and at most one of warmup_steps "
                             f"and warmup_epochs may be set; got {self.warmup_epochs!r} and "
                             f"{self.warmup_steps!r}")
        if not isinstance(self.jitter, int) or self.jitter < 0:
            raise ValueError(f"jitter must be an integer >= 0 (pixels), got {self.jitter!r}")
        if not isinstance(self.val_every, int) or isinstance(self.val_every, bool) or self.val_every < 1:
            raise ValueError(f"val_every must be an integer >= 1 (epochs), got {self.val_every!r}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as they enter a run's config and key (:func:`key_fields`)."""
        return key_fields(self)

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of step ``step`` (0-based) of ``total_steps``: the schedule times the warmup
        factor ``(step + 1) / W`` for ``step < W``, ``W`` the warmup steps (``warmup_epochs`` times
        the steps of an epoch, ``total_steps / epochs``, rounded up)."""
        lr = self.lr
        if self.schedule == "cosine":
            lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * step / total_steps))
        warmup = self.warmup_steps or math.ceil(self.warmup_epochs * total_steps / self.epochs)
        if step < warmup:
            lr *= (step + 1) / warmup
        return lr


@dataclass(frozen=True)
class StudentSpec:
    r"""One student run of an experiment.

    Attributes:
        alpha: Rényi order in ``(0, inf]`` (``math.inf`` allowed; 1 is KL).
        T: temperature ``> 0``.
        beta: weight of the soft term in ``[0, 1]``; 0 is a student trained alone on labels.
        seed: initialisation seed (and, in experiments, the data-order seed of its group).
        normalize_by_alpha: divide the soft term by ``alpha`` (finite ``alpha`` only).
        hidden: hidden widths of the student MLP.
        label: a name for reports, e.g. ``"distilled"`` or ``"alone"``.
        teacher: the seed of the student's teacher (experiments with several independently
            trained teachers; a student alone trains beside the students of this teacher).
        epochs: this student's training epochs (``None``: the profile's); a budget study
            trains the same student for several budgets.
        lr: this student's peak learning rate, ``> 0`` (``None``: the profile's); tuning studies
            give every arm its own.
        optimizer: this student's optimiser, ``"sgd"`` or ``"adam"`` (``None``: the profile's).
        reverse: distil with :math:`D_\alpha(\text{student}_T \| \text{teacher}_T)` instead
            (reverse KL at ``alpha = 1``; see :func:`kdlib.functional.distillation_loss`).

    Students that differ in ``epochs``, ``lr`` or ``optimizer`` train in different stacks
    (:func:`kdlib.lab.shards.stack_groups`): a stack shares one optimiser and schedule.

    Raises:
        ValueError: alpha not in ``(0, inf]``, T not finite and ``> 0``, beta not in
            ``[0, 1]``, ``normalize_by_alpha`` with ``alpha = inf``, ``epochs < 1``, ``lr`` not
            ``> 0``, or an unknown ``optimizer``.
    """

    alpha: float = field(default=1.0, metadata=ALWAYS_KEYED)
    T: float = field(default=4.0, metadata=ALWAYS_KEYED)
    beta: float = field(default=0.9, metadata=ALWAYS_KEYED)
    seed: int = field(default=0, metadata=ALWAYS_KEYED)
    normalize_by_alpha: bool = field(default=False, metadata=ALWAYS_KEYED)
    hidden: tuple[int, ...] = field(default=(800, 800), metadata=KEYED_ELSEWHERE)
    label: str = field(default="distilled", metadata=ALWAYS_KEYED)
    teacher: int = field(default=0, metadata=KEYED_ELSEWHERE)
    epochs: int | None = field(default=None, metadata=KEYED_ELSEWHERE)
    lr: float | None = field(default=None, metadata=KEYED_ELSEWHERE)
    optimizer: str | None = field(default=None, metadata=KEYED_ELSEWHERE)
    reverse: bool = False

    def __post_init__(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {self.epochs!r}")
        if self.lr is not None and not (is_finite_number(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0 or None, got {short_repr(self.lr)}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} or None, got {self.optimizer!r}")
        if not ((self.alpha == math.inf or is_finite_number(self.alpha)) and self.alpha > 0):
            raise ValueError(f"alpha must be in (0, inf] (a float or math.inf), got {short_repr(self.alpha)}")
        if not (is_finite_number(self.T) and self.T > 0):
            raise ValueError(f"T must be a finite number > 0, got {short_repr(self.T)}")
        if not (is_finite_number(self.beta) and 0.0 <= self.beta <= 1.0):
            raise ValueError(f"beta must be in [0, 1], got {short_repr(self.beta)}")
        if self.normalize_by_alpha and math.isinf(self.alpha):
            raise ValueError("normalize_by_alpha needs a finite alpha (the soft term would vanish), got inf")


#: The soft term's weight of every arm of the tuned comparison.
TUNE_BETA = 0.9


@dataclass(frozen=True)
class Arm:
    """One distillation method of the tuned Rényi comparison: an order, the division of the soft term
    by it, and the direction of the divergence (``reverse``: student before teacher)."""

    alpha: float
    normalize_by_alpha: bool = False
    reverse: bool = False

    @property
    def name(self) -> str:
        """``KL``, ``reverse KL``, ``α=0.25``, ``α=0.25 /α``, ``α=∞``."""
        if self.alpha == 1.0:
            return "reverse KL" if self.reverse else "KL"
        a = "∞" if math.isinf(self.alpha) else f"{self.alpha:g}"
        return f"{'reverse ' if self.reverse else ''}α={a}{' /α' if self.normalize_by_alpha else ''}"

    @classmethod
    def of(cls, spec: StudentSpec) -> Arm:
        """The arm a student belongs to."""
        return cls(spec.alpha, spec.normalize_by_alpha, spec.reverse)

    def student(self, T: float, lr: float, seed: int, hidden: tuple[int, ...], teacher: int,
                optimizer: str | None = None) -> StudentSpec:
        """This arm's student at temperature ``T`` and learning rate ``lr`` (``beta`` = :data:`TUNE_BETA`;
        ``optimizer`` ``None``: the profile's, SGD)."""
        return StudentSpec(alpha=self.alpha, T=T, beta=TUNE_BETA, seed=seed, hidden=hidden, teacher=teacher,
                           normalize_by_alpha=self.normalize_by_alpha, reverse=self.reverse, lr=lr,
                           optimizer=optimizer)


#: The arms of the tuned comparison: KL, reverse KL, and the Rényi orders 0.25, 0.5, 2 and 4 with
#: and without the division by alpha (at order 1 it changes nothing; at infinity it is undefined),
#: and the order infinity.
ARMS: tuple[Arm, ...] = (Arm(1.0), Arm(1.0, reverse=True),
                         *(Arm(a, n) for a in (0.25, 0.5, 2.0, 4.0) for n in (False, True)), Arm(math.inf))
