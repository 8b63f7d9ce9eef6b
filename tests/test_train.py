"""kdlib.lab.train: stacked training equals one-by-one training, losses, metrics, devices, caching.

Tolerances of the stacked-vs-alone comparison: float64 1e-10 (the two differ only in
the order of floating-point reductions inside batched vs single matrix products), float32
2e-5 absolute on weights of magnitude ~0.1-1 after ~40 SGD steps.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdlib.lab.cache as Cache
import kdlib.lab.config as C
import kdlib.lab.metrics as M
import kdlib.lab.store as St
import kdlib.lab.train as E
from kdlib.lab.data import load_dataset
from kdlib.lab.models import MLP, StackedMLP, init_mlp_params
from kdlib.losses import DistillationLoss

INF = math.inf



SPECS = [
    C.StudentSpec(alpha=1.0, T=4.0, beta=0.9, seed=0, hidden=(16, 16)),
    C.StudentSpec(alpha=0.5, T=2.0, beta=1.0, seed=1, hidden=(16, 16)),
    C.StudentSpec(alpha=0.5, T=2.0, beta=1.0, seed=1, hidden=(16, 16), normalize_by_alpha=True),
    C.StudentSpec(alpha=INF, T=8.0, beta=0.9, seed=2, hidden=(16, 16)),
    C.StudentSpec(alpha=2.0, T=1.0, beta=0.5, seed=3, hidden=(16, 16), normalize_by_alpha=True),
    C.StudentSpec(alpha=1.0, T=1.0, beta=0.0, seed=4, hidden=(16, 16), label="alone"),
    C.StudentSpec(alpha=1.0, T=2.0, beta=0.9, seed=5, hidden=(16, 16), reverse=True),  # reverse KL
]


@pytest.fixture(scope="module")
def digits():
    s = load_dataset("digits")
    n = 240
    x, y = s.x_train[:n], s.y_train[:n]
    w = torch.randn(64, 10, generator=torch.Generator().manual_seed(9))
    teacher = 0.5 * x.reshape(n, 64) @ w  # any fixed teacher logits will do
    return x, y, teacher


def train_alone(spec, x, y, teacher, cfg, data_seed, dtype):
    """Reference: one plain MLP and kdlib.DistillationLoss, the usual single-student loop."""
    model = MLP(64, spec.hidden, 10).to(dtype).load_params(
        init_mlp_params([64, *spec.hidden, 10], spec.seed, dtype))
    loss_fn = DistillationLoss(spec.alpha, spec.T, spec.beta, normalize_by_alpha=spec.normalize_by_alpha,
                               reverse=spec.reverse)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(data_seed)
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    total, step = cfg.epochs * steps_per_epoch, 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
            cosine = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            lr = cfg.lr if cfg.schedule == "constant" else cosine
            for g in opt.param_groups:
                g["lr"] = lr
            if step < cfg.warmup_steps:
                for g in opt.param_groups:
                    g["lr"] = lr * (step + 1) / cfg.warmup_steps
            loss = loss_fn(model(x[idx]), teacher[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            if cfg.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            step += 1
    return [(lin.weight.detach().T, lin.bias.detach()) for lin in model.linears()]


@pytest.mark.parametrize("dtype,tol,cfg", [
    (torch.float64, 1e-10, C.TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    (torch.float32, 2e-5, C.TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9)),
    (torch.float64, 1e-10, C.TrainConfig(epochs=1, batch_size=50, lr=3e-3, optimizer="adam",
                                         schedule="constant")),
    (torch.float64, 1e-10, C.TrainConfig(epochs=2, batch_size=32, lr=0.2, warmup_steps=5, clip_norm=0.5)),
])
def test_stacked_training_equals_training_one_by_one(digits, dtype, tol, cfg):
    x, y, teacher = (t.to(dtype) if t.is_floating_point() else t for t in digits)
    model = StackedMLP(64, (16, 16), 10, [s.seed for s in SPECS], dtype=dtype)
    curves = E.fit(model, x, E.distillation_objective(y, teacher, SPECS), cfg, data_seed=7,
                   val=(x[:50], y[:50]))
    assert len(curves["train_loss"]) == len(SPECS) and len(curves["val_accuracy"][0]) == cfg.epochs
    for s, spec in enumerate(SPECS):
        alone = train_alone(spec, x, y, teacher, cfg, 7, dtype)
        for (w_ref, b_ref), (w, b) in zip(alone, model.student_params(s), strict=True):
            torch.testing.assert_close(w, w_ref, rtol=0, atol=tol)
            torch.testing.assert_close(b, b_ref, rtol=0, atol=tol)
        # and the students really moved away from their initialisation
        assert (model.student_params(s)[0][0] - init_mlp_params([64, 16, 16, 10], spec.seed, dtype)[0][0]
                ).abs().max() > 1e-3


def test_student_losses_equal_distillation_loss_per_student():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(len(SPECS), 7, 10, generator=g, dtype=torch.float64) * 3
    v = torch.randn(7, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (7,), generator=g)
    got = E.distillation_objective(y, v, SPECS)(z, torch.arange(7))
    for s, spec in enumerate(SPECS):
        ref = DistillationLoss(spec.alpha, spec.T, spec.beta, normalize_by_alpha=spec.normalize_by_alpha,
                               reverse=spec.reverse)
        torch.testing.assert_close(got[s], ref(z[s], v, y), rtol=1e-12, atol=1e-12)
    forward = DistillationLoss(1.0, 2.0, 0.9)(z[-1], v, y)
    assert not torch.allclose(got[-1], forward), "the reverse student is not trained with forward KL"
    # alpha = 1, beta = 0.9 by hand: Hinton's loss with F.kl_div
    by_hand = 0.1 * F.cross_entropy(z[0], y) + 0.9 * 16 * F.kl_div(
        F.log_softmax(z[0] / 4, -1), F.softmax(v / 4, -1), reduction="batchmean")
    torch.testing.assert_close(got[0], by_hand, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="one entry per student"):
        E.distillation_objective(y, v, SPECS[:2])(z, torch.arange(7))


def test_student_spec_checks():
    with pytest.raises(ValueError, match="alpha"):
        C.StudentSpec(alpha=0.0)
    with pytest.raises(ValueError, match="T must"):
        C.StudentSpec(T=math.inf)
    with pytest.raises(ValueError, match="beta"):
        C.StudentSpec(beta=1.5)
    with pytest.raises(ValueError, match="normalize_by_alpha"):
        C.StudentSpec(alpha=INF, normalize_by_alpha=True)
    with pytest.raises(ValueError, match="lr must be"):
        C.StudentSpec(lr=0.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        C.StudentSpec(optimizer="lbfgs")


def test_a_students_own_learning_rate_and_optimiser_make_its_stack_and_key():
    from kdlib.lab.experiments import get_experiment
    from kdlib.lab.profile import student_config
    from kdlib.lab.shards import stack_groups
    from kdlib.lab.store import run_key

    p = get_experiment("hinton").profile("smoke")
    base = C.StudentSpec(alpha=2.0, T=4.0, seed=0, hidden=(16, 16))
    specs = [base, C.StudentSpec(alpha=2.0, T=4.0, seed=0, hidden=(16, 16), lr=0.2),
             C.StudentSpec(alpha=1.0, T=4.0, seed=0, hidden=(16, 16), lr=0.2),
             C.StudentSpec(alpha=2.0, T=4.0, seed=0, hidden=(16, 16), optimizer="adam"),
             C.StudentSpec(alpha=1.0, T=4.0, seed=0, hidden=(16, 16), reverse=True)]
    # reverse shares the stack; a learning rate or optimiser of its own makes another
    assert stack_groups(specs, 128) == [[0, 4], [1, 2], [3]]
    assert p.student_train_of(base) is p.student_train
    assert p.student_train_of(specs[1]).lr == 0.2
    assert p.student_train_of(specs[1]).epochs == p.student_train.epochs
    assert p.student_train_of(specs[3]).optimizer == "adam"
    confs = [student_config("x", "smoke", p, s, "t") for s in specs]
    assert "reverse" not in confs[0] and confs[4]["reverse"] is True
    assert confs[1]["lr"] == 0.2 and confs[0]["lr"] == p.student_train.lr
    assert len({run_key(c) for c in confs}) == len(specs)
    # a spec that sets the profile's own learning rate is the same run as one that does not
    same = C.StudentSpec(alpha=2.0, T=4.0, seed=0, hidden=(16, 16), lr=p.student_train.lr)
    assert run_key(student_config("x", "smoke", p, same, "t")) == run_key(confs[0])


def test_train_config_checks_and_schedule():
    cfg = C.TrainConfig(epochs=1, lr=0.1)
    assert cfg.lr_at(0, 10) == pytest.approx(0.1) and cfg.lr_at(5, 10) == pytest.approx(0.05)
    assert cfg.lr_at(10, 10) == pytest.approx(0.0, abs=1e-15)
    assert C.TrainConfig(epochs=1, lr=0.1, schedule="constant").lr_at(7, 10) == 0.1
    for bad in [dict(epochs=0), dict(epochs=1, lr=0), dict(epochs=1, momentum=1.0),
                dict(epochs=1, optimizer="lbfgs"), dict(epochs=1, schedule="step")]:
        with pytest.raises(ValueError):
            C.TrainConfig(**bad)


def test_resolve_device(monkeypatch):
    assert C.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        C.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert C.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(C.DeviceUnavailableError, match="CUDA is not available"):
        C.resolve_device("cuda")
    with pytest.raises(C.DeviceUnavailableError):
        C.resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert C.resolve_device("auto") == torch.device("cuda")


def test_train_classifier_learns_and_is_deterministic():
    s = load_dataset("digits")
    cfg = C.TrainConfig(epochs=4, batch_size=64, lr=0.05)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = MLP(64, (64,), 10, dropout=0.1)
        curves = E.fit(model, s.x_train, E.cross_entropy_objective(s.y_train), cfg, data_seed=1,
                       val=(s.x_val, s.y_val))
        weights.append(model.linears()[0].weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    loss, val = curves["train_loss"][0], curves["val_accuracy"][0]
    assert loss[-1] < loss[0] and len(val) == 4 and len(curves["train_loss"]) == 1
    assert float(M.accuracy(M.predict_logits(model, s.x_test), s.y_test)) > 0.9


def test_evaluate_logits_against_numpy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(3, 40, 4)) * 2
    y = rng.integers(0, 4, 40)
    y[:4] = [0, 1, 2, 3]
    t = rng.normal(size=(40, 4))
    out = M.evaluate_logits(torch.tensor(z), torch.tensor(y), 4, torch.tensor(t))
    for s in range(3):
        pred = z[s].argmax(-1)
        logq = z[s] - np.log(np.exp(z[s]).sum(-1, keepdims=True))
        logp = t - np.log(np.exp(t).sum(-1, keepdims=True))
        assert out[s]["test_errors"] == int((pred != y).sum())
        assert out[s]["test_accuracy"] == pytest.approx((pred == y).mean())
        assert out[s]["per_class_accuracy"] == pytest.approx([(pred[y == c] == c).mean() for c in range(4)])
        assert out[s]["test_ce"] == pytest.approx(-logq[np.arange(40), y].mean(), rel=1e-12)
        assert out[s]["teacher_agreement"] == pytest.approx((pred == t.argmax(-1)).mean())
        assert out[s]["test_kl_from_teacher"] == pytest.approx(
            (np.exp(logp) * (logp - logq)).sum(-1).mean(), rel=1e-12)
    single = M.evaluate_logits(torch.tensor(z[1]), torch.tensor(y), 4)
    assert single[0]["test_errors"] == out[1]["test_errors"] and "teacher_agreement" not in single[0]


def test_bias_shift_against_brute_force():
    rng = np.random.default_rng(1)
    cls, shifts = 2, [0.5 * i for i in range(1, 21)]

    def data(n):
        y = rng.integers(0, 4, n)
        z = rng.normal(size=(2, n, 4)) + 3 * np.eye(4)[y]
        z[..., cls] -= 4.0  # a student that never predicts the omitted class
        return z, y

    zv, yv = data(300)
    zt, yt = data(200)
    out = M.bias_shift(torch.tensor(zv), torch.tensor(yv), torch.tensor(zt), torch.tensor(yt), cls, shifts)

    def acc(z, y, d):
        z = z.copy()
        z[..., cls] += d
        return (z.argmax(-1) == y).mean(), (z.argmax(-1) == y)[y == cls].mean()

    for s in range(2):
        val = [acc(zv[s], yv, d)[0] for d in [0.0, *shifts]]
        best = [0.0, *shifts][int(np.argmax(val))]
        assert out[s]["bias_shift"] == best and best > 0
        assert out[s]["val_accuracy_after_shift"] == pytest.approx(max(val))
        before, after = acc(zt[s], yt, 0.0), acc(zt[s], yt, best)
        assert out[s]["test_accuracy_before_shift"] == pytest.approx(before[0])
        assert out[s]["omitted_class_accuracy_before_shift"] == pytest.approx(before[1])
        assert out[s]["omitted_class_accuracy_after_shift"] == pytest.approx(after[1])
        assert out[s]["test_accuracy_after_shift"] == pytest.approx(after[0])
        assert after[1] > before[1]
        assert out[s]["omitted_class_auroc"] == pytest.approx(pairwise_auroc(zt[s][:, cls], yt == cls))
    with pytest.raises(ValueError, match="ascending"):
        M.bias_shift(torch.tensor(zv), torch.tensor(yv), torch.tensor(zt), torch.tensor(yt), cls, [2, 1])


def pairwise_auroc(score, positive):
    """The AUROC by its definition: P(score of a positive > score of a negative), ties count 1/2."""
    pos, neg = score[positive], score[~positive]
    return ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_class_auroc_is_the_pairwise_probability_and_ignores_a_bias_shift():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 500)
    z = rng.normal(size=(500, 3)) + 0.8 * np.eye(3)[y]
    z[:50, 1] = np.round(z[:50, 1], 1)  # some ties
    got = M.class_auroc(torch.tensor(z), torch.tensor(y), 1)
    assert got == pytest.approx(pairwise_auroc(z[:, 1], y == 1), abs=1e-12)
    assert 0.6 < got < 0.9  # informative, not perfect
    shifted = z.copy()
    shifted[:, 1] += 7.5
    assert M.class_auroc(torch.tensor(shifted), torch.tensor(y), 1) == got
    broken = z.copy()
    broken[3, 1] = np.nan
    assert math.isnan(M.class_auroc(torch.tensor(broken), torch.tensor(y), 1))
    with pytest.raises(ValueError, match="must contain class 1"):
        M.class_auroc(torch.tensor(z), torch.zeros(500, dtype=torch.long), 1)
    with pytest.raises(ValueError, match="logits must be"):
        M.class_auroc(torch.tensor(z[None]), torch.tensor(y), 1)


ROWS = {"train": 5, "val": 2, "test": 3}


def cached_teacher(tmp_path):
    cache = Cache.TeacherCache(tmp_path)
    model = MLP(64, (8,), 10)
    logits = {k: torch.randn(n, 10) for k, n in ROWS.items()}
    with cache.lock("k"):
        record = cache.save("k", model.state_dict(), logits, {"key": "k", "provenance": {"x": 1}})
    return cache, model, logits, record


def test_teacher_cache_round_trip(tmp_path):
    assert Cache.TeacherCache(tmp_path).load("k", ROWS, 10) is None
    cache, model, logits, record = cached_teacher(tmp_path)
    assert set(record["provenance"]["cache"]) == {"weights_sha256", "logits_sha256"}
    got, rec = cache.load("k", ROWS, 10)
    assert rec == record and all(torch.equal(got[k], logits[k]) for k in ROWS)
    assert not [p for p in cache.dir.iterdir() if p.name.endswith(".tmp")]
    state = torch.load(cache.paths("k")[0], weights_only=True)  # weights load without pickle code
    assert torch.equal(state["net.1.weight"], model.state_dict()["net.1.weight"])


def _nan_logits(path):
    d = torch.load(path, weights_only=True)
    d["val"][0, 0] = math.nan
    torch.save(d, path)


def _short_logits(path):
    d = torch.load(path, weights_only=True)
    d["train"] = d["train"][:4]
    torch.save(d, path)


def _missing_split(path):
    d = torch.load(path, weights_only=True)
    del d["test"]
    torch.save(d, path)


def _permuted_logits(path):
    d = torch.load(path, weights_only=True)
    d["train"] = d["train"].flip(0)
    torch.save(d, path)


@pytest.mark.parametrize("which,damage", [
    (0, lambda p: p.write_bytes(b"not a checkpoint")),               # weights: garbage
    (0, lambda p: p.write_bytes(p.read_bytes()[:40])),                # weights: truncated
    (1, lambda p: p.write_bytes(p.read_bytes()[:-7])),                # logits: truncated
    (1, _nan_logits), (1, _short_logits), (1, _missing_split),         # logits: wrong values or shapes
    (1, _permuted_logits),                                            # logits: valid, but not the teacher's
    (2, lambda p: p.write_text("garbage")),                            # record: not JSON
    (2, lambda p: p.write_text('{"key": "k"}')),                       # record: no checksums
    (2, lambda p: p.write_text(p.read_text().replace('"k"', '"other"'))),  # record: another key
    (0, lambda p: p.unlink()),                                         # a file missing
])
def test_a_damaged_cache_entry_is_moved_aside_and_reported(tmp_path, which, damage):
    cache, *_ = cached_teacher(tmp_path)
    damage(cache.paths("k")[which])
    messages = []
    assert cache.load("k", ROWS, 10, log=messages.append) is None
    assert len(messages) == 1 and "damaged" in messages[0] and str(cache.paths("k")[2]) in messages[0]
    assert not any(p.exists() for p in cache.paths("k"))  # absent now: the teacher is retrained
    assert any(p.name.endswith(".damaged") for p in cache.dir.iterdir())  # nothing deleted



def test_a_second_damage_to_the_same_key_keeps_the_first_damaged_copy(tmp_path):
    """Three damages: three sets of *.damaged files, each with the bytes it had (nothing lost)."""
    damaged = []
    for i in range(3):
        cache, *_ = cached_teacher(tmp_path)
        cache.paths("k")[2].write_text(f"garbage {i}")
        assert cache.load("k", ROWS, 10, log=lambda m: None) is None
        damaged.append(f"garbage {i}")
    records = sorted(cache.dir.glob("k.json*.damaged"))
    assert [p.name for p in records] == ["k.json.2.damaged", "k.json.3.damaged", "k.json.damaged"]
    assert sorted(p.read_text() for p in records) == damaged
    assert len(list(cache.dir.glob("k.pt*.damaged"))) == 3 and len(list(cache.dir.glob("k.logits.pt*"))) == 3

def test_a_kill_during_save_leaves_no_temporary_files(tmp_path):
    cache, *_ = cached_teacher(tmp_path)
    (cache.dir / ".k.pt.abc123.tmp").write_bytes(b"half")
    with cache.lock("k"):
        assert not list(cache.dir.glob("*.tmp"))


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    St.atomic_write(path, b"first")
    St.atomic_write(path, b"second")
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_file_lock_is_exclusive(tmp_path):
    with St.file_lock(tmp_path / "x.lock"):
        with pytest.raises(BlockingIOError):
            with St.file_lock(tmp_path / "x.lock", blocking=False):
                pass
    with St.file_lock(tmp_path / "x.lock", blocking=False):  # released on exit
        pass


def test_progress_is_silent_when_disabled_or_not_a_tty(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert list(E.progress(range(3), desc="x")) == [0, 1, 2]  # stderr is captured: not a TTY
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert list(E.progress(range(3), desc="y")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_a_diverged_student_does_not_touch_the_others(digits):
    x, y, teacher = (t.double() if t.is_floating_point() else t for t in digits)
    cfg = C.TrainConfig(epochs=1, batch_size=32, lr=0.05)
    specs = SPECS[:3]
    clean = StackedMLP(64, (16, 16), 10, [s.seed for s in specs], dtype=torch.float64)
    broken = StackedMLP(64, (16, 16), 10, [s.seed for s in specs], dtype=torch.float64)
    with torch.no_grad():
        broken.weights[1][1, 0, 0] = math.nan  # student 1 produces NaN from the first step
    E.fit(clean, x, E.distillation_objective(y, teacher, specs), cfg, data_seed=7)
    curves = E.fit(broken, x, E.distillation_objective(y, teacher, specs), cfg, data_seed=7)
    assert math.isnan(curves["train_loss"][1][-1]) and math.isfinite(curves["train_loss"][0][-1])
    for s in (0, 2):
        for (w0, b0), (w1, b1) in zip(clean.student_params(s), broken.student_params(s), strict=True):
            assert torch.equal(w0, w1) and torch.equal(b0, b1)


def test_clip_per_student_matches_torch_per_slice():
    g = torch.Generator().manual_seed(5)
    params = [torch.zeros(3, 4, 5, requires_grad=True), torch.zeros(3, 1, 5, requires_grad=True)]
    for p, scale in zip(params, (1.0, 3.0), strict=True):
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale
    for p in params:
        p.grad[2].mul_(1e-3)  # student 2 is below the limit and must stay untouched
    expected = []
    for s in range(3):
        alone = [torch.zeros(p.shape[1:], requires_grad=True) for p in params]
        for a, p in zip(alone, params, strict=True):
            a.grad = p.grad[s].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        expected.append([a.grad for a in alone])
    before = params[1].grad[2].clone()
    E.clip_per_model(params, 1.0, params[0].shape[0])
    for s in range(3):
        for p, e in zip(params, expected[s], strict=True):
            torch.testing.assert_close(p.grad[s], e, rtol=1e-6, atol=1e-7)
    assert torch.equal(params[1].grad[2], before)
    assert float(torch.cat([p.grad[0].flatten() for p in params]).norm()) == pytest.approx(1.0, rel=1e-5)


def test_warmup_and_new_options_keep_old_keys():
    cfg = C.TrainConfig(epochs=1, lr=0.1, schedule="constant", warmup_steps=4)
    assert [cfg.lr_at(i, 100) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert "warmup_steps" not in C.TrainConfig(epochs=1).to_dict()
    assert "warmup_epochs" not in C.TrainConfig(epochs=1).to_dict()
    by_epochs = C.TrainConfig(epochs=4, lr=0.1, schedule="constant", warmup_epochs=0.5)  # 25 steps an epoch
    assert [by_epochs.lr_at(i, 100) for i in (0, 12, 13, 20)] == pytest.approx([0.1 / 13, 0.1, 0.1, 0.1])
    assert by_epochs.to_dict()["warmup_epochs"] == 0.5
    with pytest.raises(ValueError, match="at most one of warmup_steps and warmup_epochs"):
        C.TrainConfig(epochs=1, warmup_steps=3, warmup_epochs=1.0)
    with pytest.raises(ValueError, match="warmup_epochs must be"):
        C.TrainConfig(epochs=1, warmup_epochs=-1.0)
    assert "clip_norm" not in C.TrainConfig(epochs=1).to_dict()
    assert C.TrainConfig(epochs=1, clip_norm=1.0).to_dict()["clip_norm"] == 1.0
    with pytest.raises(ValueError, match="clip_norm"):
        C.TrainConfig(epochs=1, clip_norm=0.0)


class _FixedLogits(torch.nn.Module):
    """A stand-in for stacked students whose logits are fixed: the teacher's plus small offsets."""

    def __init__(self, z):
        super().__init__()
        self.z = torch.nn.Parameter(z)

    def forward(self, x):
        return self.z


@pytest.mark.parametrize("T,offset,near", [(50.0, 0.05, True), (1.0, 0.05, True), (2.0, 3.0, False)])
def test_gradient_ratio_monitor_is_alpha_near_the_fit(T, offset, near):
    g = torch.Generator().manual_seed(5)
    v = torch.randn(64, 10, generator=g, dtype=torch.float64) * 2
    specs = [C.StudentSpec(alpha=a, T=T, normalize_by_alpha=n, reverse=r, hidden=(4,))
             for a, n, r in [(4.0, False, False), (4.0, True, False), (0.25, False, False),
                             (1.0, False, True), (1.0, False, False)]]
    specs.append(C.StudentSpec(beta=0.0, label="alone", hidden=(4,)))
    z = v + offset * torch.randn(len(specs), 64, 10, generator=g, dtype=torch.float64)
    z[1] = z[0]  # the same student logits, with and without the division by alpha
    monitor = E.gradient_ratio_monitor(torch.zeros(64, 1), v, torch.zeros(64, dtype=torch.long), specs)
    model = _FixedLogits(z)
    r = monitor(model)
    assert r.shape == (len(specs),) and math.isnan(r[-1]) and r[4] == pytest.approx(1.0)
    assert model.training and torch.equal(model.z.detach(), z)  # the monitor changes nothing
    assert r[1] == pytest.approx(r[0] / 4)  # the division by alpha divides the gradient by alpha
    if near:  # near the fit the Rényi gradient is alpha times KL's at every T; reverse KL's equals KL's
        assert r[:4].tolist() == pytest.approx([4.0, 1.0, 0.25, 1.0], rel=0.02)
    else:  # far from it (a student at initialisation) the ratio is far from alpha
        assert abs(r[0] - 4.0) > 1.0 and abs(r[3] - 1.0) > 0.05


def test_the_tuned_exploration_runs_at_smoke_scale_and_records_the_gradient_ratio(tmp_path):
    from kdlib.lab.config import ARMS, Arm
    from kdlib.lab.experiments import get_experiment
    from kdlib.lab.run import run_experiment
    from kdlib.lab.store import load_records

    p = get_experiment("renyi_explore").profile("smoke")
    path = run_experiment("renyi_explore", "smoke", out=tmp_path, cache_dir=tmp_path / "cache",
                          log=lambda m: None)
    students = load_records(path, kind="student")
    assert len(students) == len(p.students) == len(ARMS) * 2 + 2  # 2 learning rates, 1 T, 1 seed
    assert {r["config"]["lr"] for r in students} == set(get_experiment("renyi_explore").sizes["lrs"].smoke)
    arms = {Arm(float(r["config"]["alpha"]), r["config"]["normalize_by_alpha"],
                r["config"].get("reverse", False)) for r in students if r["config"]["label"] == "distilled"}
    assert arms == set(ARMS)
    for r in students:
        assert r["config"]["warmup_epochs"] == 1.0
        ratio = [St.decode_float(x) for x in r["metrics"]["curves"]["grad_ratio"]]  # NaN is stored as "nan"
        assert len(ratio) == p.student_train.epochs
        if r["config"]["label"] == "alone":
            assert all(math.isnan(x) for x in ratio)
        elif r["config"]["alpha"] == 1.0 and not r["config"].get("reverse"):
            assert ratio == pytest.approx([1.0] * len(ratio))
        else:
            assert all(x > 0 for x in ratio)


@pytest.mark.parametrize("dtype,tol,cfg", [
    (torch.float64, 1e-10, C.TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9)),
    (torch.float32, 2e-5, C.TrainConfig(epochs=2, batch_size=32, lr=0.05, momentum=0.9, warmup_steps=3)),
    (torch.float64, 1e-9, C.TrainConfig(epochs=1, batch_size=32, lr=0.2, clip_norm=0.5)),
])
def test_a_learning_rate_per_stacked_student_equals_training_alone_at_that_rate(digits, dtype, tol, cfg):
    """fit(lr_scale=...) trains student s as if alone at lr_scale[s] x the learning rate (SGD)."""
    from dataclasses import replace

    x, y, teacher = (t.to(dtype) if t.is_floating_point() else t for t in digits)
    specs, scale = SPECS[:4], [1.0, 0.3, 2.5, 0.5]
    model = StackedMLP(64, (16, 16), 10, [s.seed for s in specs], dtype=dtype)
    curves = E.fit(model, x, E.distillation_objective(y, teacher, specs), cfg, data_seed=7, lr_scale=scale)
    plain = StackedMLP(64, (16, 16), 10, [s.seed for s in specs], dtype=dtype)
    unscaled = E.fit(plain, x, E.distillation_objective(y, teacher, specs), cfg, data_seed=7)
    for s, (spec, c) in enumerate(zip(specs, scale, strict=True)):
        alone = train_alone(spec, x, y, teacher, replace(cfg, lr=cfg.lr * c), 7, dtype)
        for (w_ref, b_ref), (w, b) in zip(alone, model.student_params(s), strict=True):
            torch.testing.assert_close(w, w_ref, rtol=0, atol=tol)
            torch.testing.assert_close(b, b_ref, rtol=0, atol=tol)
    # the recorded losses are the students' own, not scaled: equal at the first epoch's start only for
    # the unscaled student, and the scaled students moved differently from the unscaled stack
    assert curves["train_loss"][0] == pytest.approx(unscaled["train_loss"][0], rel=1e-9)
    assert curves["train_loss"][1][-1] != pytest.approx(unscaled["train_loss"][1][-1], rel=1e-6)


def test_a_learning_rate_per_stacked_student_is_refused_where_it_is_not_exact(digits):
    x, y, teacher = digits
    model = StackedMLP(64, (16, 16), 10, [0, 1])
    objective = E.distillation_objective(y, teacher, SPECS[:2])
    for cfg, match in ((C.TrainConfig(epochs=1, optimizer="adam", schedule="constant"), "needs SGD"),
                       (C.TrainConfig(epochs=1, weight_decay=1e-3), "without weight decay")):
        with pytest.raises(ValueError, match=match):
            E.fit(model, x, objective, cfg, data_seed=0, lr_scale=[1.0, 2.0])
    for bad in ([1.0, 0.0], [1.0, math.nan], []):
        with pytest.raises(ValueError, match="lr_scale must be one finite factor > 0"):
            E.fit(model, x, objective, C.TrainConfig(epochs=1), data_seed=0, lr_scale=bad)
    with pytest.raises(ValueError, match="one factor per model"):
        E.fit(model, x, objective, C.TrainConfig(epochs=1), data_seed=0, lr_scale=[1.0, 2.0, 3.0])


def test_validation_every_few_epochs_keeps_the_last_and_the_key(digits):
    """val_every = 3 over 7 epochs measures after epochs 3, 6 and 7 (NaN for the others), trains the
    same weights as measuring every epoch, and enters a run's key only when it is not 1."""
    x, y, teacher = digits
    curves, models = [], []
    for every in (1, 3):
        cfg = C.TrainConfig(epochs=7, batch_size=64, lr=0.05, val_every=every)
        model = StackedMLP(64, (16, 16), 10, [0, 1])
        curves.append(E.fit(model, x, E.distillation_objective(y, teacher, SPECS[:2]), cfg, data_seed=1,
                            val=(x[:60], y[:60]))["val_accuracy"])
        models.append(model)
    for s in range(2):
        every, sparse = curves[0][s], curves[1][s]
        assert [i for i, v in enumerate(sparse) if not math.isnan(v)] == [2, 5, 6]
        assert [sparse[i] for i in (2, 5, 6)] == [every[i] for i in (2, 5, 6)]
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert "val_every" not in C.TrainConfig(epochs=2).to_dict()
    assert C.TrainConfig(epochs=2, val_every=5).to_dict()["val_every"] == 5
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="val_every must be an integer >= 1"):
            C.TrainConfig(epochs=2, val_every=bad)
