"""kdlib.analysis on synthetic records; expected values from numpy/scipy, computed independently."""

from __future__ import annotations

import itertools
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from kdlib import analysis  # noqa: E402
from kdlib.results import ResultsStore  # noqa: E402

#: Two-sided 95% Student-t quantiles for df = 1 ... 30 as printed in statistics tables (3 decimals):
#: an independent reference for the exact quantile.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
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
ACC = {(a, T, s): float(0.8 + 0.01 * i + RNG.normal(0, 0.01))
       for i, (a, T, s) in enumerate(itertools.product(ALPHAS, TEMPS, SEEDS))}


def grid_records():
    return [teacher()] + [student(a, T, 0.9, s, ACC[(a, T, s)]) for (a, T, s) in ACC]


# ----------------------------------------------------------------------------- Student t, Holm


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 6, 7, 10, 15, 30])
def test_t_cdf_matches_scipy(df):
    for t in (-7.5, -2.0, -0.3, 0.0, 0.4, 1.0, 2.5, 12.0):
        assert analysis.t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
        assert analysis.t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), abs=1e-12)


@pytest.mark.parametrize("df", [1, 2, 3, 4, 8, 29])
def test_t_quantile_matches_scipy_and_the_results_table(df):
    for q in (0.025, 0.5, 0.9, 0.975, 0.995):
        assert analysis.t_quantile(q, df) == pytest.approx(stats.t.ppf(q, df), abs=1e-9)
    assert analysis.t_quantile(0.975, df) == pytest.approx(_T975[df - 1], abs=5e-4)


def test_t_bad_input():
    with pytest.raises(ValueError, match="df must be an integer >= 1"):
        analysis.t_cdf(1.0, 0)
    with pytest.raises(ValueError, match="df must be an integer >= 1"):
        analysis.t_cdf(1.0, 2.5)
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\)"):
        analysis.t_quantile(1.0, 3)


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert analysis.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert analysis.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = analysis.holm([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


# ----------------------------------------------------------------------------- loading, provenance


def test_committed_profile_prefers_full_and_env_switch(tmp_path, monkeypatch):
    monkeypatch.delenv(analysis.ENV_PROFILE, raising=False)
    assert analysis.committed_profile("synth", tmp_path) is None
    with pytest.raises(FileNotFoundError, match="python -m kdlib run synth --profile cpu"):
        analysis.load_results("synth", root=tmp_path)
    write(tmp_path, "synth", "cpu", grid_records())
    assert analysis.committed_profile("synth", tmp_path) == "cpu"
    full = [dict(r, config={**r["config"], "profile": "full"}) for r in grid_records()[:3]]
    write(tmp_path, "synth", "full", full)
    assert analysis.committed_profile("synth", tmp_path) == "full"
    assert len(analysis.load_results("synth", root=tmp_path).records) == 3
    monkeypatch.setenv(analysis.ENV_PROFILE, "cpu")
    res = analysis.load_results("synth", root=tmp_path)
    assert res.profile == "cpu" and len(res.students) == len(ACC) and len(res.teachers) == 1
    monkeypatch.setenv(analysis.ENV_PROFILE, "huge")
    with pytest.raises(ValueError, match="KDLIB_PROFILE must be one of smoke, cpu, full"):
        analysis.requested_profile()


def test_rerun_if_requested_calls_the_engine(tmp_path, monkeypatch):
    calls = []
    import kdlib.experiments

    monkeypatch.setattr(kdlib.experiments, "run_experiment",
                        lambda name, profile, **kw: calls.append((name, profile, kw["device"], kw["out"])))
    monkeypatch.delenv(analysis.ENV_PROFILE, raising=False)
    assert analysis.rerun_if_requested("synth", tmp_path) is None and calls == []
    monkeypatch.setenv(analysis.ENV_PROFILE, "full")
    monkeypatch.setenv(analysis.ENV_DEVICE, "cuda")
    assert analysis.rerun_if_requested("synth", tmp_path) == "full"
    monkeypatch.setenv(analysis.ENV_PROFILE, "smoke")
    monkeypatch.delenv(analysis.ENV_DEVICE)
    analysis.rerun_if_requested("synth", tmp_path)
    assert calls == [("synth", "full", "cuda", tmp_path), ("synth", "smoke", "auto", tmp_path / "_scratch")]


def test_provenance_from_records(tmp_path):
    recs = grid_records()
    recs[3] = student(1.0, 2.0, 0.9, 9, 0.5, commit="c" * 40, dirty=True, started="2026-01-03T08:00:00Z",
                      finished="2026-01-03T08:30:00Z", wall=1800.0)
    write(tmp_path, "synth", "cpu", recs)
    res = analysis.load_results("synth", "cpu", tmp_path)
    p = analysis.provenance(res.records)
    assert p["commits"] == ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc+dirty"]
    assert p["started"] == "2026-01-01T09:00:00Z" and p["finished"] == "2026-01-03T08:30:00Z"
    assert p["students"] == len(recs) - 1 and p["teachers"] == 1
    assert p["seeds"] == [0, 1, 2, 3, 9]
    # three distinct groups: the teacher (600 s), the shared student group (300 s), the odd one (1800 s)
    assert p["wall_seconds"] == pytest.approx(2700.0)
    line = analysis.provenance_line(res)
    assert "profile cpu" in line and "cccccccccc+dirty" in line and "2026-01-01 to 2026-01-03" in line
    assert "45 min of training" in line


# ----------------------------------------------------------------------------- summaries


def test_student_frame_and_summary_match_numpy(tmp_path):
    write(tmp_path, "synth", "cpu", grid_records())
    df = analysis.load_results("synth", "cpu", tmp_path).frame()
    assert len(df) == len(ACC) and set(df["hidden"]) == {"8x8"}
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
    df = analysis.student_frame(grid_records())
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
        pvals.append(ref.pvalue)
    order = np.argsort(pvals)
    expected = np.empty(4)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (4 - rank) * pvals[i]))
        expected[i] = running
    assert paired["p_holm"].to_numpy() == pytest.approx(expected)
    for _, row in paired.iterrows():
        want = ("better" if row["mean_diff"] > 0 else "worse") if row["p_holm"] < 0.05 else "no difference"
        assert row["verdict"] == want


def test_paired_differences_detects_a_clear_effect_and_pairs_by_seed():
    # order 2 is KL plus 0.05 on every seed, with seed effects far larger than the gap:
    # unpaired intervals overlap, the paired test must still see it
    seed_effect = {0: -0.2, 1: 0.0, 2: 0.2}
    recs = [student(1.0, 4.0, 0.9, s, 0.6 + e) for s, e in seed_effect.items()]
    recs += [student(2.0, 4.0, 0.9, s, 0.65 + e + 0.001 * s) for s, e in seed_effect.items()]
    df = analysis.student_frame(recs)
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
    tuned = analysis.tuned_comparison(analysis.student_frame(recs), ["alpha", "beta"])
    chosen = {a: set(g["T"]) for a, g in tuned.groupby("alpha")}
    assert chosen == {1.0: {2.0}, 2.0: {4.0}} and len(tuned) == 6


# ----------------------------------------------------------------------------- formatting and figures


def test_formatting():
    assert analysis.fmt_alpha(math.inf) == "∞" and analysis.fmt_alpha(0.25) == "0.25"
    assert analysis.fmt_mean_std(0.85123, 0.0031) == "85.12 ± 0.31"
    assert analysis.fmt_mean_std(0.5, math.nan) == "50.00"
    assert analysis.fmt_interval(0.844, 0.8584) == "[84.40, 85.84]"
    assert analysis.fmt_p(0.0004) == "<0.001" and analysis.fmt_p(0.0456) == "0.046"
    assert analysis.fmt_p(math.nan) == "-"
    df = analysis.student_frame(grid_records())
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    grid = analysis.pivot_means(summ)
    assert list(grid.columns) == ["T = 2", "T = 4"] and list(grid.index) == ["0.5", "1", "∞"]
    vals = np.array([ACC[(math.inf, 4.0, s)] for s in SEEDS])
    assert grid.loc["∞", "T = 4"] == f"{vals.mean() * 100:.2f} ± {vals.std(ddof=1) * 100:.2f}"
    table = analysis.summary_table(summ, ["alpha", "T"], {"alpha": "α"})
    assert list(table.columns) == ["α", "T", "n", "mean ± std", "95% interval"]
    assert table.to_string() == analysis.summary_table(summ, ["alpha", "T"], {"alpha": "α"}).to_string()


def test_figures_draw_every_cell():
    df = analysis.student_frame(grid_records())
    summ = analysis.summarize_frame(df, ["alpha", "T"])
    fig, axes = plt.subplots(1, 3)
    analysis.heatmap(axes[0], summ)
    assert len(axes[0].texts) == len(ALPHAS) * len(TEMPS)
    analysis.plot_against_temperature(axes[1], summ)
    assert len(axes[1].get_legend_handles_labels()[1]) == len(ALPHAS)
    analysis.plot_learning_curves(axes[2], df)
    assert len(axes[2].lines) == len(ALPHAS)
    plt.close(fig)


def _with_transfer(record, size):
    record["config"]["data"] = {"transfer_size": size}
    return record


def test_transfer_size_is_the_one_recorded_size(tmp_path):
    write(tmp_path, "synth", "cpu", [teacher()] + [_with_transfer(student(1.0, 2.0, 0.9, s, 0.8), 500)
                                                   for s in range(3)])
    assert analysis.load_results("synth", "cpu", tmp_path).transfer_size == 500


def test_transfer_size_refuses_mixed_sizes(tmp_path):
    write(tmp_path, "synth", "cpu", [_with_transfer(student(1.0, 2.0, 0.9, 0, 0.8), 500),
                                     _with_transfer(student(1.0, 2.0, 0.9, 1, 0.8), 700)])
    with pytest.raises(ValueError, match=r"must share one transfer_size, got \[500, 700\]"):
        _ = analysis.load_results("synth", "cpu", tmp_path).transfer_size


def test_glue_number_stores_plain_python_numbers(monkeypatch):
    import myst_nb

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda key, value, display: glued.update({key: (value, display)}))
    analysis.glue_number("a", np.float64(2.5))
    analysis.glue_number("b", 3)
    assert glued == {"a": (2.5, False), "b": (3, False)}
    assert type(glued["a"][0]) is float
