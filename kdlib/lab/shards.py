"""Shards: an experiment's students split into N parts of about equal cost, one job each.

A shard is a set of whole *stack groups* (:func:`stack_groups`: the students of one width and
seed, at most ``max_group`` of them, that train together as one stacked model), so sharding
never costs the stacked engine its speed. Groups go to shards by cost, largest first, each to
the shard with the least work so far (the longest-processing-time rule; every shard ends
within one group of the ideal). The plan depends only on the profile, never on what is done,
so a shard rerun after a failure or a preemption picks up exactly its own students.

Shard ``I`` of ``N`` writes ``<profile>.shard-I-of-N.jsonl`` beside the experiment's results
file (:func:`kdlib.lab.store.results_path`); :func:`experiment_status` counts what is done.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from kdlib.lab.config import PRECISION_DTYPE, StudentSpec
from kdlib.lab.experiments import get_experiment
from kdlib.lab.profile import Profile, student_config, teacher_config
from kdlib.lab.store import (
    Shard,
    experiment_files,
    load_experiment_records,
    results_path,
    run_key,
    shard_files,
)

#: The schedulers ``python -m kdlib submit`` sends jobs to (:mod:`kdlib.lab.cluster`, which needs the
#: ``cluster`` extra): Slurm, or the same jobs as processes on this machine.
CLUSTERS = ("slurm", "local")


class ClusterError(RuntimeError):
    """The jobs cannot be submitted (no ``sbatch`` here, or submitit missing), or one failed (its log
    says why)."""


def stack_groups(specs: Sequence[StudentSpec], max_group: int) -> list[list[int]]:
    """Indices of ``specs`` in the groups that train together: one width, seed, teacher, number
    of epochs, learning rate and optimiser (the students of a group share the minibatch order, the
    teacher's logits, the optimiser and the schedule), at most ``max_group``.

    Groups come in order of first appearance; a group with more than ``max_group`` students is
    cut into consecutive chunks.
    """
    by: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        key = (spec.hidden, spec.seed, spec.teacher, spec.epochs, spec.lr, spec.optimizer)
        by.setdefault(key, []).append(i)
    return [g[i:i + max_group] for g in by.values() for i in range(0, len(g), max_group)]


def student_cost(spec: StudentSpec, in_features: int = 784, classes: int = 10) -> int:
    """Multiply-adds per example of the student's MLP (``in_features -> hidden... -> classes``).

    Every student of a profile sees the same data, so this is its training cost per epoch up to a
    common factor; times its epochs (where it has its own) it is what :func:`plan_shards` balances.
    """
    widths = (in_features, *spec.hidden, classes)
    return sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))


def plan_shards(specs: Sequence[StudentSpec], max_group: int, count: int) -> list[list[int]]:
    """Indices of ``specs`` in each of ``count`` shards, whole stack groups balanced by cost.

    Raises:
        ValueError: ``count < 1``, or more shards than stack groups (a shard would be empty).
    """
    groups = stack_groups(specs, max_group)
    if not 1 <= count <= max(len(groups), 1):
        raise ValueError(f"the students form {len(groups)} stack group(s), which are never split; "
                         f"the number of shards must be between 1 and {max(len(groups), 1)}, got {count}")
    loads, plan = [0] * count, [[] for _ in range(count)]
    costs = [sum(student_cost(specs[i]) * (specs[i].epochs or 1) for i in g) for g in groups]
    for n in sorted(range(len(groups)), key=lambda n: -costs[n]):  # stable: ties keep profile order
        target = min(range(count), key=lambda k: (loads[k], k))
        plan[target] += groups[n]
        loads[target] += costs[n]
    return [sorted(part) for part in plan]


def shard_profile(p: Profile, shard: Shard) -> Profile:
    """``p`` with only the students of ``shard`` (:func:`plan_shards`).

    Raises:
        ValueError: as :func:`plan_shards`.
    """
    part = plan_shards(p.students, p.max_group, shard.count)[shard.index]
    return replace(p, students=tuple(p.students[i] for i in part))


@dataclass(frozen=True)
class ShardStatus:
    """What is done of one shard: its ``students``, how many are ``done`` (in any file), its ``path``."""

    shard: Shard
    path: Path
    students: int
    done: int

    @property
    def pending(self) -> int:
        """Students still to run."""
        return self.students - self.done


def student_keys(name: str, profile: str, p: Profile, spec: StudentSpec) -> set[str]:
    """The run keys ``spec`` can have: one per precision (the resolved precision is part of the key).

    A login node may resolve ``auto`` differently from the GPU nodes, so status counts a student
    done when any of its keys is in the results.
    """
    return {run_key(student_config(name, profile, p, spec, run_key(teacher_config(p, prec, spec.teacher)),
                                   prec)) for prec in PRECISION_DTYPE}


def teacher_keys(p: Profile, seed: int | None = None) -> set[str]:
    """The cache keys the profile's teachers (only teacher ``seed``, when given) can have, one per
    teacher and precision."""
    seeds = p.teacher_seeds if seed is None else (seed,)
    return {run_key(teacher_config(p, prec, t)) for t in seeds for prec in PRECISION_DTYPE}


def shard_count(path: str | os.PathLike) -> int | None:
    """The ``N`` of the shard files beside results file ``path`` (``None``: there are none).

    Raises:
        ValueError: shard files of two or more different ``N`` are there.
    """
    counts = sorted({s.count for s in shard_files(path)})
    if len(counts) > 1:
        raise ValueError(f"{Path(path).parent} holds shard files of {', '.join(map(str, counts))} shards; "
                         "name the split with --shards")
    return counts[0] if counts else None


def experiment_status(name: str, profile: str, out: str | os.PathLike, count: int | None = None,
                      p: Profile | None = None) -> list[ShardStatus]:
    """Done and pending students per shard of experiment ``name`` in ``out``.

    ``count`` defaults to the ``N`` of the shard files present (:func:`shard_count`), else 1 (one
    row for the unsharded file). A student counts as done when its key is in any of the
    experiment's files (the merged file or any shard's), whatever split ran it.

    Raises:
        ValueError: as :func:`plan_shards` and :func:`shard_count`.
        kdlib.lab.experiments.UnknownExperimentError: unknown experiment or profile.
        kdlib.lab.store.ResultsFileError: a results file cannot be read.
    """
    p = p if p is not None else get_experiment(name).profile(profile)
    main = results_path(out, name, profile)
    count = count if count is not None else (shard_count(main) or 1)
    done = {r["key"] for r in load_experiment_records(main)} if experiment_files(main) else set()
    rows = []
    for index, part in enumerate(plan_shards(p.students, p.max_group, count)):
        shard = Shard(index, count)
        specs = {p.students[i] for i in part}  # a spec listed twice is one run
        finished = sum(not student_keys(name, profile, p, s).isdisjoint(done) for s in specs)
        path = main if count == 1 else results_path(out, name, profile, shard)
        rows.append(ShardStatus(shard, path, len(specs), finished))
    return rows

