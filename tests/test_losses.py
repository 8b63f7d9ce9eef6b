"""Tests of kdlib.losses.DistillationLoss (thesis eq 1.9-1.13 with the Rényi divergence)."""

from __future__ import annotations

import math

import mp_reference as R  # tests/fixtures, put on sys.path by conftest.py
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdlib import DistillationLoss, renyi_divergence_logits, renyi_gradient
from kdlib.losses import LossComponents

INF = math.inf



def batch(B=16, n=10, dtype=torch.float64, seed=0, scale=3.0, S=None):
    g = torch.Generator().manual_seed(seed)
    lead = (B,) if S is None else (S, B)
    z = (torch.randn(*lead, n, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    v = (torch.randn(B, n, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = torch.randint(0, n, (B,), generator=g)
    return z, v, y


def hinton(z, v, y, T, beta):
    """Hinton's loss written with torch's own functions (the α = 1 reference)."""
    soft = F.kl_div(F.log_softmax(z / T, -1), F.softmax(v / T, -1), reduction="batchmean")
    return (1 - beta) * F.cross_entropy(z, y) + beta * T**2 * soft


@pytest.mark.parametrize("T, beta", [(1.0, 0.5), (4.0, 0.9), (20.0, 0.1), (0.5, 1.0), (3.0, 0.0)])
def test_alpha_one_is_hintons_loss(T, beta):
    z, v, y = batch()
    loss = DistillationLoss(alpha=1.0, T=T, beta=beta)(z, v, y)
    ref = hinton(z, v, y, T, beta)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-14)
    (g1,) = torch.autograd.grad(loss, z)
    (g2,) = torch.autograd.grad(ref, z)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-14)
    # float32 as well
    z32, v32 = z.detach().float().requires_grad_(), v.float()
    l32 = DistillationLoss(alpha=1.0, T=T, beta=beta)(z32, v32, y)
    assert l32.dtype == torch.float32
    torch.testing.assert_close(l32, hinton(z32, v32, y, T, beta), rtol=1e-5, atol=1e-6)


def test_components_and_their_mix():
    z, v, y = batch(seed=1)
    for alpha in (0.0, 0.5, 1.0, 2.0, INF):
        loss = DistillationLoss(alpha=alpha, T=4.0, beta=0.7)
        c = loss.components(z, v, y)
        assert isinstance(c, LossComponents)
        torch.testing.assert_close(c.ce, F.cross_entropy(z, y), rtol=1e-13, atol=0)
        torch.testing.assert_close(
            c.soft, 16.0 * renyi_divergence_logits(v, z, alpha, 4.0).mean(), rtol=1e-13, atol=0
        )
        torch.testing.assert_close(c.total, 0.3 * c.ce + 0.7 * c.soft, rtol=1e-13, atol=0)
        torch.testing.assert_close(loss(z, v, y), c.total, rtol=1e-14, atol=0)


def test_beta_extremes():
    z, v, y = batch(seed=2)
    torch.testing.assert_close(DistillationLoss(2.0, 4.0, beta=0.0)(z, v, y), F.cross_entropy(z, y))
    torch.testing.assert_close(
        DistillationLoss(2.0, 4.0, beta=1.0)(z, v, y), 16 * renyi_divergence_logits(v, z, 2.0, 4.0).mean()
    )


def test_sum_reduction_is_the_thesis_sum_eq_1_13():
    """reduction='sum' is eq (1.13) with (1.9) and (1.11) summed over the samples (KL replaced by D_alpha)."""
    z, v, y = batch(B=7, seed=3)
    T, beta, alpha = 3.0, 0.9, 2.0
    lq = torch.log_softmax(z / T, -1)
    lp = torch.log_softmax(v / T, -1)
    d = torch.logsumexp(alpha * lp + (1 - alpha) * lq, -1) / (alpha - 1)  # eq (1.16), plain
    L_ce = -torch.log_softmax(z, -1).gather(-1, y[:, None]).sum()  # eq (1.10)
    L_kd = T**2 * d.sum()  # eq (1.11)
    ref = (1 - beta) * L_ce + beta * L_kd  # eq (1.13)
    got = DistillationLoss(alpha, T, beta, reduction="sum")(z, v, y)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    mean = DistillationLoss(alpha, T, beta)(z, v, y)
    torch.testing.assert_close(mean * 7, got, rtol=1e-13, atol=0)
    rows = DistillationLoss(alpha, T, beta, reduction="none")(z, v, y)
    assert rows.shape == (7,)
    torch.testing.assert_close(rows.sum(), got, rtol=1e-13, atol=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([0.0, 1e-8, 0.5, 1 - 1e-7, 1.0, 1 + 1e-7, 2.0, 10.0, INF]),
    st.sampled_from([0.5, 1.0, 4.0, 50.0]),
    st.floats(0.0, 1.0),
    st.integers(0, 10**6),
)
def test_loss_matches_mpmath(alpha, T, beta, seed):
    z, v, y = batch(B=3, n=4, seed=seed, scale=5.0)
    got = float(DistillationLoss(alpha, T, beta)(z, v, y).detach())
    ref = float(R.distillation_loss(z.tolist(), v.tolist(), y.tolist(), alpha, T, beta))
    assert got == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_stacked_students_with_tensor_hyperparameters():
    """(S, B, n) students against one (B, n) teacher: one alpha, T, beta per student."""
    S, B, n = 5, 8, 6
    z, v, y = batch(B=B, n=n, S=S, seed=4)
    alphas = [0.0, 0.5, 1.0, 2.0, INF]
    temps = [1.0, 2.0, 4.0, 8.0, 0.5]
    betas = [0.9, 0.5, 0.1, 1.0, 0.0]
    col = lambda xs: torch.tensor(xs, dtype=torch.float64).view(S, 1)  # noqa: E731
    stacked = DistillationLoss(col(alphas), col(temps), col(betas), reduction="none")
    rows = stacked(z, v, y)
    assert rows.shape == (S, B)
    (g,) = torch.autograd.grad(rows.mean(-1).sum(), z)
    for s in range(S):
        zs = z[s].detach().requires_grad_()
        single = DistillationLoss(alphas[s], temps[s], betas[s])(zs, v, y)
        torch.testing.assert_close(rows[s].mean(), single, rtol=1e-12, atol=1e-14)
        (gs,) = torch.autograd.grad(single, zs)
        torch.testing.assert_close(g[s], gs, rtol=1e-10, atol=1e-14)
    assert torch.isfinite(g).all()
    # buffers follow .to(device) but not a cast of dtype (which would change their values)
    moved = stacked.to(torch.float32)
    assert moved.T.dtype == torch.float64 and "alpha" in dict(moved.named_buffers())


def test_normalize_by_alpha():
    z, v, y = batch(seed=5)
    for alpha in (0.25, 0.5, 2.0, 7.0):
        a = DistillationLoss(alpha, 4.0, 0.9, normalize_by_alpha=True).components(z, v, y)
        b = DistillationLoss(alpha, 4.0, 0.9).components(z, v, y)
        torch.testing.assert_close(a.soft, b.soft / alpha, rtol=1e-13, atol=0)
        torch.testing.assert_close(a.ce, b.ce, rtol=0, atol=0)
    for bad in (0.0, INF):
        with pytest.raises(ValueError, match=r"alpha must be in \(0, inf\) when normalize_by_alpha=True"):
            DistillationLoss(bad, 4.0, 0.9, normalize_by_alpha=True)
    with pytest.raises(ValueError, match=r"normalize_by_alpha"):
        DistillationLoss(torch.tensor([[1.0], [INF]]), 4.0, 0.9, normalize_by_alpha=True)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("normalize", [False, True])
def test_high_temperature_gradient_of_the_soft_term(alpha, normalize):
    """T^2 D_alpha: gradient -> alpha (z - v) / n per sample for zero-mean logits (eq 1.15 for alpha = 1).

    With normalize_by_alpha the limit is (z - v)/n for every order. The batch mean divides by B.
    """
    B, n = 4, 10
    z, v, y = batch(B=B, n=n, seed=6, scale=1.0)
    z = (z - z.mean(-1, keepdim=True)).detach().requires_grad_()
    v = v - v.mean(-1, keepdim=True)
    errs = []
    for T in (10.0, 100.0, 1000.0, 10000.0):
        loss = DistillationLoss(alpha, T, beta=1.0, normalize_by_alpha=normalize)(z, v, y)
        (g,) = torch.autograd.grad(loss, z)
        limit = (1.0 if normalize else alpha) * (z - v).detach() / (n * B)
        errs.append(float((g - limit).norm() / limit.norm()))
    assert errs[-1] < 1e-3
    for e0, e1 in zip(errs[1:], errs[2:], strict=False):  # from T = 100 on
        assert 0.085 < e1 / e0 < 0.12  # one decade of T, one decade of error: the O(1/T) rate


@pytest.mark.parametrize("alpha", [0.5, 2.0, INF])
def test_loss_gradcheck(alpha):
    z, v, y = batch(B=3, n=5, seed=7)
    loss = DistillationLoss(alpha, 2.0, 0.6)
    assert torch.autograd.gradcheck(lambda z: loss(z, v, y), (z,))


def test_soft_term_gradient_is_renyi_gradient():
    z, v, y = batch(seed=8)
    for alpha in (0.0, 0.5, 2.0, INF):
        loss = DistillationLoss(alpha, 3.0, beta=1.0)(z, v, y)
        (g,) = torch.autograd.grad(loss, z)
        torch.testing.assert_close(
            g, 9.0 * renyi_gradient(v, z, alpha, 3.0) / z.shape[0], rtol=1e-12, atol=1e-15
        )


def test_teacher_gradient_flows_unless_detached():
    z, v, y = batch(seed=9)
    v = v.clone().requires_grad_()
    loss = DistillationLoss(2.0, 4.0, 0.9)(z, v, y)
    gz, gv = torch.autograd.grad(loss, (z, v))
    assert gv.abs().sum() > 0
    # against autograd of the plain formula
    v2 = v.detach().clone().requires_grad_()
    lp, lq = torch.log_softmax(v2 / 4, -1), torch.log_softmax(z.detach() / 4, -1)
    plain = 0.1 * F.cross_entropy(z.detach(), y) + 0.9 * 16 * (torch.logsumexp(2 * lp - lq, -1)).mean()
    (gv2,) = torch.autograd.grad(plain, v2)
    torch.testing.assert_close(gv, gv2, rtol=1e-10, atol=1e-14)


def test_bfloat16_and_float32_inputs():
    z, v, y = batch(seed=10)
    for alpha in (0.5, 1.0, 2.0, INF):
        ref = DistillationLoss(alpha, 4.0, 0.9)(z.detach().bfloat16().double(), v.bfloat16().double(), y)
        zb = z.detach().bfloat16().requires_grad_()
        lb = DistillationLoss(alpha, 4.0, 0.9)(zb, v.bfloat16(), y)
        assert lb.dtype == torch.bfloat16
        assert float(lb.detach()) == pytest.approx(float(ref), rel=2e-2)
        (g,) = torch.autograd.grad(lb, zb)
        assert g.dtype == torch.bfloat16 and torch.isfinite(g.float()).all()


def test_repr_and_validate_flag():
    loss = DistillationLoss(2.0, 4.0, 0.9, validate=False)
    assert "alpha=2" in repr(loss) and "T=4" in repr(loss)
    z, v, y = batch(seed=11)
    torch.testing.assert_close(loss(z, v, y), DistillationLoss(2.0, 4.0, 0.9)(z, v, y), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

Z, V, Y = (t.detach() for t in batch(B=4, n=3, seed=12))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: DistillationLoss(alpha=-1.0), r"alpha must be in \[0, inf\]"),
        (lambda: DistillationLoss(alpha=math.nan), r"alpha must be in \[0, inf\]"),
        (lambda: DistillationLoss(alpha=None), r"alpha must be a number in \[0, inf\]"),
        (lambda: DistillationLoss(T=0.0), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(T=-2.0), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(T=math.inf), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(T=math.nan), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(T=torch.tensor([1.0, 0.0])), r"T must be finite and > 0"),
        (lambda: DistillationLoss(beta=1.5), r"beta must be in \[0, 1\]"),
        (lambda: DistillationLoss(beta=-0.1), r"beta must be in \[0, 1\]"),
        (lambda: DistillationLoss(beta=math.nan), r"beta must be in \[0, 1\]"),
        (lambda: DistillationLoss(beta="x"), r"beta must be a number in \[0, 1\]"),
        (lambda: DistillationLoss(beta="0.5"), r"beta must be a number in \[0, 1\]"),
        (lambda: DistillationLoss(beta=True), r"beta must be a number in \[0, 1\]"),
        (lambda: DistillationLoss(T="4"), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(T=True), r"T must be a finite number > 0"),
        (lambda: DistillationLoss(beta=torch.tensor([0.5, 1.1])), r"beta must be in \[0, 1\]"),
        (lambda: DistillationLoss(reduction="batchmean"), r"reduction must be one of"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "args, match",
    [
        ((Z, V[:, :2], Y), r"same number of classes"),
        ((Z, V[:3], Y), r"broadcastable"),
        ((Z, V, Y[:3]), r"targets must be a number or a tensor broadcastable to the row shape \(4,\)"),
        ((Z, V, Y + 3), r"targets must be class indices in \[0, 3\)"),
        ((Z, V, Y - 5), r"targets must be class indices in \[0, 3\)"),
        ((Z, V, Y.double()), r"targets must be an integer tensor of class indices in \[0, 3\)"),
        ((Z, V, [0, 1, 2, 0]), r"targets must be a torch.Tensor"),
        ((Z.clone().fill_(math.nan), V, Y), r"student_logits must contain only finite"),
        ((Z, V.clone().fill_(-math.inf), Y), r"teacher_logits must contain only finite"),
        ((Z.long(), V, Y), r"student_logits must have a floating dtype"),
        ((Z[0, 0], V, Y), r"student_logits must have at least one dimension|same number of classes"),
    ],
)
def test_call_errors(args, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(2.0, 4.0, 0.9)(*args)


def test_tensor_hyperparameter_must_broadcast_to_rows():
    loss = DistillationLoss(torch.ones(3, 1), 4.0, 0.9)
    with pytest.raises(
        ValueError, match=r"alpha .*broadcast.*row shape \(4,\).*\(3, 1\)"
    ):
        loss(Z, V, Y)


# ---------------------------------------------------------------------------------------------
# Traps of issue 13 (item 5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double", "float"])
def test_dtype_casts_of_the_module_keep_the_hyperparameters(cast):
    """.half() turned alpha = 1e5 into inf and .bfloat16() beta = 0.9 into 0.8984."""
    alpha, T, beta = torch.tensor(1e5), torch.tensor(4.0), torch.tensor(0.9)
    module = DistillationLoss(alpha=alpha, T=T, beta=beta)
    z, v, y = batch(dtype=torch.float32)
    want = module(z, v, y)
    cast_module = getattr(module, cast)()
    for name, value in (("alpha", alpha), ("T", T), ("beta", beta)):
        got = getattr(cast_module, name)
        assert got.dtype == torch.float32 and torch.equal(got, value), (name, got)
    assert torch.equal(cast_module(z, v, y), want)
    assert module.to(torch.float16).alpha.item() == 1e5  # .to(dtype) as well


@pytest.mark.parametrize("name", ["T", "beta"])
def test_a_hyperparameter_that_requires_grad_is_refused_not_detached(name):
    """The module stores tensor hyperparameters as buffers, which silently cut the gradient."""
    value = torch.tensor(4.0 if name == "T" else 0.5, requires_grad=True)
    with pytest.raises(ValueError, match=f"{name} must not require grad"):
        DistillationLoss(**{name: value})
