"""kdlib.functional: the one implementation of the distillation loss, for one model and for a stack."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlib import DistillationLoss
from kdlib.functional import distillation_loss

INF = math.inf
G = torch.Generator().manual_seed(3)
S, B, C = 5, 7, 10
Z = torch.randn(S, B, C, generator=G, dtype=torch.float64) * 3  # five stacked students
V = torch.randn(B, C, generator=G, dtype=torch.float64) * 3     # one teacher
Y = torch.randint(0, C, (B,), generator=G)
HYPER = [  # (alpha, T, beta, normalize_by_alpha) per student
    (1.0, 4.0, 0.9, False), (0.5, 2.0, 1.0, True), (INF, 8.0, 0.9, False), (2.0, 1.0, 0.5, True),
    (4.0, 20.0, 0.0, False),
]


def column(i, dtype=torch.float64):
    return torch.tensor([h[i] for h in HYPER], dtype=dtype).unsqueeze(1)


def test_stacked_call_equals_one_call_per_student():
    got = distillation_loss(Z, V, Y, alpha=column(0), T=column(1), beta=column(2),
                            normalize_by_alpha=column(3, torch.bool), reduction="none").mean(-1)
    assert got.shape == (S,)
    for s, (alpha, T, beta, norm) in enumerate(HYPER):
        one = distillation_loss(Z[s], V, Y, alpha=alpha, T=T, beta=beta, normalize_by_alpha=norm)
        torch.testing.assert_close(got[s], one, rtol=1e-12, atol=1e-12)
        module = DistillationLoss(alpha, T, beta, normalize_by_alpha=norm)
        torch.testing.assert_close(module(Z[s], V, Y), one, rtol=0, atol=0)


def test_kl_is_hintons_loss_and_components_add_up():
    z = Z[0]
    by_hand = 0.1 * F.cross_entropy(z, Y) + 0.9 * 16 * F.kl_div(
        F.log_softmax(z / 4, -1), F.softmax(V / 4, -1), reduction="batchmean")
    torch.testing.assert_close(distillation_loss(z, V, Y, alpha=1.0, T=4.0, beta=0.9), by_hand,
                               rtol=1e-12, atol=1e-12)
    total, ce, soft = distillation_loss(z, V, Y, alpha=2.0, T=3.0, beta=0.25, reduction="sum",
                                       return_components=True)
    torch.testing.assert_close(total, 0.75 * ce + 0.25 * soft, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ce, F.cross_entropy(z, Y, reduction="sum"), rtol=1e-12, atol=1e-12)


def test_normalize_by_alpha_divides_the_soft_term_only_where_set():
    norm = torch.tensor([[True], [False]])
    alpha = torch.tensor([[4.0], [4.0]], dtype=torch.float64)
    got = distillation_loss(Z[:2], V, Y, alpha=alpha, T=2.0, beta=1.0, normalize_by_alpha=norm,
                            reduction="none").mean(-1)
    plain = distillation_loss(Z[:2], V, Y, alpha=4.0, T=2.0, beta=1.0, reduction="none").mean(-1)
    torch.testing.assert_close(got, plain * torch.tensor([0.25, 1.0], dtype=torch.float64))


def test_reverse_kl_is_the_kl_of_the_student_from_the_teacher_with_autograd_gradient():
    z = Z[0].clone().requires_grad_(True)
    got = distillation_loss(z, V, Y, alpha=1.0, T=4.0, beta=0.7, reverse=True)
    q = F.log_softmax(z / 4, -1)  # the student's tempered log-probabilities: the first argument now
    by_hand = 0.3 * F.cross_entropy(z, Y) + 0.7 * 16 * F.kl_div(
        F.log_softmax(V / 4, -1), q, reduction="batchmean", log_target=True)
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(got, z)
    (g_hand,) = torch.autograd.grad(by_hand, z)
    torch.testing.assert_close(g, g_hand, rtol=1e-10, atol=1e-12)
    forward = distillation_loss(Z[0], V, Y, alpha=1.0, T=4.0, beta=0.7)
    assert not torch.allclose(got.detach(), forward), "KL is not symmetric: the two directions differ"


@pytest.mark.parametrize("alpha", [0.5, 2.0, INF])
def test_reverse_renyi_swaps_the_arguments_of_the_divergence(alpha):
    from kdlib.divergences import renyi_divergence_logits
    z = Z[1].clone().requires_grad_(True)
    got = distillation_loss(z, V, Y, alpha=alpha, T=2.0, beta=1.0, reverse=True, reduction="none")
    want = 4.0 * renyi_divergence_logits(z.detach(), V, alpha, 2.0)
    torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-12)
    # the gradient reaches the student through the divergence's first argument: compare with a
    # finite difference of the loss in one logit
    (g,) = torch.autograd.grad(got.sum(), z)
    e = torch.zeros_like(z)
    e[0, 3] = 1e-6
    fd = (distillation_loss(z.detach() + e, V, Y, alpha=alpha, T=2.0, beta=1.0, reverse=True, reduction="sum")
          - distillation_loss(z.detach() - e, V, Y, alpha=alpha, T=2.0, beta=1.0, reverse=True,
                              reduction="sum")) / 2e-6
    torch.testing.assert_close(g[0, 3], fd, rtol=1e-5, atol=1e-8)


def test_reverse_in_the_module_equals_the_function():
    module = DistillationLoss(1.0, 3.0, 0.5, reverse=True)
    assert "reverse=True" in repr(module)
    torch.testing.assert_close(module(Z[2], V, Y), distillation_loss(Z[2], V, Y, alpha=1.0, T=3.0, beta=0.5,
                                                                     reverse=True), rtol=0, atol=0)
    with pytest.raises(ValueError, match="reverse must be a bool"):
        DistillationLoss(1.0, 3.0, 0.5, reverse=1)


@pytest.mark.parametrize("kwargs,match", [
    ({"reduction": "batchmean"}, "reduction must be one of"),
    ({"reverse": torch.tensor(True)}, "reverse must be a bool"),
    ({"alpha": column(0), "normalize_by_alpha": torch.ones(S, 1, dtype=torch.bool)},
     "alpha must be in \\(0, inf\\)"),
    ({"alpha": 0.0, "normalize_by_alpha": True}, "alpha must be in \\(0, inf\\)"),
    ({"normalize_by_alpha": torch.ones(S, 1)}, "normalize_by_alpha as a tensor must have dtype torch.bool"),
    ({"normalize_by_alpha": "yes"}, "normalize_by_alpha must be a bool"),
    ({"beta": torch.full((3, 1), 0.5, dtype=torch.float64)}, "beta .* must broadcast to the row shape"),
    ({"beta": 1.5}, "beta must be in \\[0, 1\\]"),
    ({"T": -1.0}, "T must be"),
    ({"alpha": -2.0}, "alpha must be in \\[0, inf\\]"),
])
def test_bad_arguments_name_the_parameter(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(Z, V, Y, **kwargs)


def test_gradient_flows_to_each_student_only_through_its_own_loss():
    z = Z.clone().requires_grad_(True)
    losses = distillation_loss(z, V, Y, alpha=column(0), T=column(1), beta=column(2),
                               normalize_by_alpha=column(3, torch.bool), reduction="none").mean(-1)
    losses[1].backward()
    assert z.grad[1].abs().sum() > 0 and z.grad[[0, 2, 3, 4]].abs().sum() == 0


# ---------------------------------------------------------------------------------------------
# Traps of issue 13 (item 5): each computed correctly or refused with a ValueError naming it
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_narrow_integer_targets_are_accepted(dtype):
    """int32/int16 targets passed validation and then failed inside cross_entropy."""
    want = distillation_loss(Z, V, Y, alpha=2.0, reduction="none")
    torch.testing.assert_close(distillation_loss(Z, V, Y.to(dtype), alpha=2.0, reduction="none"), want,
                               rtol=0, atol=0)
    torch.testing.assert_close(DistillationLoss(2.0)(Z[0], V, Y.to(dtype)), DistillationLoss(2.0)(Z[0], V, Y))


def test_a_teacher_that_would_enlarge_the_students_rows_is_refused():
    """A student (B, 1, C) against a teacher (B, C) broadcast to B x B rows with the labels on the
    wrong axis; a teacher (B, C) against stacked students (S, B, C) stays the supported stack."""
    with pytest.raises(ValueError, match=r"teacher_logits .* must broadcast to the student's rows"):
        distillation_loss(Z[0].unsqueeze(1), V, Y)
    with pytest.raises(ValueError, match=r"teacher_logits .* must broadcast to the student's rows"):
        DistillationLoss()(Z[0], V.expand(S, B, C), Y)  # one student against a stack of teachers
    assert distillation_loss(Z, V, Y, reduction="none").shape == (S, B)


@pytest.mark.parametrize("dtype,alpha", [(torch.float64, 1e-310), (torch.float32, 1e-40),
                                         (torch.float32, 1e-39)])
def test_normalize_by_alpha_refuses_subnormal_orders(dtype, alpha):
    """A subnormal order divided the soft term into NaN."""
    with pytest.raises(ValueError, match="alpha must be at least"):
        distillation_loss(Z.to(dtype), V.to(dtype), Y, alpha=alpha, normalize_by_alpha=True)
    a = torch.full((S, 1), alpha, dtype=torch.float64)
    with pytest.raises(ValueError, match="alpha must be at least"):
        distillation_loss(Z.to(dtype), V.to(dtype), Y, alpha=a,
                          normalize_by_alpha=torch.ones(S, 1, dtype=torch.bool))
    # the smallest normal order is computed: the soft term is D_alpha / alpha ~ T^2 KL(Q || P)
    tiny = torch.finfo(dtype).tiny
    z, v = Z.to(dtype), V.to(dtype)
    got = distillation_loss(z, v, Y, alpha=tiny, normalize_by_alpha=True, reduction="none")
    near = distillation_loss(z, v, Y, alpha=1e-8, normalize_by_alpha=True, reduction="none")
    torch.testing.assert_close(got, near, rtol=1e-6, atol=1e-6)


def test_meta_tensors_raise_value_error_naming_the_argument():
    meta = torch.empty(B, C, device="meta")
    with pytest.raises(ValueError, match="student_logits is a meta tensor"):
        distillation_loss(meta, V.float(), Y)
    with pytest.raises(ValueError, match="teacher_logits is a meta tensor"):
        distillation_loss(Z[0].float(), meta, Y)
    with pytest.raises(ValueError, match="targets is a meta tensor"):
        distillation_loss(Z[0], V, torch.empty(B, dtype=torch.int64, device="meta"))
    with pytest.raises(ValueError, match="T is a meta tensor"):
        distillation_loss(Z, V, Y, T=torch.empty(S, 1, device="meta"))
    with pytest.raises(ValueError, match="DistillationLoss|alpha is a meta tensor"):
        DistillationLoss(alpha=torch.empty(S, 1, device="meta"))


def test_a_temperature_that_requires_grad_receives_its_gradient():
    T = torch.full((S, 1), 3.0, dtype=torch.float64, requires_grad=True)
    distillation_loss(Z, V, Y, alpha=2.0, T=T, reduction="none").sum().backward()
    assert T.grad is not None and torch.isfinite(T.grad).all() and (T.grad != 0).all()


def test_a_tuple_of_orders_equals_the_tensor_of_orders():
    """The engine's form (one order per stacked student as a tuple) against the tensor form, which
    evaluates every order's formula on every row: the same loss and gradient, with the division by
    alpha per student."""
    g = torch.Generator().manual_seed(5)
    orders = (1.0, 0.25, math.inf, 2.0, 0.25, 4.0)
    S, B, n = len(orders), 9, 7
    z = (torch.randn(S, B, n, generator=g, dtype=torch.float64) * 3).requires_grad_()
    v, y = torch.randn(B, n, generator=g, dtype=torch.float64) * 3, torch.randint(0, n, (B,), generator=g)
    hyper = {"T": torch.tensor([[1.0], [2.0], [4.0], [8.0], [2.0], [3.0]], dtype=torch.float64),
             "beta": torch.full((S, 1), 0.7, dtype=torch.float64),
             "normalize_by_alpha": torch.tensor([[False], [True], [False], [True], [False], [False]]),
             "reduction": "none"}
    as_tuple = distillation_loss(z, v, y, alpha=orders, **hyper)
    column = torch.tensor(orders, dtype=torch.float64).view(S, 1)
    as_tensor = distillation_loss(z, v, y, alpha=column, **hyper)
    torch.testing.assert_close(as_tuple, as_tensor, rtol=1e-12, atol=1e-14)
    (g1,) = torch.autograd.grad(as_tuple.sum(), z)
    (g2,) = torch.autograd.grad(as_tensor.sum(), z)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="normalize_by_alpha"):
        distillation_loss(z, v, y, alpha=orders, T=2.0, normalize_by_alpha=True)  # inf cannot be divided by


def test_a_stack_mixing_directions_equals_one_call_per_direction():
    """reverse as one flag per stacked student (one evaluation for forward and reverse rows, each row's
    gradient on its student's side only) against separate forward and reverse calls."""
    g = torch.Generator().manual_seed(6)
    orders, reverse = (1.0, 2.0, 1.0, 0.5, math.inf), (False, False, True, True, False)
    S, B, n = len(orders), 8, 6
    z = (torch.randn(S, B, n, generator=g, dtype=torch.float64) * 2).requires_grad_()
    v, y = torch.randn(B, n, generator=g, dtype=torch.float64) * 3, torch.randint(0, n, (B,), generator=g)
    T = torch.tensor([[1.0], [2.0], [4.0], [3.0], [2.0]], dtype=torch.float64)
    mixed = distillation_loss(z, v, y, alpha=orders, reverse=reverse, T=T, beta=0.8, reduction="none")
    (grad,) = torch.autograd.grad(mixed.sum(), z)
    for s, (a, rev) in enumerate(zip(orders, reverse, strict=True)):
        zs = z[s].detach().clone().requires_grad_()
        alone = distillation_loss(zs, v, y, alpha=a, reverse=rev, T=float(T[s]), beta=0.8, reduction="none")
        (gs,) = torch.autograd.grad(alone.sum(), zs)
        torch.testing.assert_close(mixed[s], alone, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad[s], gs, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="one flag per index"):
        distillation_loss(z, v, y, alpha=orders, reverse=reverse[:2], T=T)
    with pytest.raises(ValueError, match="must hold bools"):
        distillation_loss(z, v, y, alpha=orders, reverse=(0, 1, 0, 1, 0), T=T)
