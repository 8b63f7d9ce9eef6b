r"""The distillation loss of the thesis (eq 1.9–1.13) with the Rényi divergence in place of KL.

.. math:: \begin{aligned}
          \mathcal{L} = {}& (1-\beta)\,\mathrm{CE}\big(\operatorname{softmax}(z), y\big) \\
          &+ \beta\,T^2\,D_\alpha\big(\operatorname{softmax}(v/T)\,\big\|\,\operatorname{softmax}(z/T)\big)
          \end{aligned}

with student logits :math:`z`, teacher logits :math:`v`, labels :math:`y`. At ``alpha = 1`` this is
Hinton's loss (eq 1.13 with 1.9 and 1.11).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdlib._validation import check_beta, check_order, check_temperature_arg
from kdlib.functional import REDUCTIONS, LossComponents, distillation_loss

__all__ = ["DistillationLoss", "LossComponents"]

#: The hyperparameters that may be tensors (registered as buffers).
_HYPER = ("alpha", "T", "beta")

class DistillationLoss(nn.Module):
    r"""Rényi knowledge-distillation loss: cross-entropy mixed with a tempered Rényi divergence.

    For each row (sample) :math:`b` with student logits :math:`z_b`, teacher logits :math:`v_b` and
    label :math:`y_b`,

    .. math:: \begin{aligned}
              \ell_b = {}& (1-\beta)\,\bigl(-\log \operatorname{softmax}(z_b)_{y_b}\bigr) \\
              &+ \beta\,\frac{T^2}{c_\alpha}\,D_\alpha\bigl(\operatorname{softmax}(v_b/T)\,\big\|\,
              \operatorname{softmax}(z_b/T)\bigr),
              \end{aligned}

    with :math:`c_\alpha = \alpha` if ``normalize_by_alpha`` else 1, and the loss is the mean of
    :math:`\ell_b` over all rows (``reduction="mean"``, the default; ``"sum"`` and ``"none"`` as in
    :mod:`torch.nn`). The cross-entropy term is eq (1.9)–(1.10) with the labels :math:`y_b` as one-hot
    vectors, the soft term is eq (1.11)–(1.12) with :math:`D_{KL}` replaced by :math:`D_\alpha`
    (eq 1.16), mixed as in eq (1.13).

    Relation to the thesis: eq (1.9)–(1.13) *sum* over the :math:`N` samples; this module *averages*
    each term over the rows it is given. The minimiser is the same and the gradient is divided by
    the batch size, which only rescales the learning rate (as ``reduction="batchmean"`` does in
    :func:`torch.nn.functional.kl_div`). At ``alpha = 1`` (and ``normalize_by_alpha=False``) the loss
    equals Hinton's loss

    .. code-block:: python

        (1 - beta) * F.cross_entropy(z, y) + beta * T**2 * F.kl_div(
            F.log_softmax(z / T, -1), F.softmax(v / T, -1), reduction="batchmean")

    up to rounding. The factor :math:`T^2` keeps the soft term's gradient of the same size as the
    hard term's as :math:`T` grows (eq 1.14–1.15): for zero-mean logits and large :math:`T` the
    gradient of :math:`T^2 D_\alpha` with respect to :math:`z` tends to :math:`\alpha(z - v)/n`.

    ``normalize_by_alpha``: the limit above shows that the order :math:`\alpha` acts as a
    multiplier of the learning rate of the soft term. Dividing the soft term by :math:`\alpha`
    puts all orders on an equal footing in that limit (gradient :math:`(z - v)/n`). It is not
    defined for :math:`\alpha = 0` (:math:`D_0 \equiv 0` for softmax distributions, 0/0) or
    :math:`\alpha = \infty` (the soft term would vanish), so these orders raise ``ValueError``
    when it is set.

    Args:
        alpha: Rényi order in :math:`[0, \infty]` (``math.inf`` allowed), or a tensor broadcastable to
            the row shape (e.g. ``(S, 1)`` for stacked students ``(S, B, n)``); 1 gives KL.
        T: temperature, a finite number ``> 0`` or a tensor of them broadcastable to the row shape.
        beta: weight :math:`\beta \in [0, 1]` of the soft term (a number, or a tensor broadcastable to
            the row shape).
        normalize_by_alpha: divide the soft term by :math:`\alpha` (see above); a bool.
        reverse: exchange the two distributions of the soft term,
            :math:`D_\alpha(\text{student}_T \| \text{teacher}_T)` (reverse KL at ``alpha = 1``;
            see :func:`kdlib.functional.distillation_loss`).
        reduction: ``"mean"`` (over all rows), ``"sum"`` or ``"none"`` (one value per row).
        validate: check the values of every call's arguments: finite logits and targets in
            ``[0, n)``, at the cost of two row-wise min/max reductions, one min/max and a single host
            sync per call. Set ``False`` in hot loops whose inputs are known to be valid (shapes and dtypes
            are still checked; invalid values then give NaN or an indexing error).

    Tensor hyperparameters are registered as buffers, so :meth:`~torch.nn.Module.to` moves them to
    another device; casts of the module's dtype (``.half()``, ``.bfloat16()``, ``.double()``,
    ``.to(dtype)``) leave their dtype, and so their values, unchanged. They must not require grad
    (a buffer would cut the gradient): to learn ``T`` or ``beta``, call
    :func:`kdlib.functional.distillation_loss` with it.

    **Shapes**

    - ``student_logits``: ``(..., n)``, finite.
    - ``teacher_logits``: ``(..., n)``, finite, leading dimensions broadcastable to the
      student's (e.g. ``(B, n)`` against stacked students ``(S, B, n)``; a teacher that would
      enlarge the student's rows, such as ``(B, n)`` against a student ``(B, 1, n)``, is refused).
      Detach it yourself if the teacher must not be trained; gradients flow to it otherwise.
    - ``targets``: integer class indices in ``[0, n)`` (any integer dtype), broadcastable to the row
      shape ``student.shape[:-1]`` (e.g. ``(B,)``).
    - output: a scalar for ``"mean"``/``"sum"``, the row shape for ``"none"``; in nats; dtype of
      the student logits (16-bit inputs are computed in float32).

    Raises:
        ValueError: at construction, if ``alpha`` is NaN or negative, ``T`` is not finite and ``> 0``,
            ``beta`` is outside ``[0, 1]`` (a number beyond float's range, such as ``10**400``, is
            refused by name too), a tensor hyperparameter requires grad, ``reduction`` is unknown,
            ``normalize_by_alpha`` or ``validate`` is not a bool (a per-row bool tensor is taken by
            :func:`kdlib.functional.distillation_loss`), or ``normalize_by_alpha`` is set with an
            order 0 or ``inf``; at call time, as
            :func:`kdlib.functional.distillation_loss`: a logits tensor holds NaN or ``+-inf`` or is
            not floating, the shapes do not match, ``targets`` is not an integer tensor of the row
            shape with values in ``[0, n)``, an order is below the smallest normal number where
            ``normalize_by_alpha`` is set, or a tensor is a meta tensor or on another device.
    """

    def __init__(
        self,
        alpha: float | torch.Tensor = 1.0,
        T: float | torch.Tensor = 4.0,
        beta: float | torch.Tensor = 0.9,
        *,
        normalize_by_alpha: bool = False,
        reverse: bool = False,
        reduction: str = "mean",
        validate: bool = True,
    ) -> None:
        super().__init__()
        alpha = check_order(alpha)
        if isinstance(T, torch.Tensor):
            check_temperature_arg(T, T.shape)
        else:
            T = check_temperature_arg(T, torch.Size())
        beta = check_beta(beta)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        for name, flag in (("normalize_by_alpha", normalize_by_alpha), ("validate", validate)):
            if not isinstance(flag, bool):  # a tensor of several elements has no truth value
                hint = (" (for one flag per row, pass a bool tensor to kdlib.functional.distillation_loss)"
                        if name == "normalize_by_alpha" and isinstance(flag, torch.Tensor) else "")
                raise ValueError(f"{name} must be a bool (True or False), got {type(flag).__name__}{hint}")
        if normalize_by_alpha:
            if isinstance(alpha, torch.Tensor):
                bad = bool(((alpha == 0) | torch.isinf(alpha)).any())
            else:
                bad = alpha == 0.0 or math.isinf(alpha)
            if bad:
                raise ValueError(
                    "alpha must be in (0, inf) when normalize_by_alpha=True (the soft term is divided by "
                    f"alpha; orders 0 and inf are undefined there), got {alpha!r}"
                )
        for name, value in (("alpha", alpha), ("T", T), ("beta", beta)):
            if isinstance(value, torch.Tensor):
                if value.requires_grad:  # alpha is refused by check_order
                    raise ValueError(
                        f"{name} must not require grad: the module stores it as a buffer, which would "
                        "cut its gradient silently (to learn it, pass it to "
                        "kdlib.functional.distillation_loss, through which the gradient flows)"
                    )
                self.register_buffer(name, value.detach().clone())
            else:
                setattr(self, name, value)
        self.normalize_by_alpha = bool(normalize_by_alpha)
        if not isinstance(reverse, bool):
            raise ValueError(f"reverse must be a bool, got {type(reverse).__name__}")
        self.reverse = reverse
        self.reduction = reduction
        self.validate = bool(validate)

    def _apply(self, fn, recurse=True):
        # Module.half()/.bfloat16()/.double()/.to(dtype) cast every floating buffer: a hyperparameter
        # would change its value (alpha = 1e5 becomes inf in float16, beta = 0.9 becomes 0.8984 in
        # bfloat16). Keep each tensor hyperparameter's dtype; follow only a change of device.
        kept = {name: self._buffers[name] for name in _HYPER if self._buffers.get(name) is not None}
        out = super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            if new is not None and new.dtype != old.dtype:
                self._buffers[name] = old.to(device=new.device)
        return out

    def extra_repr(self) -> str:
        def fmt(x):
            return f"tensor{tuple(x.shape)}" if isinstance(x, torch.Tensor) else f"{x:g}"

        return (
            f"alpha={fmt(self.alpha)}, T={fmt(self.T)}, beta={fmt(self.beta)}, "
            f"normalize_by_alpha={self.normalize_by_alpha}, "
            + ("reverse=True, " if self.reverse else "") + f"reduction={self.reduction!r}"
        )

    def components(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> LossComponents:
        """The loss and its two parts, ``(total, ce, soft)``, each reduced as ``reduction`` says.

        Useful for logging; ``total`` is what :meth:`forward` returns. See the class docstring for
        shapes and errors.
        """
        return distillation_loss(student_logits, teacher_logits, targets, **self._options(),
                                 return_components=True)

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``(1 - beta) CE(student, targets) + beta T^2 D_alpha(teacher_T || student_T)``, reduced.

        Args:
            student_logits: ``(..., n)`` student logits :math:`z`.
            teacher_logits: ``(..., n)`` teacher logits :math:`v` (leading dims broadcast).
            targets: integer labels in ``[0, n)`` broadcastable to the row shape.

        Returns:
            The loss in nats (scalar for ``"mean"``/``"sum"``, per row for ``"none"``).
        """
        return distillation_loss(student_logits, teacher_logits, targets, **self._options())

    def _options(self) -> dict:
        return {"alpha": self.alpha, "T": self.T, "beta": self.beta,
                "normalize_by_alpha": self.normalize_by_alpha, "reverse": self.reverse,
                "reduction": self.reduction,
                "validate": self.validate}
