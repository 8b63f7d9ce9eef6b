"""Teacher and student architectures, and a stack of S MLP students trained as one model.

* :class:`MLP` with :func:`hinton_teacher` (784-1200-1200-10, dropout) and
  :func:`hinton_student` (784-800-800-10), the networks of Hinton et al.'s MNIST
  experiment (Hinton et al., 2015); widths are free, down to tiny students with
  30 hidden units.
* :class:`SmallCNN`: two conv blocks and a linear head, for 1×8×8 or 1×28×28 inputs: the
  convolutional teacher that the Hinton experiment falls back to where an MLP teacher is no
  better than its student (``{"kind": "cnn"}``).
* :class:`StackedMLP`: S MLP students of one shape whose parameters have the students on
  their first dimension, evaluated with one GEMM for the first layer and batched matrix
  products after it; student ``s`` is initialised from its own seed exactly as
  :func:`init_mlp_params` would initialise it alone.

:func:`build_model` makes a model from a JSON-ready spec (the form stored in result records).
All models map inputs ``(B, C, H, W)`` to logits ``(B, num_classes)``; :class:`StackedMLP`
returns ``(S, B, num_classes)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODEL_KINDS = ("mlp", "cnn")
#: How a :class:`Dropout` draws its mask (part of a model's spec, so of a teacher's key): ``"bits32"`` (the
#: default, every committed teacher's) or ``"bits8"`` (cheaper; ``p`` rounded to a multiple of 1/256).
DROPOUT_MASKS = ("bits32", "bits8")


class Dropout(nn.Dropout):
    """``nn.Dropout`` (inverted dropout: zero with probability ``p``, scale the rest by ``1/(1-p)``)
    with a cheaper mask.

    ``F.dropout`` draws its mask with ``bernoulli_``, which on CPUs other than Intel's runs element
    by element and costs more than the teacher's matrix products. Here each element gets random bits
    from 64-bit draws and is kept when they are at least a threshold:

    * ``mask="bits32"`` (the default): 32 bits an element (two from one draw), so ``p`` holds to
      within ``2**-33``; the mask is applied as one product with its values ``0`` and ``1/(1-p)``;
    * ``mask="bits8"``: 8 bits an element (eight from one draw; a quarter of the random numbers), so
      the probability is ``round(256 p) / 256`` (0.5 exactly; 0.2 becomes 0.1992), applied as a product
      with the boolean mask and then the scale ``1/(1-p)`` (about 40% cheaper a mask on these CPUs).

    The bits come from torch's global generator, as ``nn.Dropout``'s masks do, but the masks are not
    the same; the two methods give different masks, so the method is part of a model's spec.

    Raises:
        ValueError: ``mask`` not one of :data:`DROPOUT_MASKS`.
    """

    def __init__(self, p: float = 0.5, mask: str = "bits32") -> None:
        super().__init__(p)
        if mask not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {', '.join(DROPOUT_MASKS)}, got {mask!r}")
        self.mask = mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(...)`` with dropout applied in training mode; ``x`` itself in eval mode or at p = 0."""
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        if self.mask == "bits8":
            bits = torch.empty((n + 7) // 8, dtype=torch.int64, device=x.device).random_(-2**63, None)
            keep = bits.view(torch.int8)[:n].view(x.shape) >= round(self.p * 2**8) - 2**7
            return (x * keep).mul_(1.0 / (1.0 - round(self.p * 2**8) / 2**8))
        bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=x.device).random_(-2**63, None)
        keep = bits.view(torch.int32)[:n].view(x.shape) >= round(self.p * 2**32) - 2**31
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class MLP(nn.Module):
    """Fully connected ReLU network on flattened inputs.

    Args:
        in_features: number of inputs (784 for 28×28 images).
        hidden: widths of the hidden layers, e.g. ``(1200, 1200)``; each ``>= 1``.
        num_classes: number of outputs (logits).
        dropout: dropout probability after every hidden ReLU, in ``[0, 1)`` (:class:`Dropout`).
        input_dropout: dropout probability on the inputs, in ``[0, 1)``.
        dropout_mask: how the masks are drawn (:class:`Dropout`).

    Raises:
        ValueError: on a non-positive width, a dropout probability outside ``[0, 1)`` or an unknown
            ``dropout_mask``.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int = 10,
                 dropout: float = 0.0, input_dropout: float = 0.0, dropout_mask: str = "bits32") -> None:
        super().__init__()
        sizes = _check_sizes(in_features, hidden, num_classes)
        for name, p in (("dropout", dropout), ("input_dropout", input_dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(Dropout(input_dropout, dropout_mask))
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(Dropout(dropout, dropout_mask))
        self.net = nn.Sequential(*layers)
        self.sizes = sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of inputs ``(B, ...)`` with ``in_features`` values each."""
        return self.net(x)

    def linears(self) -> list[nn.Linear]:
        """The linear layers, input to output."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    def load_params(self, params: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> MLP:
        """Copy ``[(W (in, out), b (out,)), ...]`` (the :func:`init_mlp_params` layout) into the layers."""
        with torch.no_grad():
            for lin, (w, b) in zip(self.linears(), params, strict=True):
                lin.weight.copy_(w.T)
                lin.bias.copy_(b)
        return self


def hinton_teacher(in_features: int = 784, num_classes: int = 10, hidden: int = 1200,
                   dropout: float = 0.5, input_dropout: float = 0.2, dropout_mask: str = "bits32") -> MLP:
    """Hinton et al.'s MNIST teacher: two hidden layers of 1200 ReLUs with dropout.

    Dropout 0.5 on hidden units and 0.2 on inputs follows Hinton et al. (2012); their
    max-norm weight constraint and input jitter are not used here.
    """
    return MLP(in_features, (hidden, hidden), num_classes, dropout=dropout, input_dropout=input_dropout,
               dropout_mask=dropout_mask)


def hinton_student(in_features: int = 784, num_classes: int = 10, hidden: int = 800) -> MLP:
    """Hinton et al.'s MNIST student: two hidden layers of 800 ReLUs, no regularisation."""
    return MLP(in_features, (hidden, hidden), num_classes)


class SmallCNN(nn.Module):
    """Conv(3×3, w)-ReLU-MaxPool, Conv(3×3, 2w)-ReLU-MaxPool, then a hidden fully connected layer.

    For 28×28 inputs: ``(1, 28, 28) -> (w, 14, 14) -> (2w, 7, 7) -> hidden -> classes``, with
    dropout ``dropout`` before each of the two linear layers. With ``w = 32``, ``hidden = 256``
    (about 0.85 M parameters) it is the convolutional teacher of the Hinton experiment, a model
    clearly better than a 2×800 MLP on Fashion-MNIST.

    Args:
        in_channels: 1 for (Fashion-)MNIST and digits.
        num_classes: number of outputs.
        width: channels of the first block (``>= 1``).
        hidden: units of the hidden linear layer (``>= 1``).
        dropout: dropout probability before each linear layer, in ``[0, 1)`` (:class:`Dropout`).
        image_size: height and width of the input (divisible by 4).
        dropout_mask: how the masks are drawn (:class:`Dropout`).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 256,
                 dropout: float = 0.0, image_size: int = 28, dropout_mask: str = "bits32") -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2 or width < 1 or hidden < 1 or image_size % 4:
            raise ValueError(f"in_channels >= 1, num_classes >= 2, width >= 1, hidden >= 1 and an image size "
                             f"divisible by 4 required, got {in_channels}, {num_classes}, {width}, {hidden}, "
                             f"{image_size}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        side = image_size // 4
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        )
        self.head = nn.Sequential(Dropout(dropout, dropout_mask), nn.Linear(2 * width * side * side, hidden),
                                  nn.ReLU(), Dropout(dropout, dropout_mask), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)`` with ``H = W = image_size``."""
        return self.head(self.features(x))


def build_model(spec: dict[str, Any], input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Model from a spec such as ``{"kind": "mlp", "hidden": [1200, 1200], "dropout": 0.5}``.

    Keys by kind: ``mlp``: ``hidden``, ``dropout``, ``input_dropout``; ``cnn``: ``width``, ``hidden``,
    ``dropout``; both: ``dropout_mask`` (:data:`DROPOUT_MASKS`; absent: ``"bits32"``, so the specs and
    keys of the committed teachers are unchanged).

    Raises:
        ValueError: unknown ``kind`` or unknown keys.
    """
    spec = dict(spec)
    kind = spec.pop("kind", None)
    allowed = {"mlp": {"hidden", "dropout", "input_dropout", "dropout_mask"},
               "cnn": {"width", "hidden", "dropout", "dropout_mask"}}
    if kind not in allowed:
        raise ValueError(f"model kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    if set(spec) - allowed[kind]:
        raise ValueError(f"unknown keys for a {kind} model: {sorted(set(spec) - allowed[kind])}")
    if kind == "mlp":
        return MLP(math.prod(input_shape), tuple(spec.get("hidden", (800, 800))), num_classes,
                   dropout=spec.get("dropout", 0.0), input_dropout=spec.get("input_dropout", 0.0),
                   dropout_mask=spec.get("dropout_mask", "bits32"))
    return SmallCNN(input_shape[0], num_classes, width=spec.get("width", 32), hidden=spec.get("hidden", 256),
                    dropout=spec.get("dropout", 0.0), image_size=input_shape[-1],
                    dropout_mask=spec.get("dropout_mask", "bits32"))


def _check_sizes(in_features: int, hidden: Sequence[int], num_classes: int) -> list[int]:
    sizes = [int(in_features), *(int(h) for h in hidden), int(num_classes)]
    if any(s < 1 for s in sizes) or num_classes < 2:
        raise ValueError(f"layer widths must be >= 1 (num_classes >= 2), got {sizes}")
    return sizes


def init_mlp_params(sizes: Sequence[int], seed: int, dtype: torch.dtype = torch.float32
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Initial weights of one MLP, drawn from a ``torch.Generator`` seeded with ``seed``.

    Layer ``i`` maps ``sizes[i]`` inputs to ``sizes[i+1]`` outputs; its weight ``W`` has shape
    ``(in, out)`` and, like its bias, is uniform on ``[-1/sqrt(in), 1/sqrt(in)]`` (the
    distribution of PyTorch's default ``nn.Linear`` initialisation). Draws are made in
    float64 on the CPU in layer order (W then b), so they do not depend on the device.

    Returns:
        list of ``(W, b)`` pairs in ``dtype`` on the CPU.
    """
    gen = torch.Generator().manual_seed(int(seed))
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(fan_in, fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        b = (torch.rand(fan_out, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        params.append((w.to(dtype), b.to(dtype)))
    return params


class StackedMLP(nn.Module):
    """S independent ReLU MLP students of one shape, evaluated together.

    Layout (chosen so that every product is one large GEMM or one batched GEMM):

    * ``weights[0]``: ``(S, H1, in)``, the students' first layers stored as ``nn.Linear``
      weights (out, in), so that viewed as ``(S*H1, in)`` they are one matrix and the first
      layer of all S students is a single ``(B, in) x (in, S*H1)`` GEMM forward and a single
      ``(S*H1, B) x (B, in)`` GEMM for its weight gradient (a broadcast matmul over the
      input expanded to ``(S, B, in)`` is several times slower);
    * ``weights[i]``, ``i >= 1``: ``(S, in, out)``, evaluated with ``torch.baddbmm``;
    * ``biases[i]``: ``(S, 1, out)``.

    The students are on the first dimension of every parameter, so slice ``s`` of each is
    student ``s`` (:meth:`student_params` returns them in the ``(in, out)`` layout of
    :func:`init_mlp_params`). Students do not interact: the loss of student ``s`` depends only
    on slice ``s``, so with a loss that is a sum over students each student receives exactly
    its own gradient.

    Args:
        in_features: inputs per example (inputs are flattened).
        hidden: hidden widths, e.g. ``(800, 800)`` or ``(30, 30)``.
        num_classes: outputs.
        seeds: one initialisation seed per student (``S = len(seeds)``); student ``s`` starts
            from ``init_mlp_params(sizes, seeds[s])``.
        dtype: parameter dtype.

    Raises:
        ValueError: on empty ``seeds`` or non-positive widths.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, seeds: Sequence[int],
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if len(seeds) == 0:
            raise ValueError("seeds must name at least one student")
        self.sizes = _check_sizes(in_features, hidden, num_classes)
        self.seeds = [int(s) for s in seeds]
        per_student = [init_mlp_params(self.sizes, s, dtype) for s in self.seeds]
        layers = range(len(self.sizes) - 1)
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([p[i][0].T if i == 0 else p[i][0] for p in per_student]).contiguous())
            for i in layers)
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([p[i][1] for p in per_student]).unsqueeze(1)) for i in layers)

    @property
    def num_students(self) -> int:
        """S, the number of stacked students."""
        return len(self.seeds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(S, B, num_classes)`` for a shared input batch ``(B, ...)``."""
        B, S, out = x.shape[0], self.num_students, self.sizes[1]
        w0, b0 = self.weights[0], self.biases[0]
        # all first layers as one GEMM: (B, in) x (in, S*out) -> (B, S*out), seen as (S, B, out)
        h = F.linear(x.reshape(B, -1), w0.view(S * out, -1), b0.view(S * out)).view(B, S, out).transpose(0, 1)
        for i in range(1, len(self.weights)):
            h = torch.baddbmm(self.biases[i], F.relu(h), self.weights[i])  # (S, B, out_i)
        return h

    def student_params(self, s: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Detached ``[(W (in, out), b (out,)), ...]`` of student ``s`` (for :meth:`MLP.load_params`)."""
        return [((w[s].T if i == 0 else w[s]).detach().clone(memory_format=torch.contiguous_format),
                 b[s, 0].detach().clone())
                for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True))]
