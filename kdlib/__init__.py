"""kdlib: knowledge distillation with the Rényi divergence.

The companion library of the thesis "Neural Networks and Knowledge Distillation"
(M. Grätzer, Charles University). The divergences and the distillation loss are
importable from the top level (the loss as a function in :mod:`kdlib.functional` and as a
module, :class:`DistillationLoss`); the experiments are defined, trained and stored by
:mod:`kdlib.lab` and read into tables, figures and book pages by :mod:`kdlib.report`.
"""

from kdlib.divergences import (
    kl_divergence,
    renyi_divergence,
    renyi_divergence_logits,
    renyi_gradient,
    softmax_t,
)
from kdlib.functional import distillation_loss
from kdlib.losses import DistillationLoss

__all__ = ["softmax_t", "kl_divergence", "renyi_divergence", "renyi_divergence_logits", "renyi_gradient",
           "distillation_loss", "DistillationLoss"]
__version__ = "0.1.0"
