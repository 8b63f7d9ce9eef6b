"""kdlib.softmax_t, the temperature softmax of thesis eq (1.3): values, properties, limits, bad input.

Expected values come from independent computations: numpy/scipy in float64 and mpmath at 30 digits,
never from kdlib itself.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax as scipy_softmax

from kdlib import softmax_t

THESIS_LOGITS = (5.4, 0.2, -1.3)  # horse, zebra, car (thesis Figure 1.1)


def _mp_softmax(z, T) -> list[float]:
    """eq (1.3) in 30-digit arithmetic."""
    with mpmath.workdps(30):
        w = [mpmath.exp(mpmath.mpf(str(v)) / mpmath.mpf(str(T))) for v in z]
        s = mpmath.fsum(w)
        return [float(x / s) for x in w]


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_thesis_example_matches_high_precision(T):
    p = softmax_t(torch.tensor(THESIS_LOGITS, dtype=torch.float64), T)
    np.testing.assert_allclose(p.numpy(), _mp_softmax(THESIS_LOGITS, T), rtol=1e-14, atol=0)


def test_thesis_example_quoted_numbers():
    p1 = softmax_t(torch.tensor(THESIS_LOGITS, dtype=torch.float64), 1.0)
    p4 = softmax_t(torch.tensor(THESIS_LOGITS, dtype=torch.float64), 4.0)
    assert p1[0] > 0.99  # "highly confident ... horse (> 0.99)"
    np.testing.assert_allclose(p4.numpy(), [0.685, 0.187, 0.128], atol=5e-4)


@pytest.mark.parametrize("shape", [(3,), (4, 5), (2, 3, 7)])
@pytest.mark.parametrize("T", [0.1, 1.0, 4.0, 100.0])
def test_matches_scipy_on_batches(shape, T):
    z = np.random.default_rng(0).normal(scale=3.0, size=shape)
    p = softmax_t(torch.from_numpy(z), T)
    assert p.shape == z.shape
    np.testing.assert_allclose(p.numpy(), scipy_softmax(z / T, axis=-1), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_kept(dtype):
    p = softmax_t(torch.tensor([[1.0, 2.0, 3.0]], dtype=dtype), 2.0)
    assert p.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-15
    np.testing.assert_allclose(p.double().numpy(), [_mp_softmax((1, 2, 3), 2.0)], rtol=tol)


def test_number_types_for_T_are_accepted():
    z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    expected = _mp_softmax((0.5, -1.0, 2.0), 3)
    for T in (3, 3.0, np.float64(3.0), np.int64(3)):
        np.testing.assert_allclose(softmax_t(z, T).numpy(), expected, rtol=1e-14)


def test_default_temperature_is_one():
    z = torch.tensor([0.3, 1.7, -2.0], dtype=torch.float64)
    np.testing.assert_allclose(softmax_t(z).numpy(), _mp_softmax((0.3, 1.7, -2.0), 1), rtol=1e-14)


def test_huge_logits_do_not_overflow():
    p = softmax_t(torch.tensor([1000.0, 0.0, -1000.0]), 1.0)
    assert torch.isfinite(p).all()
    assert torch.equal(p, torch.tensor([1.0, 0.0, 0.0]))
    p = softmax_t(torch.tensor([1e30, 1e30]), 1e-3)
    assert torch.allclose(p, torch.tensor([0.5, 0.5]))


def test_empty_batch_is_fine():
    assert softmax_t(torch.empty(0, 4), 2.0).shape == (0, 4)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

finite = st.floats(min_value=-50, max_value=50, allow_nan=False, allow_infinity=False)
temperatures = st.floats(min_value=1e-2, max_value=1e3, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(z=st.lists(finite, min_size=1, max_size=8), T=temperatures)
def test_rows_are_probability_vectors(z, T):
    p = softmax_t(torch.tensor(z, dtype=torch.float64), T)
    assert torch.all(p >= 0) and torch.all(p <= 1)
    assert abs(p.sum().item() - 1.0) < 1e-12


@settings(max_examples=60, deadline=None)
@given(z=st.lists(finite, min_size=2, max_size=8, unique=True), T=temperatures)
def test_order_of_classes_is_kept(z, T):
    """z_i > z_j implies p_i >= p_j (strictly > unless both underflow to the same float)."""
    zt = torch.tensor(z, dtype=torch.float64)
    p = softmax_t(zt, T)
    i, j = torch.meshgrid(torch.arange(len(z)), torch.arange(len(z)), indexing="ij")
    higher = zt[i] > zt[j]
    assert torch.all(p[i][higher] >= p[j][higher])
    assert p[torch.argmax(zt)] == p.max()  # the top class stays on top (ties only by rounding)


@settings(max_examples=60, deadline=None)
@given(z=st.lists(finite, min_size=1, max_size=8), T=temperatures, shift=finite)
def test_shift_invariance_and_scaling(z, T, shift):
    zt = torch.tensor(z, dtype=torch.float64)
    p = softmax_t(zt, T)
    assert torch.allclose(softmax_t(zt + shift, T), p, rtol=1e-9, atol=1e-300)
    assert torch.allclose(softmax_t(zt / T, 1.0), p, rtol=1e-12, atol=1e-300)


def test_limits_in_temperature():
    z = torch.tensor(THESIS_LOGITS, dtype=torch.float64)
    # T -> 0: the one-hot vector of the arg-max.
    assert torch.equal(softmax_t(z, 1e-3), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    # T -> infinity: uniform, with deviation (z_c - mean z) / (n T) to first order.
    for T in (1e3, 1e5):
        dev = softmax_t(z, T) - 1 / 3
        first = (z - z.mean()) / (3 * T)
        assert torch.allclose(dev, first, rtol=10 / T, atol=0)


def test_gradient_matches_finite_differences():
    z = torch.tensor([[0.4, -1.2, 2.5], [3.0, 3.0, -0.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: softmax_t(x, 2.5), (z,))


def test_gradient_formula():
    """d p_i / d z_j = p_i (delta_ij - p_j) / T, computed by hand from eq (1.3)."""
    z0 = np.array([1.0, -0.5, 0.25])
    T = 3.0
    z = torch.tensor(z0, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda x: softmax_t(x, T), z).numpy()
    p = scipy_softmax(z0 / T)
    np.testing.assert_allclose(jac, (np.diag(p) - np.outer(p, p)) / T, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Bad input: ValueError naming the parameter and the allowed range
# ---------------------------------------------------------------------------------------------

GOOD = torch.tensor([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "T", [0, 0.0, -0.0, -1.0, -1e-300, math.nan, math.inf, -math.inf, None, "hot", "4", True, False]
)
def test_bad_temperature_raises(T):
    with pytest.raises(ValueError, match=r"^T must be a finite number > 0"):
        softmax_t(GOOD, T)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_raise(bad):
    z = torch.tensor([[0.0, 1.0, 2.0], [0.0, bad, 1.0]])
    with pytest.raises(ValueError, match=r"^logits must contain only finite values"):
        softmax_t(z, 2.0)


def test_scalar_logits_raise():
    with pytest.raises(ValueError, match=r"^logits must have at least one dimension"):
        softmax_t(torch.tensor(1.5), 1.0)


def test_empty_class_dimension_raises():
    with pytest.raises(ValueError, match=r"^logits must have at least one class on its last dimension"):
        softmax_t(torch.empty(4, 0), 1.0)


def test_non_tensor_logits_raise():
    with pytest.raises(ValueError, match=r"^logits must be a torch\.Tensor"):
        softmax_t([1.0, 2.0], 1.0)


# ---------------------------------------------------------------------------------------------
# Traps of issue 13 (item 5)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16bit_logits_at_small_temperature_are_divided_in_float32(dtype):
    """z / T overflows float16 for finite logits at small T (6e4 / 0.05); it used to give NaN."""
    z = torch.tensor([[6e4, 0.0, -6e4], [1.0, 2.0, 3.0], [-3.0, 2.5, 2.0]]).to(dtype)
    for T in (0.05, 0.5, 4.0):
        p = softmax_t(z, T)
        assert p.dtype == dtype and torch.isfinite(p).all(), (T, p)
        torch.testing.assert_close(p.float(), torch.softmax(z.float() / T, -1).to(dtype).float(),
                                   rtol=0, atol=0)


def test_meta_logits_raise_value_error():
    with pytest.raises(ValueError, match="logits is a meta tensor"):
        softmax_t(torch.empty(2, 3, device="meta"), 2.0)
