"""Shared pytest set-up for the unit tests.

- ``tests/fixtures`` is put on ``sys.path`` so that test modules can ``import mp_reference``, the
  mpmath reference formulas that also generate the committed fixture.
- :func:`needs` skips a test whose optional system package (Debian's ``chromium``,
  ``dataset-fashion-mnist``) is missing, saying how to get it; under CI (``CI=true``, where
  ``.ci/run`` installs both) it fails instead, so CI never skips them silently.
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


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
