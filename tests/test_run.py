"""kdlib.lab.run: the notebooks' rerun switch ($KDLIB_PROFILE, $KDLIB_DEVICE)."""

from __future__ import annotations

import pytest

import kdlib.lab.config as config
import kdlib.lab.run as run


def test_rerun_if_requested_calls_run_experiment(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run, "run_experiment",
                        lambda name, profile, **kw: calls.append((name, profile, kw["device"], kw["out"])))
    monkeypatch.delenv(config.ENV_PROFILE, raising=False)
    assert run.rerun_if_requested("synth", tmp_path) is None and calls == []
    monkeypatch.setenv(config.ENV_PROFILE, "full")
    monkeypatch.setenv(run.ENV_DEVICE, "cuda")
    assert run.rerun_if_requested("synth", tmp_path) == "full"
    monkeypatch.setenv(config.ENV_PROFILE, "smoke")
    monkeypatch.delenv(run.ENV_DEVICE)
    run.rerun_if_requested("synth", tmp_path)  # smoke never writes next to committed results
    assert calls == [("synth", "full", "cuda", tmp_path), ("synth", "smoke", "auto", tmp_path / "_scratch")]


def test_requested_profile_refuses_unknown_profiles(monkeypatch):
    monkeypatch.setenv(config.ENV_PROFILE, " cpu ")
    assert config.requested_profile() == "cpu"
    monkeypatch.setenv(config.ENV_PROFILE, "huge")
    with pytest.raises(ValueError, match="KDLIB_PROFILE must be one of smoke, cpu, full"):
        config.requested_profile()
