"""The engine on a CUDA GPU against the CPU: the loss, the stacked training and the dropout masks.

These tests need a CUDA device and skip without one (no GPU on this project's CI machines). Run them
with ``make gpu-check`` on a machine that has one; its output is kept under ``benchmarks/runs/``.
``$KDLIB_TEST_GPU`` names the device to test (default ``cuda``; ``cpu`` runs them as a dry run of the
tests themselves, comparing the CPU with itself).
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import kdlib.lab.config as C
import kdlib.lab.train as E
from kdlib.functional import distillation_loss
from kdlib.lab.data import load_dataset
from kdlib.lab.models import Dropout, StackedMLP

GPU = torch.device(os.environ.get("KDLIB_TEST_GPU", "cuda"))
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(
    GPU.type == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU: run `make gpu-check` on a machine with one")]

SPECS = [C.StudentSpec(alpha=1.0, T=4.0, beta=0.9, seed=0, hidden=(16, 16)),
         C.StudentSpec(alpha=0.25, T=2.0, beta=1.0, seed=0, hidden=(16, 16), normalize_by_alpha=True),
         C.StudentSpec(alpha=math.inf, T=8.0, beta=0.9, seed=0, hidden=(16, 16)),
         C.StudentSpec(alpha=4.0, T=1.0, beta=0.5, seed=0, hidden=(16, 16)),
         C.StudentSpec(alpha=1.0, T=2.0, beta=0.9, seed=0, hidden=(16, 16), reverse=True)]


def test_the_mixed_stack_loss_on_the_gpu_equals_the_cpu():
    g = torch.Generator().manual_seed(1)
    S, B, n = len(SPECS), 32, 10
    z = torch.randn(S, B, n, generator=g, dtype=torch.float64) * 3
    v, y = torch.randn(B, n, generator=g, dtype=torch.float64) * 3, torch.randint(0, n, (B,), generator=g)
    kw = {"alpha": tuple(s.alpha for s in SPECS), "reverse": tuple(s.reverse for s in SPECS),
          "T": torch.tensor([[s.T] for s in SPECS], dtype=torch.float64),
          "normalize_by_alpha": torch.tensor([[s.normalize_by_alpha] for s in SPECS]), "reduction": "none"}
    out = []
    for dev in ("cpu", GPU):
        zz = z.to(dev).requires_grad_()
        loss = distillation_loss(zz, v.to(dev), y.to(dev), **{k: x.to(dev) if torch.is_tensor(x) else x
                                                             for k, x in kw.items()}, beta=0.8)
        (grad,) = torch.autograd.grad(loss.sum(), zz)
        out.append((loss.detach().cpu(), grad.cpu()))
    (cpu_loss, cpu_grad), (gpu_loss, gpu_grad) = out
    torch.testing.assert_close(gpu_loss, cpu_loss, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gpu_grad, cpu_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("lr_scale", [None, [1.0, 0.5, 2.0, 1.0, 0.5]])
def test_stacked_training_on_the_gpu_equals_the_cpu(lr_scale):
    s = load_dataset("digits")
    x, y = s.x_train[:256].double(), s.y_train[:256]
    teacher = 0.5 * x.reshape(256, 64) @ torch.randn(64, 10, generator=torch.Generator().manual_seed(9),
                                                      dtype=torch.float64)
    cfg = C.TrainConfig(epochs=2, batch_size=32, lr=0.05, warmup_steps=3)
    params = []
    for dev in ("cpu", GPU):
        model = StackedMLP(64, (16, 16), 10, [s.seed for s in SPECS], dtype=torch.float64).to(dev)
        E.fit(model, x.to(dev), E.distillation_objective(y.to(dev), teacher.to(dev), SPECS), cfg, data_seed=3,
              lr_scale=lr_scale)
        params.append([p.detach().cpu() for p in model.parameters()])
    for a, b in zip(*params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


@pytest.mark.parametrize("mask", ["bits32", "bits8"])
def test_dropout_masks_on_the_gpu_keep_the_documented_share(mask):
    torch.manual_seed(0)
    x = torch.ones(1000, 2000, device=GPU, dtype=torch.bfloat16)
    y = Dropout(0.3, mask).train()(x)
    dropped = round(0.3 * 256) / 256 if mask == "bits8" else 0.3
    kept = (y != 0).double().mean().item()
    assert abs(kept - (1 - dropped)) < 5 * (dropped * (1 - dropped) / x.numel()) ** 0.5
