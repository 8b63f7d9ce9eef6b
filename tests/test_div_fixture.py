"""Regression against the committed fixture of independently computed values (mpmath, 50 digits).

The fixture ``tests/fixtures/divergence_fixture.json`` is written by
``tests/fixtures/make_divergence_fixture.py`` without kdlib. Tolerances are rounding-level for
float64 (scaled by the conditioning ``max|logits| / T`` of the log-softmax), so any silent change
of a divergence, a gradient or the loss fails here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from kdlib import DistillationLoss, kl_divergence, renyi_divergence, renyi_divergence_logits, renyi_gradient

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "divergence_fixture.json").read_text())
EPS = torch.finfo(torch.float64).eps



def num(s) -> float:
    return math.inf if s == "inf" else float(s)


def check(got: float, ref: float, atol: float, rel: float = 1e-12) -> bool:
    if math.isinf(ref):
        return got == ref
    return math.isfinite(got) and abs(got - ref) <= rel * abs(ref) + atol


def test_fixture_is_complete():
    assert len(FIXTURE["probabilities"]) >= 9 and len(FIXTURE["logits"]) >= 6 and len(FIXTURE["loss"]) >= 8
    assert any(v == "inf" for case in FIXTURE["probabilities"] for v in case["values"])


@pytest.mark.parametrize("case", FIXTURE["probabilities"], ids=lambda c: f"n{len(c['p'])}")
def test_probability_values(case):
    p = torch.tensor(case["p"], dtype=torch.float64)
    q = torch.tensor(case["q"], dtype=torch.float64)
    for a, v in zip(case["orders"], case["values"], strict=True):
        a = num(a)
        got = float(renyi_divergence(p, q, a))
        assert check(got, num(v), atol=1e-15), (a, got, v)
        if a == 1.0:
            assert check(float(kl_divergence(p, q)), num(v), atol=1e-15)


@pytest.mark.parametrize("case", FIXTURE["logits"], ids=lambda c: f"n{len(c['teacher'])}-T{c['T']}")
def test_logits_values_and_gradients(case):
    v = torch.tensor(case["teacher"], dtype=torch.float64)
    z = torch.tensor(case["student"], dtype=torch.float64, requires_grad=True)
    T = case["T"]
    scale = 1 + max(abs(x) for x in case["teacher"] + case["student"]) / T
    for a, val, grad in zip(case["orders"], case["values"], case["grads"], strict=True):
        a = num(a)
        d = renyi_divergence_logits(v, z, a, T)
        ref = num(val)
        assert check(float(d.detach()), ref, atol=16 * EPS * scale * (1 + abs(ref))), (a, float(d), val)
        g = renyi_gradient(v, z.detach(), a, T)
        (ga,) = torch.autograd.grad(d, z)
        gref = torch.tensor([num(x) for x in grad], dtype=torch.float64)
        amp = max(1.0, a) if math.isfinite(a) else 1.0
        tol = 32 * EPS * scale * amp / T
        assert (g - gref).abs().max() <= tol, (a, g, gref)
        assert (ga - gref).abs().max() <= tol, (a, ga, gref)


@pytest.mark.parametrize("case", FIXTURE["loss"], ids=lambda c: f"a{c['alpha']}-T{c['T']}-b{c['beta']}")
def test_loss_values(case):
    loss = DistillationLoss(
        num(case["alpha"]), case["T"], case["beta"], normalize_by_alpha=case["normalize_by_alpha"]
    )
    z = torch.tensor(case["student"], dtype=torch.float64)
    v = torch.tensor(case["teacher"], dtype=torch.float64)
    y = torch.tensor(case["targets"])
    got = float(loss(z, v, y))
    assert check(got, num(case["value"]), atol=1e-14), (got, case["value"])
