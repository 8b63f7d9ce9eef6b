"""kdlib.report: tables, figures and book helpers on synthetic records, and the committed results.

Expected values are computed independently here (numpy, scipy, worked examples by hand).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import replace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from kdlib import stats as kstats  # noqa: E402
from kdlib.lab import analysis, experiments, prereg, results  # noqa: E402
from kdlib.lab.config import ARMS, ENV_PROFILE  # noqa: E402
from kdlib.lab.store import ResultsStore  # noqa: E402
from kdlib.report import (
    figures,  # noqa: E402
    tables,  # noqa: E402
)

#: Two-sided 95% Student-t quantiles for df = 1 ... 30 as printed in statistics tables (3 decimals):
#: an independent reference for the intervals.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]

# ----------------------------------------------------------------------------- synthetic records


def student(alpha, T, beta, seed, acc, val=None, norm=False, label="distilled", hidden=(8, 8),
            commit="a" * 40, dirty=False, started="2026-01-02T10:00:00Z", finished="2026-01-02T10:05:00Z",
            wall=300.0, extra=None):
    metrics = {"test_accuracy": acc, "test_errors": round((1 - acc) * 1000),
               "final_val_accuracy": acc if val is None else val,
               "curves": {"val_accuracy": [acc / 2, acc], "train_loss": [1.0, 0.5]}, "diverged": False}
    metrics.update(extra or {})
    return {"schema": 1, "key": f"{alpha}-{T}-{beta}-{seed}-{norm}-{label}-{hidden}", "kind": "student",
            "config": {"experiment": "synth", "profile": "cpu",
                       "alpha": "inf" if math.isinf(alpha) else alpha, "T": T, "beta": beta, "seed": seed,
                       "normalize_by_alpha": norm, "label": label,
                       "model": {"kind": "mlp", "hidden": list(hidden)}, "epochs": 2},
            "metrics": metrics,
            "provenance": {"git_commit": commit, "git_dirty": dirty, "device_name": "cpu: test",
                           "torch": "9.9", "started": started, "finished": finished, "wall_seconds": wall}}


def teacher():
    return {"schema": 1, "key": "teacher", "kind": "teacher",
            "config": {"profile": "cpu", "label": "teacher"}, "metrics": {"test_accuracy": 0.9},
            "provenance": {"git_commit": "b" * 40, "git_dirty": False, "device_name": "cpu: test",
                           "torch": "9.9", "started": "2026-01-01T09:00:00Z",
                           "finished": "2026-01-01T09:10:00Z", "wall_seconds": 600.0}}


def write(root, experiment, profile, records):
    store = ResultsStore(root / experiment / f"{profile}.jsonl")
    for r in records:
        store.append(r)
    return store.path


RNG = np.random.default_rng(12345)
ALPHAS = (0.5, 1.0, math.inf)
TEMPS = (2.0, 4.0)
SEEDS = (0, 1, 2, 3)
ACC = {(a, T, s): float(0.7 + 0.01 * i + RNG.normal(0, 0.01))  # fractions: at most about 0.95
       for i, (a, T, s) in enumerate(itertools.product(ALPHAS, TEMPS, SEEDS))}


def grid_records():
    return [teacher()] + [student(a, T, 0.9, s, ACC[(a, T, s)]) for (a, T, s) in ACC]


# ----------------------------------------------------------------------------- intervals, tests, corrections


@pytest.mark.parametrize("n", [2, 3, 4, 9, 31])
def test_interval_matches_the_printed_t_table(n):
    values = [0.5 + 0.01 * ((7 * i) % 5) for i in range(n)]
    s = kstats.interval(values)
    std = np.std(values, ddof=1)
    assert s["n"] == n and s["mean"] == pytest.approx(np.mean(values), abs=1e-15)
    assert s["std"] == pytest.approx(std, abs=1e-15)
    assert s["ci95"] == pytest.approx(T975[n - 2] * std / math.sqrt(n), rel=3e-4)
    assert s["ci_low"] == s["mean"] - s["ci95"] and s["ci_high"] == s["mean"] + s["ci95"]


def test_interval_of_one_or_no_value():
    one, none = kstats.interval([0.5]), kstats.interval([])
    assert one["n"] == 1 and one["mean"] == 0.5 and math.isnan(one["std"]) and math.isnan(one["ci_low"])
    assert none["n"] == 0 and math.isnan(none["mean"])
    # exactly rounded: the order of the values does not change a bit of the mean
    vals = [0.1, 0.7, 1e-9, 0.3, 0.9]
    assert kstats.interval(vals)["mean"] == kstats.interval(vals[::-1])["mean"]


def test_holm_worked_example():
    # Holm (1979), by hand: sorted 0.005, 0.01, 0.03, 0.04 get factors 4, 3, 2, 1:
    # 0.02, 0.03, 0.06, 0.04 -> running maximum 0.02, 0.03, 0.06, 0.06; back in the input order:
    assert kstats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert kstats.holm([0.5, 0.9]) == [1.0, 1.0]
    assert kstats.holm([0.02]) == [0.02] and kstats.holm([]) == []
    out = kstats.holm([0.01, math.nan, 0.02])  # NaN does not count towards m
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_holm_is_never_below_benjamini_hochberg():
    p = np.random.default_rng(0).uniform(0, 0.2, 40).tolist()
    holm, bh = np.array(kstats.holm(p)), np.array(kstats.benjamini_hochberg(p))
    assert (holm >= bh - 1e-15).all() and (bh >= np.array(p) - 1e-15).all()
    # Benjamini-Hochberg by hand: sorted 0.005, 0.01, 0.03, 0.04 -> min over k >= i of m p_(k) / k
    assert kstats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    out = kstats.benjamini_hochberg([math.nan, 0.01])
    assert math.isnan(out[0]) and out[1] == pytest.approx(0.01)


def test_paired_test_matches_scipy_and_handles_degenerate_differences():
    a, b = [0.81, 0.84, 0.80, 0.86], [0.80, 0.82, 0.80, 0.83]
    got = kstats.paired_test(a, b)
    ref = stats.ttest_rel(a, b)
    d = np.subtract(a, b)
    half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert got["n"] == 4 and got["mean_diff"] == pytest.approx(d.mean(), abs=1e-15)
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    same = kstats.paired_test([0.5, 0.6], [0.5, 0.6])
    assert (same["t"], same["p"], same["ci_low"], same["ci_high"]) == (0.0, 1.0, 0.0, 0.0)
    shifted = kstats.paired_test([0.6, 0.7], [0.5, 0.6])
    assert shifted["t"] == math.inf and shifted["p"] == 0.0
    one = kstats.paired_test([0.6], [0.5])
    assert one["n"] == 1 and math.isnan(one["p"]) and one["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        kstats.paired_test([0.1, 0.2], [0.1])


# ----------------------------------------------------------------------------- loading, provenance


def test_committed_profile_prefers_full_and_env_switch(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_PROFILE, raising=False)
    assert results.committed_profile("synth", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="python -m kdlib run synth --profile cpu"):
        results.load_results("synth", root=tmp_path)
    write(tmp_path, "synth", "cpu", grid_records())
    assert results.committed_profile("synth", tmp_path) == "cpu"
    full = [dict(r, config={**r["config"], "profile": "full"}) for r in grid_records()[:3]]
    write(tmp_path, "synth", "full", full)
    assert results.committed_profile("synth", tmp_path) == "full"
    assert len(results.load_results("synth", root=tmp_path).records) == 3
    monkeypatch.setenv(ENV_PROFILE, "cpu")
    res = results.load_results("synth", root=tmp_path)
    assert res.profile == "cpu" and len(res.students) == len(ACC) and len(res.teachers) == 1
    monkeypatch.setenv(ENV_PROFILE, "huge")
    with pytest.raises(ValueError, match="KDLIB_PROFILE must be one of smoke, cpu, full"):
        results.load_results("synth", root=tmp_path)


def test_provenance_from_records(tmp_path):
    recs = grid_records()
    recs[3] = student(1.0, 2.0, 0.9, 9, 0.5, commit="c" * 40, dirty=True, started="2026-01-03T08:00:00Z",
                      finished="2026-01-03T08:30:00Z", wall=1800.0)
    write(tmp_path, "synth", "cpu", recs)
    res = results.load_results("synth", "cpu", tmp_path)
    p = results.provenance(res.records)
    assert p["commits"] == ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc+dirty"]
    assert p["started"] == "2026-01-01T09:00:00Z" and p["finished"] == "2026-01-03T08:30:00Z"
    assert p["students"] == len(recs) - 1 and p["teachers"] == 1
    assert p["seeds"] == [0, 1, 2, 3, 9]
    # three distinct groups: the teacher (600 s), the shared student group (300 s), the odd one (1800 s)
    assert p["wall_seconds"] == pytest.approx(2700.0)
    line = tables.provenance_line(res)
    assert "profile cpu" in line and "cccccccccc+dirty" in line and "2026-01-01 to 2026-01-03" in line
    assert "45 min of training" in line
    fields = dict(tables.provenance_fields(res))
    assert fields["results"] == "experiment synth, profile cpu"
    assert fields["commit"] == "aaaaaaaaaa, bbbbbbbbbb, cccccccccc+dirty"
    assert fields["run"] == "2026-01-01 to 2026-01-03, 09:00 to 08:30 UTC, 45 min of training"


# ----------------------------------------------------------------------------- summaries


def test_student_frame_and_summary_match_numpy(tmp_path):
    write(tmp_path, "synth", "cpu", grid_records())
    df = results.load_results("synth", "cpu", tmp_path).frame()
    assert len(df) == len(ACC) and set(df["model"]) == {"mlp8x8"}
    assert math.isinf(df["alpha"].max())
    assert df["curve_val_accuracy"].iloc[0] == pytest.approx([df["test_accuracy"].iloc[0] / 2,
                                                              df["test_accuracy"].iloc[0]])
    assert df["omitted_class_accuracy_after_shift"].isna().all()
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    assert len(summ) == len(ALPHAS) * len(TEMPS)
    for _, row in summ.iterrows():
        vals = np.array([ACC[(row["alpha"], row["T"], s)] for s in SEEDS])
        half = stats.t.ppf(0.975, len(vals) - 1) * vals.std(ddof=1) / np.sqrt(len(vals))
        assert row["n"] == 4 and row["seeds"] == [0, 1, 2, 3]
        assert row["mean"] == pytest.approx(vals.mean(), abs=1e-12)
        assert row["std"] == pytest.approx(vals.std(ddof=1), abs=1e-12)
        assert row["ci_low"] == pytest.approx(vals.mean() - half, abs=1e-10)
        assert row["ci_high"] == pytest.approx(vals.mean() + half, abs=1e-10)


def test_paired_differences_match_scipy_ttest_rel():
    df = results.student_frame(grid_records())
    paired = analysis.paired_differences(df, "test_accuracy", ["alpha", "T", "beta"], {"alpha": 1.0},
                                         match=["T", "beta"])
    assert len(paired) == 4 and not (paired["alpha"] == 1.0).any()
    pvals = []
    for _, row in paired.iterrows():
        a = np.array([ACC[(row["alpha"], row["T"], s)] for s in SEEDS])
        b = np.array([ACC[(1.0, row["T"], s)] for s in SEEDS])
        ref = stats.ttest_rel(a, b)
        assert row["mean_diff"] == pytest.approx((a - b).mean(), abs=1e-12)
        assert row["std_diff"] == pytest.approx((a - b).std(ddof=1), abs=1e-12)
        assert row["t"] == pytest.approx(ref.statistic, rel=1e-9)
        assert row["p"] == pytest.approx(ref.pvalue, abs=1e-9)
        ci = ref.confidence_interval()
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-12)
        pvals.append(ref.pvalue)
    order = np.argsort(pvals)
    expected = np.empty(4)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * pvals[i]))
        expected[i] = running
    assert paired["p_holm"].to_numpy() == pytest.approx(expected)
    assert paired["p_bh"].to_numpy() == pytest.approx(stats.false_discovery_control(pvals))
    for _, row in paired.iterrows():
        shown = ("better" if row["mean_diff"] > 0 else "worse") if row["p_holm"] < 0.05 else None
        want = shown or "no difference shown"
        assert row["verdict"] == want


def test_paired_differences_detects_a_clear_effect_and_pairs_by_seed():
    # order 2 is KL plus 0.05 on every seed, with seed effects far larger than the gap:
    # unpaired intervals overlap, the paired test must still see it
    seed_effect = {0: -0.2, 1: 0.0, 2: 0.2}
    recs = [student(1.0, 4.0, 0.9, s, 0.6 + e) for s, e in seed_effect.items()]
    recs += [student(2.0, 4.0, 0.9, s, 0.65 + e + 0.001 * s) for s, e in seed_effect.items()]
    df = results.student_frame(recs)
    paired = analysis.paired_differences(df, "test_accuracy", ["alpha", "T"], {"alpha": 1.0}, ["T"])
    row = paired.iloc[0]
    assert row["mean_diff"] == pytest.approx(0.051, abs=1e-12) and row["verdict"] == "better"
    summ = analysis.summarize_frame(df, ["alpha"])
    assert summ["ci_low"].max() < summ["ci_high"].min()  # unpaired intervals overlap
    with pytest.raises(ValueError, match="reference and match fields must be among cells"):
        analysis.paired_differences(df, "test_accuracy", ["alpha"], {"alpha": 1.0}, ["T"])


def test_tuned_comparison_chooses_on_validation_not_test():
    recs = []
    for s in (0, 1, 2):
        recs.append(student(2.0, 2.0, 0.9, s, acc=0.95, val=0.70))  # best on test, poor on validation
        recs.append(student(2.0, 4.0, 0.9, s, acc=0.80, val=0.90))
        recs.append(student(1.0, 2.0, 0.9, s, acc=0.81, val=0.85))
        recs.append(student(1.0, 4.0, 0.9, s, acc=0.82, val=0.85))  # tie on validation: smaller T wins
    tuned = analysis.tuned_comparison(results.student_frame(recs), ["alpha", "beta"])
    chosen = {a: set(g["T"]) for a, g in tuned.groupby("alpha")}
    assert chosen == {1.0: {2.0}, 2.0: {4.0}} and len(tuned) == 6


def test_tuned_comparison_over_learning_rate_and_temperature_together():
    recs = []
    for s in (0, 1, 2):
        for lr, T, val in ((0.05, 2.0, 0.80), (0.05, 4.0, 0.84), (0.2, 2.0, 0.86), (0.2, 4.0, 0.70)):
            rec = student(4.0, T, 0.9, s, acc=0.5, val=val + 0.001 * s)
            rec["config"]["lr"], rec["key"] = lr, f"{rec['key']}-{lr}"
            recs.append(rec)
    df = results.student_frame(recs)
    tuned = analysis.tuned_comparison(df, ["alpha"], over=["lr", "T"])
    assert set(zip(tuned["lr"], tuned["T"], strict=True)) == {(0.2, 2.0)} and len(tuned) == 3
    assert set(df["arm"]) == {"α=4"}
    # choosing over T alone (within each learning rate) gives one setting per learning rate
    per_lr = analysis.tuned_comparison(df, ["alpha", "lr"], over="T")
    assert set(zip(per_lr["lr"], per_lr["T"], strict=True)) == {(0.05, 4.0), (0.2, 2.0)}


def test_tuned_screen_tunes_each_arm_then_pairs_it_with_the_tuned_reference():
    recs = []
    # per seed: KL best at lr 0.05; alpha 4 best at lr 0.0125 and 0.01 above KL; alpha 0.5 below it
    for s in (0, 1, 2):
        for alpha, lr, val in ((1.0, 0.05, 0.90), (1.0, 0.2, 0.85), (4.0, 0.0125, 0.91), (4.0, 0.05, 0.80),
                               (0.5, 0.05, 0.88), (0.5, 0.2, 0.70)):
            rec = student(alpha, 2.0, 0.9, s, acc=0.99, val=val + 0.002 * s * (alpha == 4.0))
            rec["config"]["lr"], rec["key"] = lr, f"{rec['key']}-{lr}"
            recs.append(rec)
    sc = analysis.tuned_screen(results.student_frame(recs))
    screen = sc.arms
    assert list(screen["arm"]) == ["α=4", "α=0.5"]
    assert list(screen["lr"]) == [0.0125, 0.05]
    assert sc.reference_setting == {"lr": 0.05, "T": 2.0} and sc.reference == "KL"
    assert sc.reference_mean == pytest.approx(0.90)
    assert sc.setting("α=4") == {"lr": 0.0125, "T": 2.0} and sc.setting("KL") == sc.reference_setting
    d = np.array([0.01 + 0.002 * s for s in (0, 1, 2)])
    assert screen["mean_diff"][0] == pytest.approx(d.mean())
    assert screen["p"][0] == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    assert screen["p_bh"][0] == pytest.approx(stats.false_discovery_control(screen["p"], method="bh")[0])
    with pytest.raises(ValueError, match="reference must be one of the arms"):
        analysis.tuned_screen(results.student_frame(recs), reference="reverse KL")


def test_pooled_reliability_pools_runs_bin_by_bin_and_gives_their_ece():
    import torch

    from kdlib.lab.metrics import expected_calibration_error, reliability

    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(3, 300, 10, generator=g) * 2, torch.randint(0, 10, (300,), generator=g)
    z[2, 0, 0] = math.nan  # a diverged run is left out
    pooled = analysis.pooled_reliability([*reliability(z, y, bins=8), None])
    assert pooled.attrs["runs"] == 2 and pooled["count"].sum() == 600 and len(pooled) == 8
    # pooling two runs = one diagram of their predictions together
    both = torch.cat([z[0], z[1]]), torch.cat([y, y])
    ece = float((pooled["count"] * (pooled["accuracy"] - pooled["confidence"]).abs()).sum() / 600)
    assert ece == pytest.approx(expected_calibration_error(*both, bins=8).item(), abs=1e-12)
    assert pooled["high"].iloc[-1] == 1.0 and pooled["low"].iloc[0] == 0.0
    with pytest.raises(ValueError, match="same number of bins"):
        analysis.pooled_reliability([reliability(z[0], y, bins=8)[0], reliability(z[0], y, bins=5)[0]])
    with pytest.raises(ValueError, match="at least one"):
        analysis.pooled_reliability([None, reliability(z[2], y)[0]])
    fig, ax = plt.subplots()
    figures.reliability_diagram(ax, pooled, label="runs")
    assert len(ax.lines) == 2 and ax.get_xlabel() == "confidence (%)"
    plt.close(fig)


def _screen(diffs: dict[str, float]) -> analysis.Screen:
    rows = [{"arm": a, "lr": 0.05, "T": 2.0, "mean": 0.9 + d, "n": 3, "mean_diff": d}
            for a, d in diffs.items()]
    return analysis.Screen(pd.DataFrame(rows), "KL", {"lr": 0.0125, "T": 1.0}, 0.9)


def test_the_confirmation_hypothesis_follows_its_rule(tmp_path, monkeypatch):
    import json

    from kdlib.lab.prereg import load_hypothesis

    screen = _screen({"α=4": 0.004, "α=∞": 0.001, "α=2 /α": 0.002, "reverse KL": 0.0005, "α=0.5": -0.003})
    typed = prereg.confirmation_hypothesis(screen, sd=0.002)
    h = typed.to_json()  # the file's content
    assert [a["arm"] for a in h["arms"]] == ["α=4", "α=2 /α", "α=∞"]  # the three above KL, best first
    assert {a["hypothesis"] for a in h["arms"]} == {"greater"} and h["arms"][2]["alpha"] == "inf"
    assert h["arms"][1]["normalize_by_alpha"] is True and h["reference"]["lr"] == 0.0125
    # the number of runs reaches the power at Holm's first level, and one fewer does not
    needed = h["runs_needed"]
    assert kstats.paired_power(0.003, 0.002, needed, 0.05 / 3) >= 0.8 > kstats.paired_power(
        0.003, 0.002, needed - 1, 0.05 / 3)
    assert len(h["seeds"]) == max(12, -(-needed // 3) * 3) and h["seeds"][0] == 100
    noisy = prereg.confirmation_hypothesis(screen, sd=0.006)
    assert len(noisy.seeds) > len(h["seeds"]) and len(noisy.seeds) % 3 == 0
    # nothing above KL: the closest arms, tested for equivalence, with more runs for TOST's two tests
    flat = prereg.confirmation_hypothesis(_screen({"α=4": -0.001, "α=0.5": -0.004, "α=2": -0.0005}),
                                            sd=0.004, max_arms=2)
    assert [a.name for a in flat.arms] == ["α=2", "α=4"]
    assert {a.hypothesis for a in flat.arms} == {"equivalent"}
    assert kstats.paired_power(0.003, 0.004, flat.runs_needed, 0.05 / 2) >= 0.9
    # what it writes is a valid hypothesis file
    monkeypatch.setenv("KDLIB_HYPOTHESES_DIR", str(tmp_path))
    (tmp_path / "renyi_confirm_tuned.json").write_text(typed.dumps())
    assert load_hypothesis("renyi_confirm_tuned") == typed and json.loads(typed.dumps()) == h
    with pytest.raises(ValueError, match="need sd > 0"):
        prereg.confirmation_hypothesis(screen, sd=0.0)


def _exploration_frame() -> pd.DataFrame:
    """A complete exploration on three teachers: every arm at two learning rates and two T, each
    best at (0.05, 2); the order ∞ diverges there on one teacher (and is still best there)."""

    rng = np.random.default_rng(5)
    rows = []
    for i, arm in enumerate(ARMS):
        for lr, T in itertools.product((0.05, 0.2), (2.0, 4.0)):
            best = (lr, T) == (0.05, 2.0)
            for s in (0, 1, 2):
                worse = 0 if best else 0.5 if arm.name == "α=∞" else 0.05
                val = 0.9 + 0.001 * i + rng.normal(0, 0.001) - worse
                diverged = arm.name == "α=∞" and best and s == 2
                rows.append({"arm": arm.name, "lr": lr, "T": T, "seed": s, "diverged": diverged,
                             "final_val_accuracy": 0.1 if diverged else val})
    for s in (0, 1, 2):
        rows.append({"arm": "alone", "lr": 0.05, "T": 1.0, "seed": s, "diverged": False,
                     "final_val_accuracy": 0.88})
    return pd.DataFrame(rows)


def test_the_hypothesis_files_follow_from_the_exploration_by_the_committed_rules():
    explore = _exploration_frame()
    rng = np.random.default_rng(6)
    acc = {T: 0.9 + rng.normal(0, 0.0015, 15) for T in (1.0, 2.0, 4.0)}
    hinton = pd.DataFrame([{"model": m, "label": lab, "T": T, "seed": s, "test_accuracy": acc[T][s]}
                           for T in (1.0, 2.0, 4.0) for s in range(15)
                           for m, lab in (("mlp800x800", "distilled"), ("mlp30x30", "distilled"))])
    sd = prereg.confirmation_sd(explore, hinton)
    # by hand: the arms at (0.05, 2) minus KL there, per teacher, the diverged order ∞ left out
    best = explore[(explore["lr"] == 0.05) & (explore["T"] == 2.0)].pivot(index="seed", columns="arm",
                                                                          values="final_val_accuracy")
    diffs = best.drop(columns=["KL", "α=∞"]).sub(best["KL"], axis=0)
    assert sd["exploration"] == pytest.approx(np.sqrt(diffs.var(ddof=1).mean()))
    assert sd["hinton"] == pytest.approx(np.std(acc[2.0] - acc[1.0], ddof=1))
    assert sd["sd"] == max(sd["exploration"], sd["hinton"])
    files = prereg.hypotheses_from(explore, hinton)
    screen = analysis.tuned_screen(explore)
    expected = prereg.confirmation_hypothesis(screen, sd["sd"])
    tuned = files["renyi_confirm_tuned"]
    assert replace(tuned, sd_estimates=None) == expected
    assert tuned.sd_estimates == {"exploration": sd["exploration"], "hinton": sd["hinton"]}
    assert files["omitted_class_tuned"] == prereg.omitted_hypothesis(screen)
    # the data-poor student's confirmation: the same rule, its own name, fresh teachers and seeds from 300
    poor = prereg.poor_hypotheses_from(explore, hinton)["renyi_confirm_poor"]
    assert replace(poor, experiment=tuned.experiment, seeds=tuned.seeds) == tuned
    assert poor.experiment == "renyi_confirm_poor" and poor.teachers == (3, 4, 5)
    assert poor.seeds == tuple(range(300, 300 + len(expected.seeds)))
    # the confirmation of the data-poor Adam check: the same rule on the check, seeds from 400, Adam
    adam = prereg.adam_poor_hypotheses_from(explore, hinton)["renyi_confirm_adam_poor"]
    assert replace(adam, experiment=poor.experiment, seeds=poor.seeds, optimizer=None) == poor
    assert (adam.experiment, adam.optimizer, adam.teachers) == ("renyi_confirm_adam_poor", "adam", (3, 4, 5))
    assert adam.seeds == tuple(range(400, 400 + len(expected.seeds)))


def test_derive_hypotheses_refuses_an_incomplete_exploration(tmp_path):
    """Each exploration that declares a derivation is checked in turn: with the ones before it complete, a
    truncated one is named."""
    from kdlib.lab.store import results_root

    def copy(name: str, lines: int | None = None) -> None:
        text = (results_root() / name / "full.jsonl").read_text()
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "full.jsonl").write_text(
            text if lines is None else "\n".join(text.splitlines()[:lines]) + "\n")

    done: list[str] = []
    for explore, total in (("renyi_explore", 405), ("renyi_explore_poor", 405), ("renyi_adam_poor", 60)):
        copy(explore, lines=5)
        with pytest.raises(ValueError, match=f"{explore}/full is not complete: [0-4] of {total} runs"):
            experiments.derive_hypotheses(tmp_path)
        copy(explore)
        copy(experiments.get_experiment(explore).derives[0])
        done.append(explore)
    assert done == [e.name for e in experiments.EXPERIMENTS.values() if e.derives is not None]
    assert set(experiments.derive_hypotheses(tmp_path)) == set(experiments.DERIVED_HYPOTHESES)


def test_the_omitted_class_hypothesis_takes_each_orders_better_variant_and_reverse_kl(tmp_path, monkeypatch):
    import json

    from kdlib.lab.prereg import load_hypothesis

    diffs = {"α=0.25": -0.02, "α=0.25 /α": -0.01, "α=0.5": 0.001, "α=0.5 /α": 0.001, "α=2": -0.003,
             "α=2 /α": 0.002, "α=4": 0.004, "α=4 /α": -0.5, "α=∞": -0.1, "reverse KL": -0.004}
    screen = _screen(diffs)
    screen.arms.loc[screen.arms["arm"] == "α=2 /α", ["lr", "T"]] = [0.2, 8.0]
    typed = prereg.omitted_hypothesis(screen)
    h = typed.to_json()  # the file's content
    # the better variant of each order (a tie goes to the plain one), then reverse KL
    assert [a["arm"] for a in h["arms"]] == ["α=0.25 /α", "α=0.5", "α=2 /α", "α=4", "α=∞", "reverse KL"]
    assert {a["hypothesis"] for a in h["arms"]} == {"two-sided"}
    assert (h["arms"][2]["lr"], h["arms"][2]["T"], h["arms"][2]["normalize_by_alpha"]) == (0.2, 8.0, True)
    assert h["arms"][5]["reverse"] is True and h["arms"][4]["alpha"] == "inf"
    assert h["reference"] == {"arm": "KL", "alpha": 1.0, "normalize_by_alpha": False, "reverse": False,
                              "lr": 0.0125, "T": 1.0}
    assert h["seeds"] == list(range(200, 212)) and h["teachers"] == [0, 1, 2]
    assert h["metric"] == "omitted_class_auroc"
    monkeypatch.setenv("KDLIB_HYPOTHESES_DIR", str(tmp_path))
    (tmp_path / "omitted_class_tuned.json").write_text(json.dumps(h))
    assert load_hypothesis("omitted_class_tuned") == typed
    with pytest.raises(ValueError, match="multiple of the 3 teachers"):
        prereg.omitted_hypothesis(screen, runs=10)
    with pytest.raises(ValueError, match="must hold the arms"):
        prereg.omitted_hypothesis(replace(screen, arms=screen.arms[screen.arms["arm"] != "α=4 /α"]))
    with pytest.raises(ValueError, match="'reverse KL'"):
        prereg.omitted_hypothesis(replace(screen, arms=screen.arms[screen.arms["arm"] != "reverse KL"]))


def test_confirmatory_tests_apply_each_arms_hypothesis_with_holm_over_the_arms():
    from scipy import stats

    rng = np.random.default_rng(0)
    seeds = list(range(100, 112))
    ref = 0.9 + rng.normal(0, 0.002, 12)
    shifts = {"α=4": 0.004, "α=∞": 0.0, "α=2 /α": 0.0, "reverse KL": -0.004}
    noise = {a: rng.normal(0, 0.0015, 12) for a in shifts}
    noise["α=2 /α"] = rng.normal(0, 0.0003, 12)
    rows = [{"arm": "KL", "lr": 0.05, "T": 2.0, "seed": s, "test_accuracy": v}
            for s, v in zip(seeds, ref, strict=True)]
    rows += [{"arm": "alone", "lr": 0.05, "T": 1.0, "seed": s, "test_accuracy": 0.88} for s in seeds]
    for arm, shift in shifts.items():
        rows += [{"arm": arm, "lr": 0.2, "T": 4.0, "seed": s, "test_accuracy": v + shift + e}
                 for s, v, e in zip(seeds, ref, noise[arm], strict=True)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=1)  # the order of the rows does not matter
    by_name = {a.name: a for a in ARMS} | {"alone": ARMS[0]}  # the columns student_frame gives each arm
    for f in ("alpha", "normalize_by_alpha", "reverse"):
        df[f] = [getattr(by_name[a], f) for a in df["arm"]]
    df["beta"] = np.where(df["arm"] == "alone", 0.0, 0.9)
    entry = {"normalize_by_alpha": False, "reverse": False, "lr": 0.2, "T": 4.0}
    file = {"experiment": "x", "reference": {"alpha": 1.0, **entry, "lr": 0.05, "T": 2.0},
            "arms": [{**entry, "alpha": 4.0, "hypothesis": "greater"},
                     {**entry, "alpha": "inf", "hypothesis": "greater"},
                     {**entry, "alpha": 2.0, "normalize_by_alpha": True, "hypothesis": "equivalent"},
                     {**entry, "alpha": 1.0, "reverse": True, "hypothesis": "two-sided"}],
            "teachers": [0], "seeds": seeds, "metric": "test_accuracy", "smallest_effect": 0.003,
            "level": 0.05, "correction": "holm"}
    h = prereg.Hypothesis.from_json(file)
    out = prereg.confirmatory_tests(df, h)
    assert list(out["arm"]) == ["α=4", "α=∞", "α=2 /α", "reverse KL"]
    arm = {a: ref + shifts[a] + noise[a] for a in shifts}
    p = [stats.ttest_rel(arm["α=4"], ref, alternative="greater").pvalue,
         stats.ttest_rel(arm["α=∞"], ref, alternative="greater").pvalue,
         kstats.equivalence_test(arm["α=2 /α"], ref, 0.003)["p"],
         stats.ttest_rel(arm["reverse KL"], ref).pvalue]
    np.testing.assert_allclose(out["p"], p, rtol=1e-10)
    np.testing.assert_allclose(out["p_holm"], kstats.holm(p))
    assert list(out["verdict"]) == ["greater", "not shown greater", "equivalent", "smaller"]
    assert (out["n"] == 12).all()
    # the detectable effect is the one the test finds with power 0.8 at Holm's first level
    for _, r in out.iterrows():
        alt = "two-sided" if r["hypothesis"] == "two-sided" else "greater"
        assert kstats.paired_power(r["detectable"], r["std_diff"], 12, 0.05 / 4, alt) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="no runs of the arm 'α=0.5'"):
        prereg.confirmatory_tests(df, prereg.Hypothesis.from_json(
            {**file, "arms": [{**entry, "alpha": 0.5, "hypothesis": "greater"}]}))
    with pytest.raises(ValueError, match="seeds of 'α=4'"):
        prereg.confirmatory_tests(df[(df["arm"] != "α=4") | (df["seed"] != 105)], h)
    assert math.isnan(kstats.detectable_effect(0.0, 12))


# ----------------------------------------------------------------------------- formatting and figures


def test_formatting():
    assert tables.fmt_alpha(math.inf) == "∞" and tables.fmt_alpha(0.25) == "0.25"
    assert tables.fmt_mean_std(0.85123, 0.0031) == "85.12 ± 0.31"
    assert tables.fmt_mean_std(0.5, math.nan) == "50.00"
    assert tables.fmt_interval(0.844, 0.8584) == "[84.40, 85.84]"
    assert tables.fmt_p(0.0004) == "<0.001" and tables.fmt_p(0.0456) == "0.046"
    assert tables.fmt_p(math.nan) == "-"
    df = results.student_frame(grid_records())
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    grid = tables.pivot_means(summ)
    assert list(grid.columns) == ["T = 2", "T = 4"] and list(grid.index) == ["0.5", "1", "∞"]
    vals = np.array([ACC[(math.inf, 4.0, s)] for s in SEEDS])
    assert grid.loc["∞", "T = 4"] == f"{vals.mean() * 100:.2f} ± {vals.std(ddof=1) * 100:.2f}"
    table = tables.summary_table(summ, ["alpha", "T"], {"alpha": "α"})
    assert list(table.columns) == ["α", "T", "n", "mean ± std", "95% interval"]
    assert table.to_string() == tables.summary_table(summ, ["alpha", "T"], {"alpha": "α"}).to_string()


def test_book_table_drops_the_index_and_states_constant_columns_once():
    df = results.student_frame(grid_records())
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    table = tables.summary_table(summ, ["alpha", "T"], {"alpha": "α"})
    shown = tables.book_table(table, "Test accuracy (%)")
    assert "n" not in shown.frame.columns and shown.constants == [("n", str(len(SEEDS)))]
    assert shown.note == f"Every row: n = {len(SEEDS)}"
    # the same strings as the frame: only the layout changes
    assert shown.frame.equals(table.drop(columns=["n"]).astype(str))
    text = shown.to_text().splitlines()
    assert text[:2] == ["Test accuracy (%)", f"Every row: n = {len(SEEDS)}"]
    assert text[2].split() == ["α", "T", "mean", "±", "std", "95%", "interval"], "no index column"
    html = shown._repr_html_()
    assert html.count("<table>") == 1 and "<th" in html and ">n<" not in html
    assert '<td class="num">[' in html and html.count("<tr>") == len(table) + 1
    # a named index (pivot_means) becomes a column; rows under group headings
    grid = tables.book_table(tables.pivot_means(summ))
    assert list(grid.frame.columns)[0] == "α"
    grouped = tables.book_table(table.assign(g=["a", "a", "b", "b", "b", "b"][: len(table)]), group="g")
    assert grouped.to_html().count('class="kd-group"') == 2 and ">g<" not in grouped.to_html()
    # keep: a constant column that must stay
    assert "n" in tables.book_table(table, keep=["n"]).frame.columns


def test_figures_draw_every_cell():
    df = results.student_frame(grid_records())
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    fig, axes = plt.subplots(1, 3)
    figures.heatmap(axes[0], summ)
    assert len(axes[0].texts) == len(ALPHAS) * len(TEMPS)
    figures.plot_against_temperature(axes[1], summ)
    assert axes[1].get_legend_handles_labels()[1] == ["α = 0.5", "α = 1 (KL)", "α = ∞"]
    figures.plot_learning_curves(axes[2], df)
    assert len(axes[2].lines) == len(ALPHAS)
    plt.close(fig)


def _with_transfer(record, size):
    record["config"]["data"] = {"transfer_size": size}
    return record


def test_transfer_size_is_the_one_recorded_size(tmp_path):
    write(tmp_path, "synth", "cpu", [teacher()] + [_with_transfer(student(1.0, 2.0, 0.9, s, 0.8), 500)
                                                   for s in range(3)])
    assert results.load_results("synth", "cpu", tmp_path).transfer_size == 500


def test_transfer_size_refuses_mixed_sizes(tmp_path):
    write(tmp_path, "synth", "cpu", [_with_transfer(student(1.0, 2.0, 0.9, 0, 0.8), 500),
                                     _with_transfer(student(1.0, 2.0, 0.9, 1, 0.8), 700)])
    with pytest.raises(ValueError, match=r"must share one transfer_size, got \[500, 700\]"):
        _ = results.load_results("synth", "cpu", tmp_path).transfer_size




# ----------------------------------------------------------------------------- the command line's report


def test_report_text_uses_the_frame_summaries(tmp_path):
    recs = grid_records() + [student(1.0, 2.0, 0.0, s, 0.7 + 0.01 * s, label="alone") for s in SEEDS]
    # a profile name that no experiment defines: no record is left out as stale
    path = write(tmp_path, "hinton", "synthetic", recs)
    text = tables.report_text("hinton", path)
    lines = text.splitlines()
    assert lines[0] == f"== hinton / synthetic: {len(ACC) + len(SEEDS)} student runs, 1 teacher(s) =="
    assert "teacher teacher: test accuracy 0.9000" in text
    summ = analysis.summarize_frame(results.student_frame(recs), results.CELL_FIELDS)
    rows = [ln.split() for ln in lines if ln.strip().startswith(("distilled", "alone"))]
    assert len(rows) == len(summ) == len(ALPHAS) * len(TEMPS) + 1
    alone = next(r for r in rows if r[0] == "alone")
    assert alone[:7] == ["alone", "mlp8x8", "-", "-", "0", "no", "4"]  # order and T unused
    vals = np.array([0.7 + 0.01 * s for s in SEEDS])
    assert alone[7:10] == [f"{vals.mean():.4f}", "±", f"{vals.std(ddof=1):.4f}"]
    assert alone[-1] == f"{stats.t.ppf(0.975, 3) * vals.std(ddof=1) / 2:.4f}"
    assert any(r[2] == "inf" for r in rows)


def test_cell_summary_merges_metrics_per_cell():
    df = results.student_frame(grid_records())
    cells = tables.cell_summary(df, ["test_accuracy", "test_errors"])
    assert list(cells.columns[:len(results.CELL_FIELDS) + 1]) == [*results.CELL_FIELDS, "n"]
    assert len(cells) == len(ALPHAS) * len(TEMPS) and (cells["n"] == len(SEEDS)).all()
    for _, row in cells.iterrows():
        errs = [round((1 - ACC[(row["alpha"], row["T"], s)]) * 1000) for s in SEEDS]
        assert row["test_errors"] == pytest.approx(np.mean(errs))


COMMITTED = sorted(results.results_root().glob("*/*.jsonl"))


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.name}/{p.stem}" for p in COMMITTED])
def test_every_committed_results_file_loads_and_reports(path, capsys, monkeypatch):
    from kdlib.cli import main

    monkeypatch.delenv(ENV_PROFILE, raising=False)
    experiment, profile = path.parent.name, path.stem
    res = results.load_results(experiment, profile)
    df = res.frame()
    assert len(res.teachers) >= 1 and len(df) == len(res.students)
    if len(df):
        assert df["test_accuracy"].between(0, 1).all() and not df["model"].eq("").any()
        cells = analysis.summarize_frame(df, results.CELL_FIELDS)
        assert cells["n"].sum() == len(df)
    else:  # a run in progress commits its teachers before its first student finishes
        cells = []
    assert main(["report", experiment, "--profile", profile, "--out", str(results.results_root())]) == 0
    out = capsys.readouterr().out
    # every committed record is still a record of the current definition of its profile
    assert f"== {experiment} / {profile}: {len(df)} student runs, {len(res.teachers)} teacher(s) ==" in out
    assert "left out" not in out
    assert len([ln for ln in out.splitlines() if ln.strip().startswith(("distilled", "alone"))]) == len(cells)


def test_the_committed_results_are_there():
    assert {p.parent.name for p in COMMITTED} >= {"hinton", "renyi_grid", "omitted_class", "renyi_confirm",
                                                   "renyi_scale_control"}


# ----------------------------------------------------------------------------- book helpers


def test_glue_many_glues_plain_numbers_with_or_without_a_prefix(monkeypatch):
    import torch

    from kdlib.report import book

    glued = {}
    monkeypatch.setattr(book, "glue", lambda key, value, display: glued.update({key: (value, display)}))
    assert book.glue_many("pre", {"a": np.float64(2.5), "b": 3, "c": torch.tensor(1.5)}) is None
    assert glued == {"pre-a": (2.5, False), "pre-b": (3, False), "pre-c": (1.5, False)}
    assert list(glued) == ["pre-a", "pre-b", "pre-c"]  # in order: the stored outputs keep their order
    assert type(glued["pre-a"][0]) is float and type(glued["pre-c"][0]) is float
    book.glue_many({"x-y": np.int64(4)})
    assert glued["x-y"] == (4, False) and type(glued["x-y"][0]) is int
    with pytest.raises(TypeError, match="numbers"):
        book.glue_many("pre")
    with pytest.raises(TypeError, match="no second mapping"):
        book.glue_many({"a": 1}, {"b": 2})


def test_glue_figure_glues_and_closes(monkeypatch):
    from kdlib.report import book

    glued = {}
    monkeypatch.setattr(book, "glue", lambda key, value, display: glued.update({key: (value, display)}))
    fig, _ = plt.subplots()
    book.glue_figure("fig-x", fig)
    assert glued == {"fig-x": (fig, False)} and not plt.fignum_exists(fig.number)


def test_assert_identity_and_assert_differs():
    import sympy as sp

    from kdlib.report import book

    x, y = sp.symbols("x y", positive=True)
    book.assert_identity((x + 1) ** 2, x**2 + 2 * x + 1)
    book.assert_identity((x + 1) ** 2 - x**2 - 2 * x - 1, simplify=sp.expand)
    book.assert_identity(sp.log(x * y), sp.log(x) + sp.log(y), prepare=book.expand_logs)
    book.assert_identity(sp.Matrix([[x, 1], [0, x]]) ** 2, sp.Matrix([[x**2, 2 * x], [0, x**2]]))
    book.assert_identity(sp.Matrix([[1, -1], [-1, 1]]) * sp.ones(2, 1))  # a matrix that must vanish
    book.assert_differs((x + 1) ** 2, x**2 + 1)
    with pytest.raises(AssertionError, match=r"eq 1\.5: lhs - rhs reduces to 2\*x, not 0"):
        book.assert_identity((x + 1) ** 2, x**2 + 1, what="eq 1.5")
    with pytest.raises(AssertionError, match="it is an identity"):
        book.assert_differs(sp.sin(x) ** 2 + sp.cos(x) ** 2, 1)
    with pytest.raises(AssertionError, match="not 0"):
        book.assert_identity(sp.Matrix([x, 1]), sp.Matrix([x, 2]))


def test_show_displays_typeset_math(monkeypatch):
    import sympy as sp

    from kdlib.report import book

    shown = []
    monkeypatch.setattr(book, "display", shown.append)
    book.show(r"\frac{\partial}{\partial z}", sp.Symbol("q") - sp.Symbol("p"))
    assert len(shown) == 1 and shown[0].data == r"\frac{\partial}{\partial z} = - p + q"


def test_page_header_and_results_page(tmp_path, monkeypatch):
    from kdlib.report import book

    monkeypatch.delenv(ENV_PROFILE, raising=False)
    shown = []
    monkeypatch.setattr(book, "display", shown.append)
    res = book.results_page("hinton")
    assert len(shown) == 1, "the header is one output"
    text = repr(shown[0])
    assert text == repr(book.page_header(res))
    lines = text.splitlines()
    assert lines[0] == "results: experiment hinton, profile full", "the best committed profile is shown"
    assert re.fullmatch(r"runs: \d+ students and 3 teachers; seeds 0-1[0-4]", lines[1]), lines[1]
    assert max(len(ln) for ln in lines) <= book.WIDTH, "short lines: the block reads without scrolling"
    assert "transfer set: all 54000 training images (students)" in lines
    assert "teachers: 3 trained independently: CNN, conv 32-64, hidden 256" in lines
    assert "teacher data: all training images, input jitter ±2 px" in lines
    assert lines[-1].startswith("teachers, test: accuracy 92.39, 92.67, 92.73% (")
    assert text.startswith(repr(book.page_header(res, details=False)) + "\ndata: ")
    cpu = repr(book.page_header(results.load_results("hinton", "cpu"))).splitlines()  # 1 teacher, no jitter
    assert cpu[1].startswith("runs: 39 students and 1 teacher; seeds 0, 1, 2")
    assert any(ln.startswith("data: fashion_mnist: 54000 training") for ln in cpu)
    assert "transfer set: the first 5000 training images (students)" in cpu
    assert "teacher: MLP, hidden layers 1200-1200, on the first 20000 training images" in cpu
    assert cpu[-1] == "teacher, test: accuracy 86.63% (1337 errors)"
    omitted = repr(book.page_header(results.load_results("omitted_class", "cpu"))).splitlines()
    assert "transfer set: the first 5000 training images less class 3 (Dress) (students)" in omitted
    html = shown[0]._repr_html_()
    assert html.startswith('<dl class="kd-fields">') and "<dt>commit</dt>" in html
    # results of the smoke profile are never shown as findings
    write(tmp_path, "synth", "smoke", grid_records())
    monkeypatch.setenv("KDLIB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv(ENV_PROFILE, "smoke")
    monkeypatch.setattr(book, "rerun_if_requested", lambda name: None)
    with pytest.raises(AssertionError, match="smoke numbers are never shown"):
        book.results_page("synth")


# ----------------------------------------------------------------------------- power and equivalence


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_paired_power_matches_a_simulation_of_the_t_test(alternative):
    rng = np.random.default_rng(11)
    effect, sd, n, trials = 0.3, 0.5, 12, 20_000
    d = rng.normal(effect, sd, size=(trials, n))
    p = stats.ttest_1samp(d, 0.0, axis=1, alternative=alternative).pvalue
    simulated = float((p < 0.05).mean())
    got = kstats.paired_power(effect, sd, n, alternative=alternative)
    assert got == pytest.approx(simulated, abs=0.012)
    assert 0.3 < got < 0.9  # neither trivial nor certain for these numbers


def test_two_sided_power_is_finite_and_grows_with_the_effect_at_holm_levels():
    # scipy's nct.cdf is NaN deep in its left tail (df 11 at noncentrality 6.9); the power must not be
    for n, level in [(12, 0.05 / 6), (12, 0.05), (3, 0.05 / 11)]:
        powers = [kstats.paired_power(e, 0.01, n, level, "two-sided") for e in np.linspace(0, 0.05, 501)]
        assert np.isfinite(powers).all() and np.all(np.diff(powers) >= -1e-12)
        assert powers[0] == pytest.approx(level, abs=1e-9) and powers[-1] > 0.25 + powers[0]
    d = kstats.detectable_effect(0.01, 12, 0.05 / 6, alternative="two-sided")
    assert kstats.paired_power(d, 0.01, 12, 0.05 / 6, "two-sided") == pytest.approx(0.8)


def test_runs_for_power_is_the_smallest_n_that_reaches_it():
    n = kstats.runs_for_power(0.3, 0.4, power=0.9)
    assert kstats.paired_power(0.3, 0.4, n) >= 0.9 > kstats.paired_power(0.3, 0.4, n - 1)
    assert kstats.runs_for_power(0.3, 0.4, power=0.9, alternative="two-sided") > n
    with pytest.raises(ValueError, match="power in"):
        kstats.runs_for_power(0.3, 0.4, power=1.0)
    with pytest.raises(ValueError, match="need sd > 0"):
        kstats.paired_power(0.3, 0.0, 5)


def test_equivalence_test_agrees_with_the_90_percent_interval():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(3, 15))
        ref = rng.normal(0.9, 0.01, n)
        vals = ref + rng.normal(rng.normal(0, 0.002), 0.002, n)
        res = kstats.equivalence_test(vals, ref, margin=0.002)
        inside = -0.002 < res["ci90_low"] and res["ci90_high"] < 0.002
        assert (res["p"] < 0.05) == inside
    tight = kstats.equivalence_test([0.9, 0.901, 0.899, 0.9], [0.9, 0.9, 0.9, 0.9], margin=0.003)
    assert tight["p"] < 0.05 and tight["mean_diff"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="margin > 0"):
        kstats.equivalence_test([1, 2], [1, 2], margin=0)


def test_the_verdict_never_says_no_difference_for_a_test_that_only_did_not_reject():
    """A non-significant result (even one whose uncorrected interval excludes 0, as on page 2.3) is
    "no difference shown", never "no difference": that would claim equivalence, which takes TOST."""
    assert analysis.verdict(-0.0212, 0.2) == "no difference shown"
    assert analysis.verdict(-0.2257, 0.06) == "no difference shown"
    assert analysis.verdict(0.004, 0.01) == "better" and analysis.verdict(-0.004, 0.049) == "worse"
    assert analysis.verdict(0.004, math.nan) == "no difference shown"
    assert analysis.verdict(0.004, 0.02, level=0.01) == "no difference shown"


def test_a_diverged_run_does_not_blank_a_mean_curve():
    """Fig. 2.7 lost most of its lines to one diverged run each: the mean now leaves its NaN out."""
    np.testing.assert_array_equal(figures.curve_mean([[1.0, 2.0, 3.0], [3.0, math.nan, 5.0], [2.0, 4.0]]),
                                  [2.0, 3.0])
    assert math.isnan(figures.curve_mean([[1.0, math.nan], [2.0, math.inf]])[1])
    with pytest.raises(ValueError, match="non-empty"):
        figures.curve_mean([])
    df = pd.DataFrame({"alpha": [1.0, 1.0], "curve_val_accuracy": [[0.5, 0.6], [0.7, math.nan]]})
    fig, ax = plt.subplots()
    figures.plot_learning_curves(ax, df)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [60.0, 60.0])
    plt.close(fig)
