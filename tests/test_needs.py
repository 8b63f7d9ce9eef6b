"""Optional system packages: a test that needs one skips with a how-to outside CI and fails under CI."""

from __future__ import annotations

import conftest
import pytest


def test_needs_skips_outside_ci_and_fails_under_ci(monkeypatch):
    conftest.needs(True, "anything", "nothing to do")  # available: the test goes on
    monkeypatch.setattr(conftest, "UNDER_CI", False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed: apt-get install chromium"):
        conftest.needs(False, "chromium", "apt-get install chromium")
    monkeypatch.setattr(conftest, "UNDER_CI", True)
    with pytest.raises(pytest.fail.Exception, match="under CI this test must run"):
        conftest.needs(False, "chromium", "apt-get install chromium")
