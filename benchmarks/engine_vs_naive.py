"""The experiment engine against a naive KD loop, side by side in one run.

Naive reference, written the way common knowledge-distillation repositories do it: a
``torch.utils.data.DataLoader`` over a ``TensorDataset`` (batch_size, shuffle), one student
at a time, and a teacher forward pass on every batch; the loss is ``kdlib.DistillationLoss``
with its default argument checks.

Engine (kdlib.lab.train): teacher logits computed once; data resident on the device and
indexed by a seeded permutation; all students stacked into one :class:`StackedMLP` trained
on the sum of their losses. A middle variant (engine, one student at a time) separates the
gain of caching and resident data from the gain of stacking.

Same students (alpha x T grid, own seeds), same epochs, same data, same teacher network;
test accuracies are printed to show both train properly. The last line reads
``speedup: N.Nx (...)`` (naive time / stacked engine time).

Modes:
  --quick  1,000 Fashion-MNIST images (digits when Fashion-MNIST is missing), 8 students 2x100,
           2 epochs, no middle variant: within a minute on two CPU cores.
  (none)   5,000 images, 24 students 2x100, 3 epochs.
  --full   the GPU target: all 54,000 training images, 64 students 2x800 (alpha {0.5, 1, 2, inf}
           x T {1, 2, 4, 8} x 4 seeds), 20 epochs. The naive loop is timed on --naive-students
           of them (default 4) and extrapolated linearly, which the output says.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from kdlib.lab.config import StudentSpec, TrainConfig, resolve_device
from kdlib.lab.data import DatasetNotFoundError, load_dataset
from kdlib.lab.metrics import accuracy, predict_logits
from kdlib.lab.models import MLP, StackedMLP, hinton_teacher, init_mlp_params
from kdlib.lab.provenance import device_name
from kdlib.lab.train import cross_entropy_objective, distillation_objective, fit
from kdlib.losses import DistillationLoss

MODES = {
    "quick": dict(n=1000, hidden=(100, 100), alphas=(0.5, 1.0, 2.0, math.inf), temps=(2.0, 4.0),
                  seeds=(0,), epochs=2),
    "default": dict(n=5000, hidden=(100, 100), alphas=(0.5, 1.0, 2.0, math.inf), temps=(1.0, 2.0, 4.0),
                    seeds=(0, 1), epochs=3),
    "full": dict(n=None, hidden=(800, 800), alphas=(0.5, 1.0, 2.0, math.inf), temps=(1.0, 2.0, 4.0, 8.0),
                 seeds=(0, 1, 2, 3), epochs=20),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive(students, teacher, x, y, x_test, y_test, cfg, device):
    """One student at a time, DataLoader batches, teacher forward on every batch."""
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=cfg.batch_size, shuffle=True)
    accs = []
    for spec in students:
        torch.manual_seed(spec.seed)
        model = MLP(x[0].numel(), spec.hidden, 10).load_params(
            init_mlp_params([x[0].numel(), *spec.hidden, 10], spec.seed)).to(device)
        loss_fn = DistillationLoss(spec.alpha, spec.T, spec.beta)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        for _ in range(cfg.epochs):
            model.train()
            for xb, yb in loader:
                xb, yb = xb.to(device), yb.to(device)
                with torch.no_grad():
                    t = teacher(xb)
                loss = loss_fn(model(xb), t, yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            accs.append(float(accuracy(model(x_test), y_test)))
    return accs


def engine(students, teacher, x, y, x_test, y_test, cfg, device, stacked=True):
    """Teacher logits once, then the students stacked (or one per StackedMLP)."""
    t = predict_logits(teacher, x)
    groups = [students] if stacked else [[s] for s in students]
    accs = []
    for group in groups:
        model = StackedMLP(x[0].numel(), group[0].hidden, 10, [s.seed for s in group]).to(device)
        fit(model, x, distillation_objective(y, t, group), cfg, data_seed=group[0].seed)
        accs += accuracy(predict_logits(model, x_test), y_test).tolist()
    return accs


def timed(fn, device, *args, **kw):
    sync(device)
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    sync(device)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="within a minute on two CPU cores")
    mode.add_argument("--full", action="store_true", help="Hinton-scale grid, meant for a GPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--naive-students", type=int, default=None,
                        help="time the naive loop on this many students and extrapolate "
                             "(default: all; --full: 4)")
    parser.add_argument("--one-by-one", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the engine one student at a time (default: on, off with --quick)")
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "default"
    m = MODES[name]
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        data = load_dataset("fashion_mnist", device, train_size=m["n"])
    except DatasetNotFoundError:
        data = load_dataset("digits", device)
    x, y = data.x_train, data.y_train
    students = [StudentSpec(alpha=a, T=T, beta=0.9, seed=s, hidden=m["hidden"])
                for s in m["seeds"] for a in m["alphas"] for T in m["temps"]]
    cfg = TrainConfig(epochs=m["epochs"], batch_size=128, lr=0.05, schedule="constant")  # as the naive loop
    torch.manual_seed(0)
    teacher = hinton_teacher(in_features=data.in_features).to(device)
    teacher_cfg = TrainConfig(epochs=2 if name != "full" else 10, batch_size=128, lr=0.05)
    fit(teacher, x, cross_entropy_objective(y), teacher_cfg, data_seed=0)  # not timed: both sides get it
    teacher_acc = float(accuracy(predict_logits(teacher, data.x_test), data.y_test))
    n_naive = args.naive_students or (4 if name == "full" else len(students))
    n_naive = min(n_naive, len(students))

    print(f"machine: {device_name(device)}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"data: {data.name}, {len(y)} transfer images, {len(students)} students "
          f"{'x'.join(map(str, m['hidden']))}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"teacher 2x1200 (test accuracy {teacher_acc:.4f}, trained untimed), mode {name}")
    t_naive, acc_naive = timed(naive, device, students[:n_naive], teacher, x, y, data.x_test, data.y_test,
                               cfg, device)
    t_naive_all = t_naive * len(students) / n_naive
    extra = "" if n_naive == len(students) else f" (measured on {n_naive}, extrapolated)"
    print(f"naive (DataLoader, one student at a time, teacher forward per batch): {t_naive_all:.1f} s"
          f"{extra}, mean test accuracy {sum(acc_naive) / len(acc_naive):.4f}")
    if args.one_by_one or (args.one_by_one is None and name != "quick"):
        t_one, acc_one = timed(engine, device, students, teacher, x, y, data.x_test, data.y_test, cfg, device,
                               stacked=False)
        print(f"engine, one student at a time (cached teacher logits, resident data): {t_one:.1f} s, "
              f"mean test accuracy {sum(acc_one) / len(acc_one):.4f}")
    t_eng, acc_eng = timed(engine, device, students, teacher, x, y, data.x_test, data.y_test, cfg, device)
    print(f"engine, {len(students)} students stacked in one model: {t_eng:.1f} s, "
          f"mean test accuracy {sum(acc_eng) / len(acc_eng):.4f}")
    print(f"speedup: {t_naive_all / t_eng:.1f}x (naive {t_naive_all:.1f} s{extra} vs stacked engine "
          f"{t_eng:.1f} s; {len(students)} students, {cfg.epochs} epochs, {len(y)} images, {device.type})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
