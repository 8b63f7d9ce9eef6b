"""kdlib.stats: the resampling functions, checked against scipy and by simulation.

The t-based statistics (intervals, paired tests, Holm, power, TOST) are checked in test_report.py
against scipy, statsmodels-style worked examples and printed tables.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from kdlib import stats


def test_paired_bootstrap_of_one_run_matches_scipys_paired_bootstrap_over_images():
    rng = np.random.default_rng(0)
    a = (rng.random(4000) < 0.86).astype(float)
    b = np.where(rng.random(4000) < 0.9, a, 1 - a)  # the arms disagree on about 10% of the images
    ours = stats.paired_bootstrap(a, b, resamples=4000, seed=1)
    ref = sps.bootstrap((a, b), lambda x, y: np.mean(x - y), paired=True, vectorized=False,
                        n_resamples=4000, method="percentile", random_state=2).confidence_interval
    d = a - b
    assert ours["mean_diff"] == pytest.approx(d.mean())
    assert ours["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(d.size), rel=0.08)
    assert ours["ci_low"] == pytest.approx(ref.low, abs=0.15 * ours["se"] * 4)
    assert ours["ci_high"] == pytest.approx(ref.high, abs=0.15 * ours["se"] * 4)
    assert (ours["runs"], ours["images"], ours["groups"]) == (1, 4000, 1)


def test_paired_bootstrap_over_runs_alone_is_the_plug_in_standard_error_of_their_means():
    rng = np.random.default_rng(3)
    run_means = rng.normal(0.004, 0.002, size=12)
    a = rng.random((12, 500)) + run_means[:, None]
    b = a - run_means[:, None]  # each run's difference is exactly its mean on every image
    out = stats.paired_bootstrap(a, b, images=False, resamples=6000, seed=0)
    plug_in = run_means.std(ddof=0) / np.sqrt(12)
    assert out["se"] == pytest.approx(plug_in, rel=0.06)
    # the images carry no difference here, so resampling them changes nothing
    both = stats.paired_bootstrap(a, b, resamples=6000, seed=0)
    assert both["se"] == pytest.approx(out["se"], rel=0.06)


def test_paired_bootstrap_groups_resample_whole_teachers():
    # two teachers far apart and identical runs within each: all the spread is between teachers
    a = np.array([[1.0] * 50] * 3 + [[0.0] * 50] * 3)
    b = np.zeros_like(a)
    grouped = stats.paired_bootstrap(a, b, groups=[0, 0, 0, 1, 1, 1], images=False, resamples=4000)
    draws_share = {0.0, 0.5, 1.0}  # a draw takes teacher 0 twice, once or never
    assert grouped["ci_low"] in draws_share and grouped["ci_high"] in draws_share
    assert grouped["groups"] == 2 and grouped["se"] == pytest.approx(np.sqrt(0.125), rel=0.06)
    per_run = stats.paired_bootstrap(a, b, images=False, resamples=4000)
    assert per_run["se"] < grouped["se"]  # six independent runs would suggest more certainty


def test_paired_bootstrap_covers_the_truth_and_the_seed_only_interval_does_not():
    """Runs and test images both vary; the truth is the mean over the populations of both. The
    hierarchical interval covers it at about its level; the seed-only one, which treats the test
    images as fixed, covers it far less often when the images' share of the variance is large."""
    rng = np.random.default_rng(7)
    hits_full = hits_seed = 0
    sims = 120
    for _ in range(sims):
        delta = rng.normal(0.0, 1.0, size=300)  # per-image difference, population mean 0
        run = rng.normal(0.0, 0.05, size=8)  # per-run shift, mean 0
        d = delta[None, :] + run[:, None] + rng.normal(0, 0.05, size=(8, 300))
        full = stats.paired_bootstrap(d, np.zeros_like(d), resamples=400, seed=int(rng.integers(1 << 30)))
        seed_only = stats.paired_bootstrap(d, np.zeros_like(d), images=False, resamples=400, seed=1)
        hits_full += full["ci_low"] <= 0.0 <= full["ci_high"]
        hits_seed += seed_only["ci_low"] <= 0.0 <= seed_only["ci_high"]
    assert hits_full / sims > 0.88
    assert hits_seed / sims < 0.5


@pytest.mark.parametrize("kwargs, match", [
    ({"a": np.zeros((2, 3)), "b": np.zeros((3, 2))}, "one shape"),
    ({"a": np.zeros((2, 3)), "b": np.full((2, 3), np.nan)}, "finite"),
    ({"a": np.zeros((2, 3)), "b": np.zeros((2, 3)), "groups": [0]}, "one label per run"),
    ({"a": np.zeros((2, 3)), "b": np.zeros((2, 3)), "resamples": 0}, "resamples >= 1"),
    ({"a": np.zeros((2, 3)), "b": np.zeros((2, 3)), "confidence": 1.0}, "confidence in"),
])
def test_paired_bootstrap_refuses_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        stats.paired_bootstrap(**kwargs)


def test_share_bootstrap_gives_the_share_of_the_gap_and_refuses_ragged_groups():
    d, a, t = np.array([0.9, 0.92]), np.array([0.8, 0.82]), np.array([1.0, 1.0])
    out = stats.share_bootstrap([(d, a, t)], resamples=200)
    assert out["share"] == pytest.approx(0.1 / 0.19) and out["n"] == 2
    assert out["ci_low"] <= out["share"] <= out["ci_high"]
    with pytest.raises(ValueError, match="of one length"):
        stats.share_bootstrap([(d, a[:1], t)])
