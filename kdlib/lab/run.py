"""Running an experiment: the teacher stage, then the students in stacked groups, into the store.

:func:`run_experiment` is what ``python -m kdlib run`` and the notebooks' rerun switch
(:func:`rerun_if_requested`) call.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdlib.lab.cache import CommittedTeachers, TeacherCache
from kdlib.lab.config import (
    PRECISION_DTYPE,
    check_threads,
    default_threads,
    requested_profile,
    resolve_device,
    resolve_precision,
)
from kdlib.lab.data import load_dataset
from kdlib.lab.experiments import expected_keys, get_experiment
from kdlib.lab.metrics import bias_shift, evaluate_logits, predict_logits
from kdlib.lab.models import StackedMLP, build_model
from kdlib.lab.profile import Profile, student_config, teacher_config
from kdlib.lab.provenance import environment, utc_now
from kdlib.lab.shards import shard_profile, stack_groups
from kdlib.lab.store import (
    SCRATCH,
    ResultsStore,
    Shard,
    experiment_files,
    load_experiment_records,
    make_record,
    results_path,
    results_root,
    run_key,
    run_lock,
)
from kdlib.lab.train import (
    cross_entropy_objective,
    distillation_objective,
    fit,
    gradient_ratio_monitor,
    progress,
)

ENV_DEVICE = "KDLIB_DEVICE"


class MissingTeacherError(LookupError):
    """A shard found its teacher missing from the cache (shards never train their own copy)."""


def requested_device() -> str:
    """``$KDLIB_DEVICE`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), ``auto`` when unset."""
    return os.environ.get(ENV_DEVICE, "").strip() or "auto"


Teacher = tuple[str, dict[str, torch.Tensor], dict]  # (key, logits by split (N, C) at T = 1, record)


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run of an experiment shares (instead of a dozen threaded arguments).

    Attributes:
        experiment, profile: the names the records carry.
        p: the profile being run (a shard's part of it, for a shard).
        device: where it trains; precision: ``fp32`` or ``bf16`` (resolved).
        cache: the teacher cache; committed: the committed teacher logits (``None``: the profile
            does not commit them).
        log: where progress lines go.
        shard: the shard run (``None``: the whole profile); a shard never trains a teacher.
        env: the provenance every record of the run shares (:func:`_run_environment`).
    """

    experiment: str
    profile: str
    p: Profile
    device: torch.device
    precision: str
    cache: TeacherCache
    committed: CommittedTeachers | None
    log: Callable[[str], None]
    shard: Shard | None = None
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """``name/profile``, with `` shard I/N`` for a shard run (for log lines and the progress bar)."""
        return _label(self.experiment, self.profile, self.shard)


def _teacher_stage(ctx: RunContext, seed: int, splits: Any) -> Teacher:
    """Teacher ``seed`` of the profile: from the committed logits, the cache, or trained now.

    With ``committed`` (profiles that commit their teachers' logits) the committed float16
    logits are used when present, so a student can be rerun without its teacher; a teacher
    trained or read from the cache is committed first and its logits rounded to float16.
    """
    p, cache, committed = ctx.p, ctx.cache, ctx.committed
    tconf = teacher_config(p, ctx.precision, seed)
    key = run_key(tconf)
    rows = {"train": len(splits.y_train), "val": len(splits.y_val), "test": len(splits.y_test)}
    if committed is not None and committed.exists(key):
        return key, *committed.load(key, rows, splits.num_classes, ctx.device)
    with cache.lock(key):
        cached = cache.load(key, rows, splits.num_classes, ctx.device, ctx.log)
        if cached is not None:
            logits, record = cached
        elif ctx.shard is not None:
            raise MissingTeacherError(
                f"shard {ctx.shard} of {ctx.experiment}/{ctx.profile} needs teacher {key} ({ctx.precision}), "
                f"which is not in the teacher cache {cache.dir}; shards never train their own copy: run "
                f"`python -m kdlib run {ctx.experiment} --profile {ctx.profile} --teachers-only` with the "
                "same --cache first")
        else:
            logits, record = _train_teacher(ctx, seed, tconf, key, splits, rows)
    if committed is not None:
        logits, record = committed.save(key, logits, record)
    return key, logits, record


def _train_teacher(ctx: RunContext, seed: int, tconf: dict[str, Any], key: str, splits: Any,
                   rows: dict[str, int]) -> tuple[dict[str, torch.Tensor], dict]:
    """Train teacher ``seed`` on the first ``teacher_train_size`` training images; cache and return it."""
    p = ctx.p
    torch.manual_seed(seed)  # the teacher's initial weights come from its seed
    model = build_model(p.teacher_model, splits.input_shape, splits.num_classes).to(ctx.device)
    start, t0 = utc_now(), time.perf_counter()
    n = p.teacher_train_size or len(splits.y_train)
    curves = fit(model, splits.x_train[:n], cross_entropy_objective(splits.y_train[:n]), p.teacher_train,
                 data_seed=seed, val=(splits.x_val, splits.y_val), precision=ctx.precision,
                 desc=f"teacher {seed}")
    curves = {k: v[0] for k, v in curves.items()}
    logits = {k: predict_logits(model, getattr(splits, f"x_{k}")) for k in rows}
    metrics = evaluate_logits(logits["test"], splits.y_test, splits.num_classes)[0]
    metrics.update(_curve_metrics(curves))
    record = make_record("teacher", key,
                         {**tconf, "experiment": ctx.experiment, "profile": ctx.profile, "label": "teacher",
                          "data_info": splits.info}, metrics,
                         {**ctx.env, "started": start, "finished": utc_now(),
                          "wall_seconds": round(time.perf_counter() - t0, 3)})
    return logits, ctx.cache.save(key, model.state_dict(), logits, record)


def _logits_sha256(teacher_record: dict) -> str | None:
    """SHA-256 of the logits the students learn from: the committed file's, else the cache's."""
    prov = teacher_record["provenance"]
    return prov.get("teacher_logits", {}).get("sha256") or prov.get("cache", {}).get("logits_sha256")


def _curve_metrics(curves: dict[str, list[float]]) -> dict[str, Any]:
    """The per-epoch curves of one model and their last values, as stored in its record."""
    return {"final_train_loss": curves["train_loss"][-1], "final_val_accuracy": curves["val_accuracy"][-1],
            "curves": curves}


def run_experiment(name: str, profile: str, *, device: str | torch.device = "auto",
                   out: str | Path = "results", cache_dir: str | Path | None = None,
                   profile_override: Profile | None = None, threads: int | None = None,
                   precision: str | None = None, shard: Shard | None = None, teachers_only: bool = False,
                   teachers_root: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) experiment ``name`` with ``profile``; returns the results file path.

    Finished runs (keys already in ``<out>/<name>/<profile>.jsonl`` or in any of its shard
    files) are skipped; every finished student is appended at once, so an interrupted run
    resumes where it stopped. Students of one width and seed train together as one
    :class:`StackedMLP` (at most ``max_group`` at a time); their data order comes from that seed.

    ``shard`` runs only that shard's students (:func:`kdlib.lab.shards.plan_shards`) into the
    shard's own file (:func:`~kdlib.lab.store.results_path`), and never trains a teacher: it
    raises :class:`MissingTeacherError` when the teacher is not cached. ``teachers_only`` is the
    stage before the shards: it trains (or checks) the teacher into the cache, writes no results
    and returns the path of the teacher's cache record.

    Profiles that commit their teachers' logits read them from ``<out>/teachers`` or, failing
    that, ``<teachers_root>/teachers`` (default :func:`~kdlib.lab.store.results_root`, the
    repository's ``results/``), and write newly trained ones to ``<out>/teachers``.

    ``threads`` (default: the profile's, else :func:`~kdlib.lab.config.default_threads`) sets
    ``torch.set_num_threads`` for the run on a CPU; the previous setting is restored afterwards.
    ``precision`` (default: the profile's) is ``fp32``, ``bf16`` or ``auto``; the resolved value
    is part of every run's config and key. The thread count, the CPU and its instruction set are
    recorded in each record's provenance; a warning is logged when the machine is busy (load
    above the number of cores), since two-thread runs then slow down several times.

    Raises:
        UnknownExperimentError: unknown experiment or profile.
        kdlib.lab.store.ResultsFileError: the results file is not readable, or not writable when
            runs remain to be done (checked before any training).
        kdlib.lab.cache.CacheError: the teacher cache is not a directory, or cannot be written
            when a teacher must be saved.
        kdlib.lab.store.RunInProgressError: another process is running into the same file.
        kdlib.lab.data.DatasetNotFoundError: the dataset is missing.
        kdlib.lab.config.DeviceUnavailableError: ``cuda`` requested but absent.
        MissingTeacherError: a ``shard`` run whose teacher is not in the cache.
        ValueError: ``threads`` < 1, an unknown ``precision``, ``out``/``cache_dir`` empty or
            naming an existing file, a ``shard`` of more parts than the profile has stack groups,
            or ``shard`` and ``teachers_only`` together.
    """
    exp = get_experiment(name)
    p = profile_override if profile_override is not None else exp.profile(profile)
    if shard is not None and teachers_only:
        raise ValueError("a teachers-only run trains the teacher of every shard; it takes no shard")
    if shard is not None:
        p = shard_profile(p, shard)
    dev = resolve_device(device)
    prec = resolve_precision(precision if precision is not None else p.precision, dev)
    threads = check_threads(threads if threads is not None else (p.threads or default_threads()))
    before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(threads)
    try:
        out = _directory(out, "out")
        store = ResultsStore(results_path(out, name, profile, shard))
        cache = TeacherCache(_directory(cache_dir, "cache") if cache_dir is not None else None)
        cache.check()
        committed = (CommittedTeachers(out, teachers_root if teachers_root is not None else results_root())
                     if p.commit_teacher_logits else None)
        if teachers_only:
            splits = _load_splits(p, dev)
            ctx = RunContext(name, profile, p, dev, prec, cache, committed, log,
                             env=_run_environment(dev, prec, log))
            for seed in p.teacher_seeds:
                tkey, _, trecord = _teacher_stage(ctx, seed, splits)
                log(f"teacher {seed} ({tkey}): test accuracy {trecord['metrics']['test_accuracy']:.4f}, "
                    f"in {cache.dir}")
            return cache.paths(tkey)[2]
        main = results_path(out, name, profile)
        if expected_keys(name, profile, p, (prec,)) <= _done(store, main):
            log(f"{store.path}: every run of {_label(name, profile, shard)} ({prec}) is done; nothing to do")
            return store.path
        store.check_writable()
        with run_lock(store.path):
            ctx = RunContext(name, profile, p, dev, prec, cache, committed, log, shard)
            return _run_locked(ctx, store, main)
    finally:
        torch.set_num_threads(before)


def _directory(path: str | os.PathLike, name: str) -> Path:
    """``path`` as a directory path; refuses ``""`` and paths of existing non-directories."""
    if not str(path).strip():
        raise ValueError(f"{name} must name a directory, got an empty path")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} must be a directory, but {path} exists and is not one")
    return path


def _label(name: str, profile: str, shard: Shard | None) -> str:
    """``name/profile``, with `` shard I/N`` for a shard run (for log lines and the progress bar)."""
    return f"{name}/{profile}" + (f" shard {shard}" if shard is not None else "")


def _run_environment(dev: torch.device, precision: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Provenance of a training run (TF32 is switched on for CUDA); warns when the CPU is busy."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    env = {**environment(dev), "tf32": dev.type == "cuda", "precision": precision}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if dev.type == "cpu" and load > (os.cpu_count() or 1):
        log(f"warning: this machine is busy (load {load:.1f} on {os.cpu_count()} cores); a run with "
            f"{env['threads']} threads can take several times longer than on a quiet machine")
    return env


def _done(store: ResultsStore, main: Path) -> set[str]:
    """Keys finished in ``store`` (a torn last line repaired) or in any file of the experiment."""
    done = store.keys()
    return done | {r["key"] for r in load_experiment_records(main)} if experiment_files(main) else done


def _load_splits(p: Profile, dev: torch.device) -> Any:
    """The profile's dataset on ``dev``; refuses transfer or teacher sizes larger than its training split."""
    splits = load_dataset(p.dataset, dev, split_seed=p.split_seed, val_fraction=p.val_fraction,
                          val_size=p.val_size)
    for field_name in ("transfer_size", "teacher_train_size"):
        size = getattr(p, field_name)
        if size is not None and not 0 < size <= len(splits.y_train):
            raise ValueError(f"{field_name} must be in [1, {len(splits.y_train)}] for {p.dataset}, "
                             f"got {size}")
    return splits


def _run_locked(ctx: RunContext, store: ResultsStore, main: Path) -> Path:
    """The run itself, under the results file's lock: the teachers, then the pending students in stacks."""
    name, profile, p, dev, precision, log = (ctx.experiment, ctx.profile, ctx.p, ctx.device, ctx.precision,
                                             ctx.log)
    done = _done(store, main)
    stale = len(done - expected_keys(name, profile, p))
    if stale and ctx.shard is None:
        log(f"{store.path}: {stale} records come from another definition of this profile; "
            "they are kept, but reports leave them out")
    splits = _load_splits(p, dev)
    env = _run_environment(dev, precision, log)
    if ctx.shard is not None:
        env["shard"] = str(ctx.shard)
    ctx = replace(ctx, env=env)
    teachers = {}
    for seed in p.teacher_seeds:
        teachers[seed] = _teacher_stage(ctx, seed, splits)
        tkey, _, trecord = teachers[seed]
        if tkey not in done:
            store.append(trecord)
        log(f"teacher {seed} ({tkey}): test accuracy {trecord['metrics']['test_accuracy']:.4f}")

    n = p.transfer_size or len(splits.y_train)
    keep = torch.arange(n, device=dev)
    if p.omit_class is not None:
        keep = keep[splits.y_train[:n] != p.omit_class]
    x_tr, y_tr = splits.x_train[keep], splits.y_train[keep]
    pending = []
    for spec in p.students:
        conf = student_config(name, profile, p, spec, teachers[spec.teacher][0], precision)
        key = run_key(conf)
        if key not in done:
            pending.append((spec, conf, key))
            done.add(key)  # a duplicate spec in the profile is run once
    label = ctx.label
    log(f"{label}: {len(p.students)} students, {len(pending)} to run, on {dev} ({precision})")
    bar = progress(total=len(pending), desc=label, unit="student", iterable=None)
    for group in ([pending[i] for i in g] for g in stack_groups([item[0] for item in pending], p.max_group)):
        specs = [g[0] for g in group]
        _, tlogits, trecord = teachers[specs[0].teacher]
        start, t0 = utc_now(), time.perf_counter()
        model = StackedMLP(splits.in_features, specs[0].hidden, splits.num_classes,
                           [s.seed for s in specs]).to(dev)
        t_tr = tlogits["train"][keep]
        probe = min(p.gradient_probe, len(y_tr))
        monitor = (gradient_ratio_monitor(x_tr[:probe], t_tr[:probe], y_tr[:probe], specs, precision)
                   if probe else None)
        curves = fit(model, x_tr, distillation_objective(y_tr, t_tr, specs),
                     p.student_train_of(specs[0]), data_seed=specs[0].seed, val=(splits.x_val, splits.y_val),
                     precision=precision, desc=f"{len(specs)} students", monitor=monitor)
        if monitor is not None:
            curves["grad_ratio"] = curves.pop("monitor")
        test_logits = predict_logits(model, splits.x_test)
        metrics = evaluate_logits(test_logits, splits.y_test, splits.num_classes, tlogits["test"])
        if p.omit_class is not None:
            shifts = bias_shift(predict_logits(model, splits.x_val), splits.y_val, test_logits,
                                splits.y_test, p.omit_class, p.bias_shifts)
            for m, sh in zip(metrics, shifts, strict=True):
                m.update(sh)
        prov = {**env, "started": start, "finished": utc_now(),
                "wall_seconds": round(time.perf_counter() - t0, 3), "group_size": len(specs),
                "teacher_test_accuracy": trecord["metrics"]["test_accuracy"],
                "teacher_logits_sha256": _logits_sha256(trecord)}
        for s, ((_, conf, key), m) in enumerate(zip(group, metrics, strict=True)):
            m.update(_curve_metrics({k: v[s] for k, v in curves.items()}))
            m["diverged"] = not math.isfinite(m["final_train_loss"])
            store.append(make_record("student", key, {**conf, "data_info": splits.info}, m, prov))
        bar.update(len(specs))
    bar.close()
    return store.path


def rerun_if_requested(experiment: str, root: str | os.PathLike | None = None,
                       log: Callable[[str], None] = print) -> str | None:
    """If ``$KDLIB_PROFILE`` is set, run (or resume) ``experiment`` at that profile into ``root``.

    The device comes from ``$KDLIB_DEVICE`` (default ``auto``: CUDA when present). Finished runs
    already in ``root`` are skipped (the store resumes). A ``smoke`` request writes to
    ``root/_scratch`` so committed results are never touched. Returns the profile run, or
    ``None`` when no rerun was asked for.
    """
    profile = requested_profile()
    if profile is None:
        return None
    root = Path(root) if root is not None else results_root()
    out = root / SCRATCH if profile == "smoke" else root
    run_experiment(experiment, profile, device=requested_device(), out=out, log=log)
    return profile


def rerun_student(key: str, out: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                  device: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rerun the committed student ``key`` into ``out`` from its teacher's committed logits.

    The student is found in the results under ``root`` (default :func:`results_root`); its stack
    group (the students of its experiment's profile that trained beside it: same width, seed,
    teacher and epochs) is rerun with the precision the record names, so the student sees exactly
    the computation it saw. The teacher comes from ``<root>/teachers`` when the profile commits its
    teachers' logits (no teacher is trained), else from the cache or trained afresh. ``device``: where
    to train (default: the record's device); on another kind of device the rerun matches the record
    only to within the cross-hardware tolerance.

    Returns:
        ``(committed record, rerun record)``.

    Raises:
        KeyError: no student record with that key under ``root``.
        LookupError: the record's experiment no longer defines that student.
    """
    root = Path(root) if root is not None else results_root()
    record = next((r for path in sorted(root.glob("*/*.jsonl"))
                   for r in load_experiment_records(path, kind="student") if r["key"] == key), None)
    if record is None:
        raise KeyError(f"no student record with key {key!r} under {root}")
    conf = record["config"]
    name, profile = conf["experiment"], conf["profile"]
    precision = {v: k for k, v in PRECISION_DTYPE.items()}[conf["dtype"]]
    p = get_experiment(name).profile(profile)
    tkeys = {t: run_key(teacher_config(p, precision, t)) for t in p.teacher_seeds}
    index = next((i for i, s in enumerate(p.students)
                  if run_key(student_config(name, profile, p, s, tkeys[s.teacher], precision)) == key), None)
    if index is None:
        raise LookupError(f"{name}/{profile} no longer defines the student {key}")
    group = next(g for g in stack_groups(p.students, p.max_group) if index in g)
    sub = replace(p, students=tuple(p.students[i] for i in group))
    committed_teachers = CommittedTeachers(root)
    for t in sub.teacher_seeds:
        if p.commit_teacher_logits and not committed_teachers.exists(tkeys[t]):
            log(f"warning: teacher {tkeys[t]} is not committed under {root}; "
                "it comes from the cache or is trained")
    path = run_experiment(name, profile, device=device or record["provenance"].get("device", "cpu"), out=out,
                          cache_dir=cache_dir, profile_override=sub, precision=precision, log=log,
                          teachers_root=root)
    again = next(r for r in load_experiment_records(path, kind="student") if r["key"] == key)
    return record, again
