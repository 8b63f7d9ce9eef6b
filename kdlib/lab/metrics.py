"""What is measured on a trained network: logits, accuracy, the recorded test metrics, the bias shift.

All functions take logits ``(N, C)`` of one network or ``(S, N, C)`` of S stacked students and
return float64 values (fractions in [0, 1], cross-entropies in nats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


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


def evaluate_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int,
                    teacher_logits: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Test metrics of one model ``(N, C)`` or of S stacked students ``(S, N, C)``.

    Returns:
        one dict per model with ``test_accuracy``, ``test_errors`` (count),
        ``per_class_accuracy`` (list of ``num_classes``), ``test_ce`` (mean cross-entropy,
        nats), ``test_ece`` (:func:`expected_calibration_error`), ``test_reliability`` (its diagram,
        :func:`reliability`) and, with ``teacher_logits``
        ``(N, C)``, ``teacher_agreement`` (fraction of equal
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
    ece = expected_calibration_error(z, y)
    diagrams = reliability(z, y)
    out = []
    for s in range(z.shape[0]):
        m = {"test_accuracy": float(correct[s].to(torch.float64).mean()),
             "test_errors": int((~correct[s]).sum()),
             "per_class_accuracy": [float(v) if c > 0 else None
                                    for v, c in zip(per_class[s].tolist(), counts.tolist(), strict=True)],
             "test_ce": float(ce[s]), "test_ece": float(ece[s]), "test_reliability": diagrams[s]}
        out.append(m)
    if teacher_logits is not None:
        log_p = F.log_softmax(teacher_logits.to(torch.float64), -1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)
        agree = (pred == teacher_logits.argmax(-1)).to(torch.float64).mean(-1)
        for s, m in enumerate(out):
            m["teacher_agreement"] = float(agree[s])
            m["test_kl_from_teacher"] = float(kl[s])
    return out


def _confidence_bins(logits: torch.Tensor, y: torch.Tensor, bins: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bin of the top softmax probability on ``(0, 1]``: ``n_b``, ``sum conf``, ``sum correct``,
    ``sum (correct - conf)`` (each ``(..., bins)``; the last summed as the ECE always has been, so
    committed ECEs reproduce to the bit) and whether each model's logits are finite (``(...)``)."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    conf, pred = F.softmax(logits.to(torch.float64), -1).max(-1)
    correct = (pred == y).to(torch.float64)
    finite = torch.isfinite(conf).all(-1)  # a diverged model (non-finite logits) has no ECE
    conf = torch.nan_to_num(conf, nan=1.0)
    b = (conf * bins).ceil().clamp(1, bins).long() - 1  # bin of (k/bins, (k+1)/bins]
    onehot = F.one_hot(b, bins).to(torch.float64)  # (..., N, bins)
    total = lambda v: (v.unsqueeze(-2) @ onehot).squeeze(-2)  # noqa: E731  per-bin sums
    return onehot.sum(-2), total(conf), total(correct), total(correct - conf), finite


def expected_calibration_error(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> torch.Tensor:
    """Expected calibration error of the arg-max predictions, equal-width confidence bins.

    ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` over ``bins`` bins of the top softmax probability
    on ``(0, 1]`` (Guo et al., 2017); ``acc_b`` and ``conf_b`` are the accuracy and mean
    confidence of the ``n_b`` examples in bin ``b``.

    Args:
        logits: ``(N, C)`` or ``(S, N, C)``.
        y: ``(N,)`` labels.
        bins: number of bins, ``>= 1``.

    Returns:
        ``()`` or ``(S,)``, a fraction in ``[0, 1]``; NaN for a model with non-finite logits.
    """
    *_, gap, finite = _confidence_bins(logits, y, bins)
    ece = gap.abs().sum(-1) / y.shape[0]
    return torch.where(finite, ece, torch.full_like(ece, math.nan))


def reliability(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> list[dict[str, list[Any]]]:
    """The reliability diagram of each model: per confidence bin (as in
    :func:`expected_calibration_error`), ``count`` (``n_b``), ``confidence`` (mean top
    probability) and ``accuracy`` (fraction correct); ``None`` in an empty bin, and every entry
    ``None`` for a model with non-finite logits. ``(N, C)`` gives one dict, ``(S, N, C)`` S.
    ``sum_b count_b |accuracy_b - confidence_b| / N`` is the ECE."""
    n, conf, correct, _, finite = _confidence_bins(logits, y, bins)
    n, conf, correct = (t.reshape(-1, bins) for t in (n, conf, correct))
    out = []
    for s, ok in enumerate(finite.reshape(-1).tolist()):
        cnt = n[s].tolist()
        if not ok:
            out.append({k: [None] * bins for k in ("count", "confidence", "accuracy")})
            continue
        out.append({"count": [int(c) for c in cnt],
                    **{k: [x / c if c > 0 else None for x, c in zip(v[s].tolist(), cnt, strict=True)]
                       for k, v in (("confidence", conf), ("accuracy", correct))}})
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
        ``test_accuracy_before/after_shift``, ``omitted_class_accuracy_before/after_shift`` and
        ``omitted_class_auroc`` (:func:`class_auroc` of the test logits: how well the class is
        recognised whatever the shift, since a shift of its logit does not change the ranking).
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
            "omitted_class_auroc": class_auroc(test_logits[s] if test_logits.dim() == 3 else test_logits,
                                               y_test, cls),
        })
    return out


def class_auroc(logits: torch.Tensor, y: torch.Tensor, cls: int) -> float:
    """Area under the ROC curve of the logit of class ``cls`` as a score for "is of class ``cls``".

    A threshold-free measure of how well a network recognises a class (0.5: no better than chance,
    1: every image of the class scores above every other image). Adding a constant to that logit
    (the bias shift) leaves it unchanged. Computed by :func:`sklearn.metrics.roc_auc_score`.

    Args:
        logits: ``(N, C)`` logits of one network.
        y: ``(N,)`` labels; both classes (``cls`` and another) must occur.
        cls: the class.

    Returns:
        the AUROC in ``[0, 1]``; NaN where a logit of the class is not finite (a diverged network).

    Raises:
        ValueError: ``logits`` is not ``(N, C)``, or ``y`` lacks the class or every other class.
    """
    from sklearn.metrics import roc_auc_score

    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be (N, C) with N = len(y) = {y.shape[0]}, got {tuple(logits.shape)}")
    positive = (y == cls).cpu().numpy()
    if positive.all() or not positive.any():
        raise ValueError(f"y must contain class {cls} and at least one other class")
    score = logits[:, cls].detach().to(torch.float64).cpu()
    if not bool(torch.isfinite(score).all()):
        return math.nan
    return float(roc_auc_score(positive, score.numpy()))
