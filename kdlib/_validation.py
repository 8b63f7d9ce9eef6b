"""Argument checks shared by every public function of :mod:`kdlib`.

Each check raises :class:`ValueError` whose message names the offending
parameter and the allowed range, so that a caller sees at once what to fix.
"""

from __future__ import annotations

import math

import torch


def check_temperature(T: float, name: str = "T") -> float:
    """Return ``T`` as a float if it is finite and positive, else raise ``ValueError``."""
    try:
        value = float(T)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a finite number > 0, got {T!r}") from None
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0 (allowed range (0, inf)), got {T!r}")
    return value


def check_finite_tensor(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a tensor with at least one dimension and only finite entries."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension (classes on the last), got a scalar")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} must have at least one class on its last dimension, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must contain only finite values (no NaN or +-inf)")
