"""kdlib: knowledge distillation with the Rényi divergence.

The companion library of the thesis "Neural Networks and Knowledge Distillation"
(M. Grätzer, Charles University). The divergences and the distillation loss are
importable from the top level; the experiment machinery lives in the submodules
:mod:`kdlib.lab.data`, :mod:`kdlib.lab.models`, :mod:`kdlib.lab.train`, :mod:`kdlib.lab.store`
and :mod:`kdlib.lab.experiments`.
"""

from kdlib.divergences import (
    kl_divergence,
    renyi_divergence,
    renyi_divergence_logits,
    renyi_gradient,
    softmax_t,
)
from kdlib.losses import DistillationLoss

__all__ = [
    "softmax_t",
    "kl_divergence",
    "renyi_divergence",
    "renyi_divergence_logits",
    "renyi_gradient",
    "DistillationLoss",
]
__version__ = "0.1.0"
