"""Training machinery: a teacher trained once, many students trained together as one model.

* :func:`resolve_device` picks ``cuda`` when present (``"auto"``) and refuses a missing GPU.
* :func:`train_classifier` trains any ``nn.Module`` (the teacher) on device-resident tensors.
* :class:`TeacherCache` stores a teacher's ``state_dict`` (atomic write, loaded with
  ``torch.load(weights_only=True)``) and its logits on the train/val/test splits, keyed by
  the teacher's config hash, so they are computed once.
* :func:`student_losses` is the distillation objective of S students at once, each with its
  own ``alpha``, ``T``, ``beta`` (:class:`StudentSpec`);
  :func:`train_stacked` trains a :class:`~kdlib.models.StackedMLP` on the sum of these
  per-student losses, so each student gets exactly the gradient it would get alone.
* :func:`evaluate_logits` and :func:`bias_shift` compute the recorded metrics.

Optimiser: SGD with momentum 0.9 and a cosine learning-rate decay by default (Adam is
available). SGD is the default on purpose: Adam divides each gradient by its running
magnitude, so it would largely cancel a constant rescaling of the soft-target term, and
the chapter-2 question "does dividing the Rényi term by alpha matter?" (the high-temperature
gradient is alpha(z - v)/(nT^2)) is a question about gradient scale. Hinton et al. also used
SGD with momentum, and their T^2 factor exists to keep SGD's gradient scale fixed across T.

Randomness: the data order of a group of students comes from a ``torch.Generator`` seeded
with ``data_seed`` (on the CPU, so it is the same on every device); each student's initial
weights come from its own seed (:func:`~kdlib.models.init_mlp_params`).
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pickle
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlib.data import batch_indices
from kdlib.models import StackedMLP

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "constant")


class DeviceUnavailableError(RuntimeError):
    """The requested device (e.g. ``cuda``) is not available on this machine."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when available, else ``cpu``; ``"cpu"``/``"cuda"``/``"cuda:N"`` checked.

    Raises:
        DeviceUnavailableError: ``cuda`` requested but no usable GPU (or index out of range).
        ValueError: a device string torch does not know.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {device!r} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                "use --device cpu or --device auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {device!r} requested but only "
                                         f"{torch.cuda.device_count()} GPU(s) are present")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


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
        clip_norm: clip each network's gradient to this L2 norm (``> 0``; ``None``: no
            clipping). For stacked students the norm is taken per student, exactly as
            ``torch.nn.utils.clip_grad_norm_`` would on that student alone.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, momentum in [0, 1), weight_decay >= 0; got "
                             f"{self.lr}, {self.momentum}, {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS or self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS} and schedule one of {SCHEDULES}; "
                             f"got {self.optimizer!r}, {self.schedule!r}")
        if self.warmup_steps < 0 or (self.clip_norm is not None and not self.clip_norm > 0):
            raise ValueError(f"warmup_steps must be >= 0 and clip_norm > 0 or None; got "
                             f"{self.warmup_steps}, {self.clip_norm}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields. ``warmup_steps`` and ``clip_norm`` appear only when set, so the run
        keys of configs from before these options existed stay valid."""
        d = asdict(self)
        for name, off in (("warmup_steps", 0), ("clip_norm", None)):
            if d[name] == off:
                del d[name]
        return d

    def make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The optimiser over ``params`` (element-wise, so stacking students does not couple them)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of step ``step`` (0-based) of ``total_steps``."""
        lr = self.lr
        if self.schedule == "cosine":
            lr = 0.5 * self.lr * (1.0 + math.cos(math.pi * step / total_steps))
        if step < self.warmup_steps:
            lr *= (step + 1) / self.warmup_steps
        return lr


def clip_per_student(params: Sequence[torch.Tensor], max_norm: float) -> None:
    """Scale each stacked student's gradient to L2 norm at most ``max_norm``, in place.

    Every tensor in ``params`` has the students on its first dimension; student ``s``'s
    norm is taken over slice ``s`` of all of them. The factor is
    ``min(1, max_norm / (norm + 1e-6))``, as in ``torch.nn.utils.clip_grad_norm_``.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    S = grads[0].shape[0]
    sq = sum(g.detach().pow(2).reshape(S, -1).sum(1) for g in grads)
    factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(factor.view(S, *([1] * (g.dim() - 1))))


@dataclass(frozen=True)
class StudentSpec:
    """One student run of a grid.

    Attributes:
        alpha: Rényi order in ``(0, inf]`` (``math.inf`` allowed; 1 is KL).
        T: temperature ``> 0``.
        beta: weight of the soft term in ``[0, 1]``; 0 is a student trained alone on labels.
        seed: initialisation seed (and, in experiments, the data-order seed of its group).
        normalize_by_alpha: divide the soft term by ``alpha`` (finite ``alpha`` only).
        hidden: hidden widths of the student MLP.
        label: a name for reports, e.g. ``"distilled"`` or ``"alone"``.

    Raises:
        ValueError: alpha not in ``(0, inf]``, T not finite and ``> 0``, beta not in
            ``[0, 1]``, or ``normalize_by_alpha`` with ``alpha = inf``.
    """

    alpha: float = 1.0
    T: float = 4.0
    beta: float = 0.9
    seed: int = 0
    normalize_by_alpha: bool = False
    hidden: tuple[int, ...] = (800, 800)
    label: str = "distilled"

    def __post_init__(self) -> None:
        if not (self.alpha > 0):
            raise ValueError(f"alpha must be in (0, inf], got {self.alpha!r}")
        if not (math.isfinite(self.T) and self.T > 0):
            raise ValueError(f"T must be a finite number > 0, got {self.T!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta!r}")
        if self.normalize_by_alpha and math.isinf(self.alpha):
            raise ValueError("normalize_by_alpha needs a finite alpha (the soft term would vanish), got inf")

    @property
    def soft_scale(self) -> float:
        """Factor of the mean divergence: ``T**2``, divided by ``alpha`` when normalising."""
        return self.T ** 2 / self.alpha if self.normalize_by_alpha else self.T ** 2


# ----------------------------------------------------------------------------- losses

@dataclass(frozen=True)
class StudentHyper:
    """The per-student hyperparameters of S students as tensors, built once per training run.

    Attributes:
        alpha, T: ``(S, 1)`` (broadcast over the batch rows).
        beta, scale: ``(S,)``; ``scale`` is ``T**2``, divided by ``alpha`` where normalised.
    """

    alpha: torch.Tensor
    T: torch.Tensor
    beta: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_specs(cls, specs: Sequence[StudentSpec], device: torch.device | str,
                   dtype: torch.dtype) -> StudentHyper:
        """Tensors of ``specs`` on ``device`` in ``dtype``."""
        def t(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype)

        return cls(alpha=t([s.alpha for s in specs]).unsqueeze(1), T=t([s.T for s in specs]).unsqueeze(1),
                   beta=t([s.beta for s in specs]), scale=t([s.soft_scale for s in specs]))


def student_losses(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                   specs: Sequence[StudentSpec] | StudentHyper) -> torch.Tensor:
    r"""Distillation loss of each of S students, in nats, shape ``(S,)``.

    .. math:: L_s = (1-\beta_s)\,\mathrm{CE}(z_s, y) + \beta_s\,c_s\,\tfrac1B\textstyle\sum_b
              D_{\alpha_s}(\mathrm{softmax}(v_b/T_s)\,\|\,\mathrm{softmax}(z_{s,b}/T_s))

    with ``c_s = T_s^2`` (thesis eq 1.11), divided by ``alpha_s`` when
    ``normalize_by_alpha`` -- per student, the value of :class:`kdlib.DistillationLoss`. The
    Rényi term is one call of :func:`kdlib.renyi_divergence_logits` (eq 1.16; alpha = 1 is
    KL, eq 1.4) with ``alpha`` and ``T`` as ``(S, 1)`` tensors and ``validate=False`` (the
    inputs of the training loop are finite by construction).

    Args:
        student_logits: ``(S, B, C)``.
        teacher_logits: ``(B, C)``, shared by all students.
        targets: ``(B,)`` class indices.
        specs: S student specs, or their :class:`StudentHyper` (faster in a loop).

    Returns:
        ``(S,)`` per-student losses; their sum has per-student gradients.
    """
    from kdlib.divergences import renyi_divergence_logits

    S, B, _ = student_logits.shape
    hyper = specs if isinstance(specs, StudentHyper) else StudentHyper.from_specs(
        specs, student_logits.device, student_logits.dtype)
    if hyper.beta.shape[0] != S:
        raise ValueError(f"specs must have one entry per student: {hyper.beta.shape[0]} != {S}")
    log_q = F.log_softmax(student_logits, dim=-1)
    ce = -log_q.gather(-1, targets.view(1, B, 1).expand(S, B, 1)).squeeze(-1).mean(-1)
    d = renyi_divergence_logits(teacher_logits, student_logits, hyper.alpha, hyper.T, validate=False)
    return (1 - hyper.beta) * ce + hyper.beta * hyper.scale * d.mean(-1)


# ----------------------------------------------------------------------------- training

def _progress(iterable: Any, **kw: Any) -> Any:
    from tqdm.auto import tqdm

    disable = os.environ.get("TQDM_DISABLE", "") not in ("", "0") or not sys.stderr.isatty()
    return tqdm(iterable, disable=disable, leave=False, dynamic_ncols=True, **kw)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of ``model`` in eval mode: ``(N, C)``, or ``(S, N, C)`` for a stacked model."""
    was_training = model.training
    model.eval()
    outs = [model(chunk) for chunk in x.split(batch_size)]
    model.train(was_training)
    return torch.cat(outs, dim=-2)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of arg-max predictions equal to ``y``: ``(N, C)`` -> scalar, ``(S, N, C)`` -> ``(S,)``."""
    return (logits.argmax(-1) == y).to(torch.float64).mean(-1)


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, *, seed: int,
                     val: tuple[torch.Tensor, torch.Tensor] | None = None, desc: str = "teacher"
                     ) -> dict[str, list[float]]:
    """Train ``model`` with cross-entropy on device-resident ``x`` ``(N, ...)``, ``y`` ``(N,)``.

    ``seed`` seeds the data order (a CPU generator) and ``torch.manual_seed`` (dropout).

    Returns:
        curves: ``{"train_loss": [...], "val_accuracy": [...]}``, one value per epoch (nats,
        fractions); ``val_accuracy`` is empty without ``val``.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = cfg.make_optimizer(model.parameters())
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    step = 0
    curves: dict[str, list[float]] = {"train_loss": [], "val_accuracy": []}
    model.train()
    for _ in _progress(range(cfg.epochs), desc=desc, unit="epoch"):
        total = torch.zeros((), device=x.device, dtype=torch.float64)
        for idx in batch_indices(len(y), cfg.batch_size, gen, device=x.device):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, steps)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            total += loss.detach() * len(idx)
            step += 1
        curves["train_loss"].append(float(total) / len(y))
        if val is not None:
            curves["val_accuracy"].append(float(accuracy(predict_logits(model, val[0]), val[1])))
            model.train()
    model.eval()
    return curves


def train_stacked(model: StackedMLP, x: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor,
                  specs: Sequence[StudentSpec], cfg: TrainConfig, *, data_seed: int,
                  val: tuple[torch.Tensor, torch.Tensor] | None = None, desc: str = "students"
                  ) -> dict[str, list[list[float]]]:
    """Train S stacked students on the transfer set ``x`` ``(N, ...)``, labels ``y`` ``(N,)``.

    Every step draws one minibatch (shared by all students, order from ``data_seed``),
    evaluates :func:`student_losses` and steps the optimiser on their sum.

    Args:
        model: the S students.
        teacher_logits: ``(N, C)`` teacher logits of ``x`` (temperature 1).
        specs: S student specs, in the order of ``model``'s students.
        cfg: optimiser settings shared by all S students.
        data_seed: seed of the minibatch order.
        val: optional ``(x_val, y_val)`` for a per-epoch validation accuracy.

    Returns:
        curves: ``{"train_loss": [S lists], "val_accuracy": [S lists]}``, one entry per epoch.
    """
    S = model.num_students
    if len(specs) != S or teacher_logits.shape[0] != len(y) or x.shape[0] != len(y):
        raise ValueError("model, specs, x, y and teacher_logits disagree in size")
    gen = torch.Generator().manual_seed(data_seed)
    hyper = StudentHyper.from_specs(specs, x.device, model.weights[0].dtype)
    params = list(model.parameters())
    opt = cfg.make_optimizer(params)
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    step = 0
    loss_curve, val_curve = [], []
    model.train()
    for _ in _progress(range(cfg.epochs), desc=desc, unit="epoch"):
        total = torch.zeros(S, device=x.device, dtype=torch.float64)
        for idx in batch_indices(len(y), cfg.batch_size, gen, device=x.device):
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(step, steps)
            per_student = student_losses(model(x[idx]), teacher_logits[idx], y[idx], hyper)
            opt.zero_grad(set_to_none=True)
            per_student.sum().backward()
            if cfg.clip_norm is not None:
                clip_per_student(params, cfg.clip_norm)
            opt.step()
            total += per_student.detach().to(torch.float64) * len(idx)
            step += 1
        loss_curve.append(total / len(y))
        if val is not None:
            val_curve.append(accuracy(predict_logits(model, val[0]), val[1]))
    model.eval()

    def per_student(curve: list[torch.Tensor]) -> list[list[float]]:
        return torch.stack(curve, dim=1).tolist() if curve else [[] for _ in range(S)]

    return {"train_loss": per_student(loss_curve), "val_accuracy": per_student(val_curve)}


# ----------------------------------------------------------------------------- evaluation

def evaluate_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int,
                    teacher_logits: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Test metrics of one model ``(N, C)`` or of S stacked students ``(S, N, C)``.

    Returns:
        one dict per model with ``test_accuracy``, ``test_errors`` (count),
        ``per_class_accuracy`` (list of ``num_classes``), ``test_ce`` (mean cross-entropy,
        nats) and, with ``teacher_logits`` ``(N, C)``, ``teacher_agreement`` (fraction of equal
        arg-max predictions) and ``test_kl_from_teacher`` (mean KL(teacher || model) at T = 1, nats).
    """
    stacked = logits.dim() == 3
    z = logits if stacked else logits.unsqueeze(0)
    z = z.to(torch.float64)
    pred = z.argmax(-1)
    correct = pred == y
    log_q = F.log_softmax(z, -1)
    ce = -log_q.gather(-1, y.view(1, -1, 1).expand(z.shape[0], -1, 1)).squeeze(-1).mean(-1)
    onehot = F.one_hot(y, num_classes).to(torch.float64)  # (N, C)
    counts = onehot.sum(0)
    per_class = (correct.to(torch.float64) @ onehot) / counts.clamp_min(1)
    out = []
    for s in range(z.shape[0]):
        m = {"test_accuracy": float(correct[s].to(torch.float64).mean()),
             "test_errors": int((~correct[s]).sum()),
             "per_class_accuracy": [float(v) if c > 0 else None
                                    for v, c in zip(per_class[s].tolist(), counts.tolist(), strict=True)],
             "test_ce": float(ce[s])}
        out.append(m)
    if teacher_logits is not None:
        log_p = F.log_softmax(teacher_logits.to(torch.float64), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)
        agree = (pred == teacher_logits.argmax(-1)).to(torch.float64).mean(-1)
        for s, m in enumerate(out):
            m["teacher_agreement"] = float(agree[s])
            m["test_kl_from_teacher"] = float(kl[s])
    return out


def bias_shift(val_logits: torch.Tensor, y_val: torch.Tensor, test_logits: torch.Tensor,
               y_test: torch.Tensor, cls: int, shifts: Sequence[float]) -> list[dict[str, Any]]:
    """Hinton's omitted-class repair: add ``delta`` to the logit (output bias) of class ``cls``.

    ``delta`` is chosen per student from ``shifts`` to maximise the overall accuracy on the
    validation data (ties: the smallest ``delta``); accuracies are then reported on the test
    split before (``delta = 0``) and after the shift.

    Args:
        val_logits, test_logits: ``(S, N, C)`` stacked (or ``(N, C)``) logits.
        y_val, y_test: labels.
        cls: the omitted class.
        shifts: candidate shifts (nats of logit), e.g. ``0, 0.25, ..., 20``.

    Returns:
        one dict per student: ``bias_shift``, ``val_accuracy_after_shift``,
        ``test_accuracy_before/after_shift``, ``omitted_class_accuracy_before/after_shift``.
    """
    def correct(logits: torch.Tensor, y: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
        z = logits if logits.dim() == 3 else logits.unsqueeze(0)       # (S, N, C)
        others = z.clone()
        others[..., cls] = -torch.inf
        best_other, arg_other = others.max(-1)                           # (S, N)
        pick_cls = z[..., cls].unsqueeze(1) + deltas.view(1, -1, 1) > best_other.unsqueeze(1)  # (S, D, N)
        return torch.where(pick_cls, (y == cls).view(1, 1, -1), (arg_other == y).unsqueeze(1))

    shifts = [float(d) for d in shifts]
    if any(d < 0 for d in shifts) or shifts != sorted(shifts):
        raise ValueError(f"shifts must be non-negative and ascending, got {shifts}")
    deltas = torch.tensor([0.0, *shifts], dtype=val_logits.dtype, device=val_logits.device)
    val_acc = correct(val_logits, y_val, deltas).to(torch.float64).mean(-1)    # (S, D)
    best = val_acc.argmax(-1)  # first maximum = smallest delta among ties (deltas ascending after 0)
    mask = y_test == cls
    out = []
    for s in range(val_acc.shape[0]):
        d = deltas[[0, int(best[s])]]
        c = correct(test_logits[s] if test_logits.dim() == 3 else test_logits, y_test, d)[0]
        out.append({
            "bias_shift": float(d[1]), "val_accuracy_after_shift": float(val_acc[s, best[s]]),
            "test_accuracy_before_shift": float(c[0].to(torch.float64).mean()),
            "test_accuracy_after_shift": float(c[1].to(torch.float64).mean()),
            "omitted_class_accuracy_before_shift": float(c[0][mask].to(torch.float64).mean()),
            "omitted_class_accuracy_after_shift": float(c[1][mask].to(torch.float64).mean()),
        })
    return out


# ----------------------------------------------------------------------------- teacher cache

def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TeacherCache:
    """Teachers' weights and logits on disk, one set of files per teacher key.

    ``<dir>/<key>.pt``: the ``state_dict``; ``<dir>/<key>.logits.pt``: ``{"train", "val",
    "test"}`` logits ``(N, C)`` at temperature 1; ``<dir>/<key>.json``: the teacher's record.
    Default directory: ``$KDLIB_CACHE_DIR`` or ``~/.cache/kdlib/teachers``.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        if directory is None:
            env = os.environ.get("KDLIB_CACHE_DIR")
            directory = Path(env) if env else Path.home() / ".cache" / "kdlib"
        self.root = Path(directory)
        self.dir = self.root / "teachers"

    def paths(self, key: str) -> tuple[Path, Path, Path]:
        """``(weights, logits, record)`` paths of teacher ``key``."""
        return self.dir / f"{key}.pt", self.dir / f"{key}.logits.pt", self.dir / f"{key}.json"

    def load(self, key: str, model: nn.Module, device: torch.device
             ) -> tuple[dict[str, torch.Tensor], str] | None:
        """Load weights into ``model``; return ``(logits, record_json)``, ``None`` if absent or damaged."""
        weights, logits, record = self.paths(key)
        if not (weights.is_file() and logits.is_file() and record.is_file()):
            return None
        try:
            model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
            cached = torch.load(logits, map_location=device, weights_only=True)
            text = record.read_text()
        except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError):
            return None
        return cached, text

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock on teacher ``key``, so concurrent runs train it only once."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save(self, key: str, model: nn.Module, logits: dict[str, torch.Tensor], record_json: str) -> None:
        """Write the three files atomically (the record last, so its presence means complete)."""
        weights, logit_path, record = self.paths(key)
        atomic_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        atomic_save({k: v.detach().cpu() for k, v in logits.items()}, logit_path)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{record.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(record_json)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
