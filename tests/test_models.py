"""kdlib.lab.models: architectures, seeded initialisation, and the stacked students against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from kdlib.lab.models import (
    MLP,
    SmallCNN,
    StackedMLP,
    build_model,
    hinton_student,
    hinton_teacher,
    init_mlp_params,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_hinton_networks_have_the_paper_shapes():
    teacher, student = hinton_teacher(), hinton_student()
    # 784-1200-1200-10 and 784-800-800-10 with biases, counted by hand
    assert n_params(teacher) == 784 * 1200 + 1200 + 1200 * 1200 + 1200 + 1200 * 10 + 10
    assert n_params(student) == 784 * 800 + 800 + 800 * 800 + 800 + 800 * 10 + 10
    drops = [m.p for m in teacher.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.2, 0.5, 0.5]
    assert not any(isinstance(m, nn.Dropout) for m in student.modules())
    x = torch.randn(5, 1, 28, 28)
    teacher.eval()
    assert torch.equal(teacher(x), teacher(x)) and teacher(x).shape == (5, 10)
    assert hinton_student(hidden=30)(x).shape == (5, 10)


def test_mlp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="widths"):
        MLP(784, (0,), 10)
    with pytest.raises(ValueError, match="dropout"):
        MLP(784, (30,), 10, dropout=1.0)
    with pytest.raises(ValueError, match="kind"):
        build_model({"kind": "transformer"}, (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown keys"):
        build_model({"kind": "mlp", "depth": 3}, (1, 8, 8), 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_small_cnn_and_build_model(shape):
    x = torch.randn(2, *shape)
    assert SmallCNN(shape[0], 10, width=8, image_size=shape[-1])(x).shape == (2, 10)
    cnn = build_model({"kind": "cnn", "width": 4, "hidden": 5, "dropout": 0.5}, shape, 10)
    assert cnn(x).shape == (2, 10)
    assert cnn.head[1].in_features == 8 * (shape[-1] // 4) ** 2 and cnn.head[1].out_features == 5
    with pytest.raises(ValueError, match="divisible by 4"):
        SmallCNN(1, 10, image_size=30)
    with pytest.raises(ValueError, match="dropout"):
        SmallCNN(1, 10, dropout=1.0)
    mlp = build_model({"kind": "mlp", "hidden": [7]}, shape, 10)
    assert mlp(x).shape == (2, 10) and mlp.sizes == [math.prod(shape), 7, 10]


def test_init_is_seeded_and_has_the_default_linear_range():
    a, b = init_mlp_params([64, 30, 10], seed=5), init_mlp_params([64, 30, 10], seed=5)
    c = init_mlp_params([64, 30, 10], seed=6)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], c[0][0])
    for (w, bias), fan_in in zip(a, [64, 30], strict=True):
        bound = 1 / math.sqrt(fan_in)
        assert w.abs().max() <= bound and bias.abs().max() <= bound
        assert w.abs().max() > 0.9 * bound  # fills the range (64*30 uniform draws)
    assert a[0][0].shape == (64, 30) and a[1][0].shape == (30, 10)


def numpy_mlp(x: np.ndarray, params: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    return h


def test_stacked_forward_equals_each_student_in_numpy():
    seeds = [3, 1, 4, 1, 5]
    model = StackedMLP(64, (20, 12), 10, seeds, dtype=torch.float64)
    x = torch.randn(9, 1, 8, 8, dtype=torch.float64)
    out = model(x)
    assert out.shape == (5, 9, 10)
    for s, seed in enumerate(seeds):
        params = [(w.numpy(), b.numpy()) for w, b in init_mlp_params([64, 20, 12, 10], seed, torch.float64)]
        np.testing.assert_allclose(out[s].detach().numpy(), numpy_mlp(x.reshape(9, 64).numpy(), params),
                                   rtol=1e-12, atol=1e-12)
    # students with equal seeds start equal; MLP.load_params reproduces a student as a plain module
    assert torch.equal(out[1], out[3])
    single = MLP(64, (20, 12), 10).double().load_params(model.student_params(2))
    torch.testing.assert_close(single(x), out[2], rtol=1e-12, atol=1e-12)


def test_stacked_gradients_are_per_student():
    model = StackedMLP(64, (8,), 10, [0, 1, 2], dtype=torch.float64)
    x = torch.randn(6, 64, dtype=torch.float64)
    out = model(x)
    (out[1] ** 2).sum().backward()  # a loss that involves student 1 only
    for w in model.weights:
        assert w.grad[0].abs().max() == 0 and w.grad[2].abs().max() == 0 and w.grad[1].abs().max() > 0
    with pytest.raises(ValueError, match="seeds"):
        StackedMLP(64, (8,), 10, [])


@pytest.mark.parametrize("mask", ["bits32", "bits8"])
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_dropout_masks_keep_each_element_with_the_documented_probability(mask, p):
    """Both mask methods: an element is kept with probability 1 - p (bits32) or 1 - round(256 p)/256
    (bits8), and a kept element is scaled by one over that, so the layer is unbiased."""
    from kdlib.lab.models import Dropout

    torch.manual_seed(0)
    layer = Dropout(p, mask).train()
    x = torch.ones(1000, 2000)
    y = layer(x)
    dropped = round(p * 256) / 256 if mask == "bits8" else p
    kept = (y != 0).double().mean().item()
    sigma = (dropped * (1 - dropped) / x.numel()) ** 0.5
    assert abs(kept - (1 - dropped)) < 5 * sigma
    assert torch.equal(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - dropped)))
    assert abs(y.double().mean().item() - 1.0) < 5 * sigma / (1 - dropped)
    assert torch.equal(layer.eval()(x), x)


def test_dropout_mask_is_part_of_the_model_spec():
    from kdlib.lab.models import Dropout

    spec = {"kind": "mlp", "hidden": [8], "dropout": 0.5, "dropout_mask": "bits8"}
    masks = {m.mask for m in build_model(spec, (1, 4, 4), 3).modules() if isinstance(m, Dropout)}
    assert masks == {"bits8"}
    cnn = build_model({"kind": "cnn", "width": 2, "hidden": 4, "dropout": 0.1}, (1, 8, 8), 3)
    assert {m.mask for m in cnn.modules() if isinstance(m, Dropout)} == {"bits32"}  # the default
    with pytest.raises(ValueError, match="dropout_mask must be one of bits32, bits8"):
        build_model({**spec, "dropout_mask": "bits4"}, (1, 4, 4), 3)
