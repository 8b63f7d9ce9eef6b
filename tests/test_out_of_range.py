"""Beyond the documented range: the correct limit or a ValueError naming the parameter, never NaN.

``softmax_t`` gave NaN where ``z / T`` overflows (logits 3e38 at ``T = 1e-3``, any logits at
``T = 1e-320``); the logits form of the divergence gave NaN for logits 3e38 at ``T = 1e-3`` in
float32 and 1e300 at ``T = 1e-10`` in float64, and NaN gradients for float32 orders beyond
float32's range. Odd arguments raised ``OverflowError`` (``10**400``) or an ambiguous-truth
``RuntimeError`` (a bool tensor as a flag), or lost a gradient silently (``T`` requiring grad).
The documented range itself is checked against mpmath in test_divergences.py and test_softmax.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from kdlib import DistillationLoss, renyi_divergence, renyi_divergence_logits, renyi_gradient, softmax_t
from kdlib.functional import distillation_loss

HUGE = 10**400  # a Python int beyond float's range


# ----------------------------------------------------------------------------- softmax_t: the limit

@pytest.mark.parametrize("dtype, z, T, want", [
    (torch.float32, [3e38, 0.0, -1.0], 1e-3, [1.0, 0.0, 0.0]),
    (torch.float64, [1.0, 0.0, 2.0], 1e-320, [0.0, 0.0, 1.0]),
    (torch.float32, [1.0, 0.0, 2.0], 1e-320, [0.0, 0.0, 1.0]),  # T rounds to 0 in float32
    (torch.float32, [2.0, 0.0, 2.0], 1e-320, [0.5, 0.0, 0.5]),  # tied maxima share the mass
    (torch.float16, [6e4, 0.0, -6e4], 1e-36, [1.0, 0.0, 0.0]),  # 6e40 overflows float32 too
    (torch.float64, [1e300, -1e300, 0.0], 1e-10, [1.0, 0.0, 0.0]),
])
def test_softmax_t_where_z_over_T_overflows_is_the_arg_max_limit(dtype, z, T, want):
    p = softmax_t(torch.tensor(z, dtype=dtype), T)
    assert p.dtype == dtype and p.tolist() == want


def test_softmax_t_beyond_overflow_has_finite_gradients():
    z = torch.tensor([[1.0, 0.0, 2.0], [3e38, 0.0, -1.0]], requires_grad=True)
    for T in (1e-320, 1e-3):
        (g,) = torch.autograd.grad(softmax_t(z, T)[:, 0].sum(), z)
        assert torch.isfinite(g).all(), (T, g)


def test_softmax_t_refuses_a_temperature_that_requires_grad():
    z = torch.tensor([1.0, 2.0])
    with pytest.raises(ValueError, match="T must not require grad here: it is used as a number"):
        softmax_t(z, torch.tensor(2.0, requires_grad=True))
    assert torch.equal(softmax_t(z, torch.tensor(2.0)), softmax_t(z, 2.0))  # without grad: a number
    with pytest.raises(ValueError, match="T must be a finite number > 0, got tensor"):
        softmax_t(z, torch.tensor([2.0, 3.0]))


# ----------------------------------------------------------------------------- the divergence: refused

OVERFLOWS = [
    (torch.float32, 3e38, 1e-3, "float32"),
    (torch.float64, 1e300, 1e-10, "float64"),
    (torch.float32, 3e38, 1.0, "float32"),  # 3e38 - (-3e38) overflows float32 at any T
]


@pytest.mark.parametrize("dtype, big, T, name", OVERFLOWS)
def test_logits_whose_tempered_range_overflows_are_refused_not_nan(dtype, big, T, name):
    t = torch.tensor([[big, 0.0, -big], [1.0, 2.0, 3.0]], dtype=dtype)
    s = torch.tensor([[0.0, big, 1.0], [3.0, 2.0, 1.0]], dtype=dtype)
    for f in (renyi_divergence_logits, renyi_gradient):
        for alpha in (0.5, 1.0, 2.0, math.inf, torch.tensor([[2.0], [0.5]])[:, 0]):
            with pytest.raises(ValueError, match=f"teacher_logits / T overflows {name}: a row of "
                                                 "teacher_logits spans .*the documented range is"):
                f(t, s, alpha, T)
        with pytest.raises(ValueError, match=f"teacher_logits / T overflows {name}"):
            f(t, s, 1.0, torch.tensor([T, 1.0], dtype=dtype))
    y = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=f"student_logits / T overflows {name}"):
        distillation_loss(s, t, y, alpha=1.0, T=T)
    with pytest.raises(ValueError, match=f"student_logits / T overflows {name}"):
        DistillationLoss(2.0, T)(s, t, y)
    assert torch.isnan(renyi_divergence_logits(t, s, 1.0, T, validate=False)).any()  # what was returned


def test_the_loss_refuses_logits_whose_t_squared_soft_term_would_overflow():
    """T**2 D: at T = 1000 the soft term of logits spanning 1e35 exceeds float32 (0 * inf gave NaN)."""
    z = torch.tensor([[1e35, 0.0, -1.0], [0.0, 1.0, 2.0]])
    v = z.flip(-1)
    assert torch.isfinite(renyi_divergence_logits(v, z, 1.0, 1000.0)).all()  # the divergence is fine
    with pytest.raises(ValueError, match=r"times max\(1, 1/T, T\)"):
        distillation_loss(z, v, torch.tensor([0, 1]), alpha=1.0, T=1000.0, beta=0.0)


def test_a_large_order_scales_the_allowed_range():
    """alpha log p is formed unscaled for orders up to 1e8: 1e36 * 50 overflows float32."""
    t = torch.tensor([[1e36, 0.0, -1.0]])
    s = t.flip(-1)
    assert torch.isfinite(renyi_divergence_logits(t, s, 1.5, 1.0)).all()
    with pytest.raises(ValueError, match="times alpha = 50"):
        renyi_divergence_logits(t, s, 50.0, 1.0)


@pytest.mark.parametrize("alpha", [1e39, 1e300])
def test_a_float32_order_beyond_float32s_range_is_the_order_infinity(alpha):
    """Rounded to inf inside the kernels but taken as finite, it gave NaN teacher gradients and a
    student gradient whose rows did not sum to 0; D_alpha equals D_inf to float32's precision."""
    t = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, -1.0]], requires_grad=True)
    s = torch.tensor([[3.0, 2.0, 1.0], [1.0, 1.0, 1.0]], requires_grad=True)
    d = renyi_divergence_logits(t, s, alpha, 2.0)
    gt, gs = torch.autograd.grad(d.sum(), (t, s))
    t_inf, s_inf = t.detach().clone().requires_grad_(), s.detach().clone().requires_grad_()
    d_inf = renyi_divergence_logits(t_inf, s_inf, math.inf, 2.0)
    want_t, want_s = torch.autograd.grad(d_inf.sum(), (t_inf, s_inf))
    assert torch.equal(d, d_inf) and torch.equal(gt, want_t) and torch.equal(gs, want_s)
    assert torch.equal(renyi_gradient(t, s, alpha, 2.0), renyi_gradient(t, s, math.inf, 2.0))


# ----------------------------------------------------------------------------- odd arguments

@pytest.mark.parametrize("call, name", [
    (lambda: renyi_divergence_logits(torch.zeros(3), torch.zeros(3), HUGE), "alpha"),
    (lambda: renyi_divergence_logits(torch.zeros(3), torch.zeros(3), 1.0, HUGE), "T"),
    (lambda: renyi_gradient(torch.zeros(3), torch.zeros(3), HUGE), "alpha"),
    (lambda: renyi_divergence(torch.ones(3) / 3, torch.ones(3) / 3, HUGE), "alpha"),
    (lambda: softmax_t(torch.zeros(3), HUGE), "T"),
    (lambda: distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long),
                               beta=HUGE), "beta"),
    (lambda: DistillationLoss(HUGE), "alpha"),
    (lambda: DistillationLoss(1.0, HUGE), "T"),
    (lambda: DistillationLoss(1.0, 2.0, HUGE), "beta"),
])
def test_a_number_beyond_floats_range_is_a_value_error_naming_it(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must be .*\(401 characters\)"):
        call()


@pytest.mark.parametrize("kwargs, message", [
    ({"normalize_by_alpha": torch.tensor([True, False])},
     "normalize_by_alpha must be a bool .*pass a bool tensor to kdlib.functional.distillation_loss"),
    ({"normalize_by_alpha": 1}, "normalize_by_alpha must be a bool"),
    ({"validate": torch.tensor([True, False])}, "validate must be a bool"),
])
def test_the_module_refuses_flags_that_are_not_bools(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistillationLoss(2.0, 4.0, **kwargs)


def test_the_functions_refuse_a_validate_that_is_not_a_bool():
    z, flag = torch.zeros(2, 3), torch.tensor([True, False])
    for call in (lambda: renyi_divergence_logits(z, z, 1.0, validate=flag),
                 lambda: renyi_gradient(z, z, 1.0, validate=flag),
                 lambda: renyi_divergence(z.softmax(-1), z.softmax(-1), 1.0, validate=flag),
                 lambda: distillation_loss(z, z, torch.zeros(2, dtype=torch.long), validate=flag)):
        with pytest.raises(ValueError, match="validate must be a bool, got Tensor"):
            call()
