"""Shared pytest set-up for the unit tests.

- ``tests/fixtures`` is put on ``sys.path`` so that test modules can ``import mp_reference``, the
  mpmath reference formulas that also generate the committed fixture.
- Every test runs with one intra-op torch thread: the tests use tiny tensors, where a second
  thread only adds barrier waits (about 10 ms per operation on a busy two-core machine). No test
  result depends on the thread count; the setting is restored at the end of the session.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
