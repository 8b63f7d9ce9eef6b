"""Temperature softmax, KL divergence and Rényi divergence (thesis eq 1.3, 1.4, 1.16).

All functions take torch tensors with the classes on the last dimension and any
number of leading batch dimensions; divergences are returned in nats, one value
per row.
"""

from __future__ import annotations

import torch

from kdlib._validation import check_finite_tensor, check_temperature


def softmax_t(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    r"""Temperature-scaled softmax, thesis eq (1.3).

    .. math:: p_c^T = \frac{\exp(z_c / T)}{\sum_{k=1}^n \exp(z_k / T)}

    Args:
        logits: tensor of shape ``(..., n)``, the scores :math:`z`, finite.
        T: temperature, a finite number ``> 0``. ``T = 1`` is the plain softmax
            (eq 1.2); large ``T`` flattens the distribution toward uniform and
            ``T -> 0`` sharpens it toward the arg-max one-hot vector.

    Returns:
        Probabilities of shape ``(..., n)`` that sum to 1 along the last dimension.

    Raises:
        ValueError: if ``T <= 0`` or ``T`` is not finite, or ``logits`` contain NaN or ``+-inf``.
    """
    T = check_temperature(T)
    check_finite_tensor(logits, "logits")
    return torch.softmax(logits / T, dim=-1)
