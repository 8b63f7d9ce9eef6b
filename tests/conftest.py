"""Shared pytest set-up for the unit tests.

- ``tests/fixtures`` is put on ``sys.path`` so that test modules can ``import mp_reference``, the
  mpmath reference formulas that also generate the committed fixture.
- :func:`needs` skips a test whose optional system package (Debian's ``chromium``,
  ``dataset-fashion-mnist``, TeX) is missing, saying how to get it; under CI (``CI=true``, where
  ``.ci/run`` installs them) it fails instead, so CI never skips them silently.
  :func:`needs_fashion_mnist` is that check for the real Fashion-MNIST files. Every test that uses
  one of these packages goes through them (``test_needs.py`` checks the test files for it).
- Every test runs with one intra-op torch thread: the tests use tiny tensors, where a second
  thread only adds barrier waits (about 10 ms per operation on a busy two-core machine). No test
  result depends on the thread count; the setting is restored at the end of the session.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

UNDER_CI = os.environ.get("CI", "").lower() in ("true", "1")


def needs(available: bool, what: str, how: str) -> None:
    """Skip (fail under CI) unless ``available``, saying ``what`` is missing and ``how`` to get it."""
    if available:
        return
    message = f"{what} is not installed: {how}"
    if UNDER_CI:
        pytest.fail(f"{message} (.ci/run installs it; under CI this test must run)", pytrace=False)
    pytest.skip(message)


def needs_fashion_mnist() -> None:
    """:func:`needs` for the real Fashion-MNIST IDX files, wherever :mod:`kdlib.lab.data` looks for them."""
    from kdlib.lab.data import _find_idx_dir, _idx_candidates

    needs(_find_idx_dir(_idx_candidates("fashion_mnist")) is not None,
          "Fashion-MNIST (Debian's dataset-fashion-mnist)",
          "`sudo apt-get install dataset-fashion-mnist`, or set KDLIB_FASHION_MNIST_DIR to the IDX files")


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
