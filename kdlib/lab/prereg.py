"""Pre-registration: the confirmatory hypothesis files, the rules that derive them from an
exploration, and the confirmatory analysis they fix.

A confirmation runs only after its hypothesis file (``hypotheses/<experiment>.json``) is written by
a rule fixed in advance and committed; the experiment builds exactly the students the file names
(:mod:`kdlib.lab.experiments`), and a page checks with git that the file preceded every run
(:func:`check_hypothesis_preceded`).

* **the rules** (:func:`confirmation_hypothesis`, :func:`omitted_hypothesis`, sized by
  :func:`confirmation_sd`; :func:`hypotheses_from`, :func:`poor_hypotheses_from`,
  :func:`adam_poor_hypotheses_from` apply them to an exploration's frames);
* **the analysis** (:func:`confirmatory_tests`): each arm against the reference as its hypothesis
  says, Holm's correction over the arms.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from kdlib._validation import is_finite_number, short_repr
from kdlib.lab.analysis import Screen, paired_differences, runs_of, tuned_comparison, tuned_screen
from kdlib.lab.config import ARMS, OPTIMIZERS, Arm, StudentSpec
from kdlib.lab.provenance import file_at_commit
from kdlib.lab.records import Record, parse_record
from kdlib.stats import detectable_effect, equivalence_test, holm, paired_test, runs_for_power

#: Where the hypothesis files of confirmatory experiments live (committed before their runs).
HYPOTHESES = "hypotheses"
#: An arm's hypothesis against the reference: a one-sided paired t-test (``greater``), TOST
#: (``equivalent``) or a two-sided paired t-test (``two-sided``).
HYPOTHESIS_KINDS = ("greater", "equivalent", "two-sided")
#: The multiplicity corrections a hypothesis file may name.
CORRECTIONS = ("holm",)


class HypothesisFileError(ValueError):
    """A hypothesis file that cannot be read, or whose content breaks the schema (the message names
    the file and the field)."""


def hypotheses_dir() -> Path:
    """``$KDLIB_HYPOTHESES_DIR``, or ``hypotheses/`` at the root of this repository."""
    env = os.environ.get("KDLIB_HYPOTHESES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / HYPOTHESES


def _number(value: Any, where: str, *, low: float = -math.inf, high: float = math.inf,
            low_open: bool = False, integer: bool = False) -> float:
    """``value`` as a finite number in the range given, else :class:`HypothesisFileError` naming ``where``.
    Booleans are refused (JSON's ``true`` is not 1)."""
    ok = is_finite_number(value) and (isinstance(value, int) or not integer) and \
        (value > low if low_open else value >= low) and value <= high
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise HypothesisFileError(f"{where} must be {'an integer' if integer else 'a number'} in {span}, "
                                  f"got {short_repr(value)}")
    return value


@dataclass(frozen=True)
class ArmSetting:
    """An arm of a hypothesis file at the setting the exploration chose for it.

    Attributes:
        arm: the method (order, division by it, direction).
        lr: its peak learning rate, ``> 0``.
        T: its temperature, ``> 0``.
        hypothesis: against the reference, one of :data:`HYPOTHESIS_KINDS`; ``None`` for the reference.
    """

    arm: Arm
    lr: float
    T: float
    hypothesis: str | None = None

    @property
    def name(self) -> str:
        """The arm's name (:attr:`kdlib.lab.config.Arm.name`), e.g. ``"α=4 /α"``."""
        return self.arm.name

    def to_json(self) -> dict[str, Any]:
        """The file's entry: ``arm`` (the name), ``alpha`` (``"inf"`` for infinity), ``normalize_by_alpha``,
        ``reverse``, ``lr``, ``T`` and, for an arm, ``hypothesis``."""
        a = self.arm
        out = {"arm": a.name, "alpha": "inf" if math.isinf(a.alpha) else float(a.alpha),
               "normalize_by_alpha": a.normalize_by_alpha, "reverse": a.reverse, "lr": float(self.lr),
               "T": float(self.T)}
        return out if self.hypothesis is None else {**out, "hypothesis": self.hypothesis}

    @classmethod
    def from_json(cls, entry: Any, where: str, reference: bool) -> ArmSetting:
        """The entry ``entry`` of a file, checked (``where`` names it in errors).

        Raises:
            HypothesisFileError: not an object; ``alpha`` not a number > 0 or ``"inf"``; a flag not a
                boolean; ``lr`` or ``T`` not a finite number > 0; an arm without a hypothesis of
                :data:`HYPOTHESIS_KINDS` (or the reference with one); ``arm`` not the name of the rest.
        """
        if not isinstance(entry, dict):
            raise HypothesisFileError(f"{where} must be a JSON object, got {entry!r}")
        alpha = entry.get("alpha")
        if alpha != "inf":
            _number(alpha, f"{where}: field 'alpha' (or the string \"inf\")", low=0.0, low_open=True)
        for flag in ("normalize_by_alpha", "reverse"):
            if not isinstance(entry.get(flag), bool):
                raise HypothesisFileError(f"{where}: field {flag!r} must be true or false, "
                                          f"got {entry.get(flag)!r}")
        lr = _number(entry.get("lr"), f"{where}: field 'lr'", low=0.0, low_open=True)
        T = _number(entry.get("T"), f"{where}: field 'T'", low=0.0, low_open=True)
        hypothesis = entry.get("hypothesis")
        if reference and hypothesis is not None:
            raise HypothesisFileError(f"{where}: the reference takes no hypothesis, got {hypothesis!r}")
        if not reference and hypothesis not in HYPOTHESIS_KINDS:
            raise HypothesisFileError(f"{where}: field 'hypothesis' must be one of "
                                      f"{', '.join(HYPOTHESIS_KINDS)}, "
                                      f"got {hypothesis!r}")
        try:
            arm = Arm(float(alpha), entry["normalize_by_alpha"], entry["reverse"])
            arm.student(T, lr, 0, (1,), 0)  # the StudentSpec checks (e.g. the division by an infinite order)
        except ValueError as e:
            raise HypothesisFileError(f"{where}: {e}") from None
        if "arm" in entry and entry["arm"] != arm.name:
            raise HypothesisFileError(f"{where}: field 'arm' is {entry['arm']!r} but the fields describe "
                                      f"{arm.name!r}")
        return cls(arm, float(lr), float(T), hypothesis)


@dataclass(frozen=True)
class Hypothesis:
    """A confirmatory experiment's hypotheses, fixed before its runs (``hypotheses/<experiment>.json``).

    The experiment trains exactly :meth:`students`, so git's order of the file and the records shows
    that the hypotheses came first (:func:`check_hypothesis_preceded`).

    Attributes:
        experiment: the experiment that reads the file.
        reference: the arm every other is compared with (KL at its tuned setting).
        arms: the arms under test, each with its hypothesis.
        teachers: seeds of the teachers; student seed ``s`` learns from ``teachers[s mod len]``.
        seeds: the student seeds (the runs per arm).
        metric: the test metric, e.g. ``"test_accuracy"``.
        smallest_effect: the smallest effect of interest (a fraction: 0.003 is 0.3 points), the
            margin of an equivalence test.
        level: the family-wise level of the tests, in ``(0, 1)``.
        correction: the multiplicity correction over the arms (:data:`CORRECTIONS`).
        power, sd, runs_needed, sd_estimates: the power analysis that sized the runs, where one did.
        optimizer: every student's optimiser (``None``: the profile's, SGD; the SGD files leave it out
            so that their students keep their keys).
    """

    experiment: str
    reference: ArmSetting
    arms: tuple[ArmSetting, ...]
    teachers: tuple[int, ...]
    seeds: tuple[int, ...]
    metric: str
    smallest_effect: float
    level: float
    correction: str = "holm"
    power: float | None = None
    sd: float | None = None
    runs_needed: int | None = None
    sd_estimates: dict[str, float] | None = None
    optimizer: str | None = None

    def runs(self, smoke: bool = False) -> list[tuple[int, int]]:
        """``(student seed, teacher seed)`` of every run: seed ``s`` learns from
        ``teachers[s mod len(teachers)]``; ``smoke`` (the smoke scale) takes the first two seeds."""
        seeds = self.seeds[:2] if smoke else self.seeds
        return [(s, self.teachers[s % len(self.teachers)]) for s in seeds]

    def students(self, hidden: tuple[int, ...], smoke: bool = False) -> list[StudentSpec]:
        """For every run (:meth:`runs`): the student alone at the reference's learning rate, the
        reference and every arm, of width ``hidden``, all with :attr:`optimizer`."""
        students: list[StudentSpec] = []
        for s, t in self.runs(smoke):
            students.append(StudentSpec(alpha=1.0, T=1.0, beta=0.0, seed=s, hidden=hidden, label="alone",
                                        teacher=t, lr=self.reference.lr, optimizer=self.optimizer))
            students += [a.arm.student(a.T, a.lr, s, hidden, t, self.optimizer)
                         for a in (self.reference, *self.arms)]
        return students

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object, its fields in the order the committed files have them; the power
        analysis and the optimiser only when set."""
        out: dict[str, Any] = {
            "experiment": self.experiment, "reference": self.reference.to_json(),
            "arms": [a.to_json() for a in self.arms], "teachers": list(self.teachers),
            "seeds": list(self.seeds), "metric": self.metric, "smallest_effect": self.smallest_effect,
            "level": self.level, "correction": self.correction}
        for name in ("power", "sd", "runs_needed", "sd_estimates", "optimizer"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def dumps(self) -> str:
        """The file's text (one-space indentation, UTF-8 names, a final newline)."""
        return json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, data: Any, where: str = "hypothesis") -> Hypothesis:
        """A hypothesis from a file's JSON value, every field checked (``where`` names the file in errors).

        Raises:
            HypothesisFileError: not a JSON object; a field missing or of the wrong type or range (a
                number given as a string or a boolean, a seed that is not an integer, a level outside
                (0, 1)); an empty list of arms, seeds or teachers; a repeated teacher or seed; an
                unknown optimiser or correction; an arm equal to the reference.
        """
        if not isinstance(data, dict):
            raise HypothesisFileError(f"{where} must hold a JSON object, got {type(data).__name__}")
        for name in ("experiment", "metric"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise HypothesisFileError(f"{where}: field {name!r} must be a non-empty string, "
                                          f"got {data.get(name)!r}")
        reference = ArmSetting.from_json(data.get("reference"), f"{where}: reference", reference=True)
        arms = data.get("arms")
        if not isinstance(arms, list) or not arms:
            raise HypothesisFileError(f"{where}: field 'arms' must be a non-empty list, got {arms!r}")
        settings = tuple(ArmSetting.from_json(a, f"{where}: arm {i + 1}", reference=False)
                         for i, a in enumerate(arms))
        for i, a in enumerate(settings):
            if (a.arm, a.lr, a.T) == (reference.arm, reference.lr, reference.T):
                raise HypothesisFileError(f"{where}: arm {i + 1} is the reference itself")
        seeds = {}
        for name in ("teachers", "seeds"):
            values = data.get(name)
            if not isinstance(values, list) or not values:
                raise HypothesisFileError(f"{where}: field {name!r} must be a non-empty list of integers, "
                                          f"got {values!r}")
            seeds[name] = tuple(int(_number(v, f"{where}: each of {name!r}", low=0, integer=True))
                                for v in values)
            if len(set(seeds[name])) != len(values):
                raise HypothesisFileError(f"{where}: field {name!r} repeats a value: {values!r}")
        optimizer = data.get("optimizer")
        if optimizer is not None and optimizer not in OPTIMIZERS:
            raise HypothesisFileError(f"{where}: field 'optimizer' must be one of {', '.join(OPTIMIZERS)} "
                                      f"(absent: sgd), got {optimizer!r}")
        if data.get("correction") not in CORRECTIONS:
            raise HypothesisFileError(f"{where}: field 'correction' must be one of {', '.join(CORRECTIONS)}, "
                                      f"got {data.get('correction')!r}")
        estimates = data.get("sd_estimates")
        if estimates is not None and (not isinstance(estimates, dict) or not all(
                isinstance(k, str) for k in estimates)):
            raise HypothesisFileError(f"{where}: field 'sd_estimates' must map names to numbers, "
                                      f"got {estimates!r}")
        optional = {"power": {"low": 0.0, "high": 1.0, "low_open": True},
                    "sd": {"low": 0.0, "low_open": True},
                    "runs_needed": {"low": 1, "integer": True}}
        return cls(
            data["experiment"], reference, settings, seeds["teachers"], seeds["seeds"], data["metric"],
            _number(data.get("smallest_effect"), f"{where}: field 'smallest_effect'", low=0.0, low_open=True),
            _number(data.get("level"), f"{where}: field 'level'", low=0.0, high=1.0, low_open=True),
            data["correction"],
            **{k: None if data.get(k) is None else _number(data[k], f"{where}: field {k!r}", **kw)
               for k, kw in optional.items()},
            sd_estimates=None if estimates is None else {
                k: _number(v, f"{where}: field 'sd_estimates'", low=0.0) for k, v in estimates.items()},
            optimizer=optimizer)


def load_hypothesis(name: str, directory: str | os.PathLike | None = None) -> Hypothesis:
    """The hypothesis file ``<directory>/<name>.json`` of a confirmatory experiment, checked
    (:meth:`Hypothesis.from_json`); ``directory`` defaults to :func:`hypotheses_dir`.

    Raises:
        FileNotFoundError: no such file (a confirmation runs only after its hypotheses are written).
        HypothesisFileError: the file cannot be read (not UTF-8, not JSON, empty, a directory) or
            breaks the schema; the message names the file.
    """
    path = Path(directory if directory is not None else hypotheses_dir()) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: write and commit the hypotheses of {name!r} "
                                "before its runs (see kdlib.lab.prereg.load_hypothesis)")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise HypothesisFileError(f"{path} is not a readable JSON hypothesis file ({e})") from None
    return Hypothesis.from_json(data, str(path))


def confirmation_hypothesis(screen: Screen, sd: float, *, experiment: str = "renyi_confirm_tuned",
                            teachers: Sequence[int] = (3, 4, 5), first_seed: int = 100,
                            smallest_effect: float = 0.003, level: float = 0.05, power: float = 0.8,
                            max_arms: int = 3, min_runs: int = 12, metric: str = "test_accuracy"
                            ) -> dict[str, Any]:
    """The hypothesis file of the confirmation, derived from the exploration's screen by a rule fixed
    before the exploration finished (so that the screen's outcome cannot shape the rule).

    1. **Arms.** The arms whose tuned mean validation accuracy is above KL's (``mean_diff > 0`` in
       :func:`tuned_screen`), best first, at most ``max_arms``, each with the hypothesis
       ``"greater"`` (one-sided paired t-test on ``metric``). If no arm is above KL, the
       ``max_arms`` arms closest to it, each with the hypothesis ``"equivalent"`` (TOST with margin
       ``smallest_effect``). Every arm keeps the learning rate and T the exploration chose for it;
       the reference is KL at its own.
    2. **Runs.** The smallest ``n`` at which a one-sided paired t-test at Holm's first level
       ``level / arms`` detects a true difference of ``smallest_effect`` with probability ``power``
       (:func:`runs_for_power`; for equivalence, each of TOST's two tests needs ``1 - (1 - power) / 2``
       so that both pass together at least with ``power`` when there is no difference), given the
       standard deviation ``sd`` of one paired difference; at least ``min_runs``; rounded up to a
       multiple of the number of ``teachers`` so that every teacher teaches as many seeds.
    3. **Seeds and teachers.** Student seeds ``first_seed, first_seed + 1, ...``; seed ``s`` learns
       from ``teachers[s mod len(teachers)]``, teachers trained for the confirmation only.

    Returns:
        a dict that :func:`kdlib.lab.prereg.load_hypothesis` accepts (write it as
        ``hypotheses/<experiment>.json`` and commit it before the runs), with ``power``, ``sd``
        and ``runs_needed`` (before ``min_runs`` and the rounding) recorded as well.

    Raises:
        ValueError: ``sd <= 0``, ``max_arms < 1``, no teachers, or the screen has no arms.
    """
    if not sd > 0 or max_arms < 1 or not teachers or screen.arms.empty:
        raise ValueError(f"need sd > 0, max_arms >= 1, teachers and a non-empty screen; got sd={sd}, "
                         f"max_arms={max_arms}, teachers={list(teachers)}, {len(screen.arms)} screened arms")
    ranked = screen.arms.sort_values("mean_diff", ascending=False, kind="mergesort")
    above = ranked[ranked["mean_diff"] > 0].head(max_arms)
    kind, chosen = ("greater", above) if len(above) else ("equivalent", ranked.head(max_arms))
    k = len(chosen)
    one_sided_power = power if kind == "greater" else 1 - (1 - power) / 2
    needed = runs_for_power(smallest_effect, sd, one_sided_power, level / k, "greater")
    n = max(needed, min_runs)
    n = -(-n // len(teachers)) * len(teachers)

    return Hypothesis(
        experiment, _setting(screen.reference, screen.reference_setting),
        tuple(_setting(r["arm"], r, kind) for _, r in chosen.iterrows()), tuple(teachers),
        tuple(range(first_seed, first_seed + n)), metric, smallest_effect, level, "holm",
        power=power, sd=sd, runs_needed=needed)


def _setting(name: str, setting: Any, hypothesis: str | None = None) -> ArmSetting:
    """The arm of :data:`~kdlib.lab.config.ARMS` called ``name`` at ``setting["lr"]`` and ``setting["T"]``."""
    arm = {a.name: a for a in ARMS}[name]
    return ArmSetting(arm, float(setting["lr"]), float(setting["T"]), hypothesis)


def omitted_hypothesis(screen: Screen, *, teachers: Sequence[int] = (0, 1, 2), first_seed: int = 200,
                       runs: int = 12, smallest_effect: float = 0.01, level: float = 0.05,
                       metric: str = "omitted_class_auroc") -> dict[str, Any]:
    """The hypothesis file of the tuned omitted-class experiment, derived from the exploration's
    screen by a rule fixed before the exploration finished.

    1. **Arms.** For each Rényi order of :data:`ARMS` (0.25, 0.5, 2, 4, ∞), its variant (with or
       without the division by α) with the higher tuned mean validation accuracy in the screen
       (:func:`tuned_screen`), and reverse KL; each at the learning rate and T the exploration chose
       for it, the reference KL at its own. Every arm's hypothesis is ``"two-sided"``: the earlier,
       reduced run gave no direction to pre-register (orders above 1 were below KL on the omitted
       class after the shift in the means, none significantly).
    2. **Runs.** ``runs`` per arm (default 12: the issue's minimum of 10, rounded up to a multiple
       of the teachers), fixed rather than powered because no earlier run recorded ``metric`` (the
       AUROC) to estimate its standard deviation from; the effect detectable with these runs is
       reported from the observed one afterwards, as such.
    3. **Seeds and teachers.** Student seeds ``first_seed, first_seed + 1, ...``; seed ``s`` learns
       from ``teachers[s mod len(teachers)]`` (the exploration's teachers: the omitted class is a
       question of its own, on a transfer set without the class).

    The analysis: for each arm the two-sided paired t-test of ``metric`` against KL's, paired by
    seed, Holm's correction over the arms at ``level``; the omitted class's accuracy before and
    after the bias shift reported beside it.

    Returns:
        a dict that :func:`kdlib.lab.prereg.load_hypothesis` accepts (write it as
        ``hypotheses/omitted_class_tuned.json`` and commit it before the runs).

    Raises:
        ValueError: ``runs`` is not a positive multiple of the number of ``teachers``, or the
            screen lacks an order's variants or reverse KL.
    """
    if not teachers or runs < 1 or runs % len(teachers):
        raise ValueError(f"runs must be a positive multiple of the {len(teachers)} teachers, got {runs}")
    by_name = screen.arms.set_index("arm")
    arms = []
    for alpha in dict.fromkeys(a.alpha for a in ARMS if a.alpha != 1.0 and not a.reverse):
        names = [a.name for a in ARMS if a.alpha == alpha and not a.reverse]
        if not set(names) <= set(by_name.index):
            raise ValueError(f"screen must hold the arms {names}, has {sorted(by_name.index)}")
        arms.append(max(names, key=lambda n: (by_name.loc[n, "mean"], -names.index(n))))
    if "reverse KL" not in by_name.index:
        raise ValueError(f"screen must hold the arm 'reverse KL', has {sorted(by_name.index)}")
    arms.append("reverse KL")
    return Hypothesis(
        "omitted_class_tuned", _setting(screen.reference, screen.reference_setting),
        tuple(_setting(n, by_name.loc[n], "two-sided") for n in arms), tuple(teachers),
        tuple(range(first_seed, first_seed + runs)), metric, smallest_effect, level, "holm")


def confirmation_sd(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, float]:
    """The standard deviation of one paired difference that sizes a confirmation
    (:func:`confirmation_hypothesis`), the larger of two estimates (the larger sd needs more runs):

    * ``exploration``: the pooled sd (root of the mean variance) of the paired validation
      differences from KL of the arms of :func:`tuned_screen` whose runs at their tuned setting
      did not diverge (a diverged run's difference measures a breakdown, not noise);
    * ``hinton``: the sd of the paired test differences between the 2×800 students distilled with KL
      at T = 1 and at T = 2 in a Hinton-style experiment on the same data (one pair per seed and
      teacher): ``hinton`` for the student on all images (15 pairs at full scale),
      ``hinton_data_poor`` for the data-poor one (6 pairs).

    Returns:
        ``exploration``, ``hinton`` and ``sd`` (their maximum), as fractions of accuracy.
    """
    dist = explore[explore["arm"] != "alone"]
    tuned = tuned_comparison(dist, ["arm"], over=["lr", "T"])
    broken = set(tuned.loc[tuned["diverged"].astype(bool), "arm"])
    paired = paired_differences(tuned[~tuned["arm"].isin(broken)], "final_val_accuracy", ["arm"],
                                {"arm": "KL"}, [])
    pooled = float(np.sqrt((paired["std_diff"] ** 2).mean()))
    big = hinton[(hinton["model"] == "mlp800x800") & (hinton["label"] == "distilled")
                 & hinton["T"].isin([1.0, 2.0])]
    kl12 = paired_differences(big, "test_accuracy", ["T"], {"T": 1.0}, [])
    return {"exploration": pooled, "hinton": float(kl12["std_diff"].iloc[0]),
            "sd": max(pooled, float(kl12["std_diff"].iloc[0]))}


def hypotheses_from(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, Hypothesis]:
    """The hypothesis files derived from the exploration of the 2×800 student on all images, from
    its and the Hinton runs' :func:`student_frame`: ``{"renyi_confirm_tuned": ...,
    "omitted_class_tuned": ...}``, the first with the two estimates of :func:`confirmation_sd`
    recorded as ``sd_estimates``."""
    screen = tuned_screen(explore)
    return {"renyi_confirm_tuned": _sized_confirmation(screen, explore, hinton),
            "omitted_class_tuned": omitted_hypothesis(screen)}


def _sized_confirmation(screen: Screen, explore: pd.DataFrame, hinton: pd.DataFrame,
                        **rule: Any) -> Hypothesis:
    """:func:`confirmation_hypothesis` of ``screen`` (with the keywords ``rule``), sized by
    :func:`confirmation_sd` of ``explore`` and ``hinton``, its two estimates recorded as ``sd_estimates``."""
    sd = confirmation_sd(explore, hinton)
    confirm = confirmation_hypothesis(screen, sd["sd"], **rule)
    return replace(confirm, sd_estimates={k: sd[k] for k in ("exploration", "hinton")})


def poor_hypotheses_from(explore: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, Hypothesis]:
    """The hypothesis file derived from the data-poor exploration (``renyi_explore_poor``) and the
    data-poor Hinton runs (``hinton_data_poor``): ``{"renyi_confirm_poor": ...}``, the rule of the
    confirmation on all images applied unchanged (:func:`confirmation_hypothesis` of
    :func:`tuned_screen`, sized by :func:`confirmation_sd`, recorded as ``sd_estimates``: at most
    three arms, a smallest effect of 0.3 points, power 0.8, at least 12 runs), on the confirmation's
    fresh teachers 3, 4 and 5 (the data-poor exploration used 0, 1 and 2) with student seeds from
    300 (the confirmation on all images has 100-111, the omitted class 200-211). Written before the
    data-poor exploration ended, like the rule it applies."""
    return {"renyi_confirm_poor": _sized_confirmation(tuned_screen(explore), explore, hinton,
                                                      experiment="renyi_confirm_poor", first_seed=300)}


def adam_poor_hypotheses_from(adam: pd.DataFrame, hinton: pd.DataFrame) -> dict[str, Hypothesis]:
    """The hypothesis file derived from the data-poor Adam check (``renyi_adam_poor``, the
    confirmed arms of ``renyi_confirm_poor`` with Adam at five learning rates on three teachers) and
    the data-poor Hinton runs: ``{"renyi_confirm_adam_poor": ...}``. The confirmation rule of
    :func:`poor_hypotheses_from` applied unchanged to the check's screen (:func:`tuned_screen`: each
    arm's Adam learning rate chosen on mean validation accuracy, at its temperature from the SGD
    file), sized by :func:`confirmation_sd` of the check and the Hinton runs, on the fresh teachers
    3, 4 and 5 (the check used 0, 1 and 2), student seeds from 400, every student trained with Adam
    (``"optimizer": "adam"``). The check is this confirmation's exploration: it was not
    pre-registered, the file is written from it before any confirmatory run."""
    confirm = _sized_confirmation(tuned_screen(adam), adam, hinton, experiment="renyi_confirm_adam_poor",
                                  first_seed=400)
    return {"renyi_confirm_adam_poor": replace(confirm, optimizer="adam")}


#: Verdicts of :func:`confirmatory_tests` by hypothesis: (rejected and the difference > 0, rejected
#: and < 0, not rejected).
VERDICTS = {"greater": ("greater", "greater", "not shown greater"),
            "two-sided": ("greater", "smaller", "no difference shown"),
            "equivalent": ("equivalent", "equivalent", "equivalence not shown")}


def confirmatory_tests(df: pd.DataFrame, h: Hypothesis, metric: str | None = None) -> pd.DataFrame:
    """The confirmatory analysis that a hypothesis file ``h`` fixes
    (:func:`kdlib.lab.prereg.load_hypothesis`).

    For each arm of ``h``, its runs in ``df`` (:func:`~kdlib.lab.analysis.runs_of` the arm at its
    learning rate and T) are paired by seed with the reference's, and ``metric`` (default
    ``h.metric``) is tested as the arm's ``hypothesis`` says: ``"greater"``, the one-sided
    :func:`scipy.stats.ttest_rel` (H1: arm > reference); ``"two-sided"``, the two-sided one;
    ``"equivalent"``, :func:`equivalence_test` with margin ``h.smallest_effect``. Holm's
    correction over the arms (:func:`holm`) gives ``p_holm`` and the ``verdict`` at ``h.level``
    (:data:`VERDICTS`). ``detectable`` is :func:`detectable_effect` at Holm's first level with the
    observed ``std_diff`` (one-sided for ``greater`` and ``equivalent``).

    Returns:
        one row per arm, in the file's order: ``arm, lr, T, hypothesis, n, mean_diff, std_diff,
        ci_low, ci_high`` (95% t-interval), ``p, p_holm, verdict, detectable``.

    Raises:
        ValueError: an arm (or the reference) has no runs in ``df``, or an arm's seeds differ from
            the reference's.
    """
    metric = metric or h.metric
    level, k = h.level, len(h.arms)

    def runs(a: ArmSetting) -> pd.Series:
        sel = runs_of(df, a.arm, lr=a.lr, T=a.T)
        if sel.empty:
            raise ValueError(f"df has no runs of the arm {a.name!r} at lr {a.lr:g}, T {a.T:g}")
        return sel.set_index("seed")[metric].sort_index()

    ref = runs(h.reference)
    rows = []
    for arm in h.arms:
        a = runs(arm)
        if list(a.index) != list(ref.index):
            raise ValueError(f"the seeds of {arm.name!r} {list(a.index)} differ from the reference's "
                             f"{list(ref.index)}")
        kind = arm.hypothesis
        test = paired_test(a.tolist(), ref.tolist())
        if kind == "equivalent":
            p = equivalence_test(a.tolist(), ref.tolist(), h.smallest_effect)["p"]
        elif kind == "greater":
            p = float(stats.ttest_rel(a, ref, alternative="greater").pvalue)
        else:
            p = test["p"]
        detectable = detectable_effect(test["std_diff"], test["n"], level / k,
                                       alternative="two-sided" if kind == "two-sided" else "greater")
        rows.append({"arm": arm.name, "lr": arm.lr, "T": arm.T, "hypothesis": kind,
                     **{f: test[f] for f in ("n", "mean_diff", "std_diff", "ci_low", "ci_high")}, "p": p,
                     "detectable": detectable})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].tolist())
    out["verdict"] = [VERDICTS[kind][2 if p >= level else (0 if d > 0 else 1)]
                      for kind, p, d in zip(out["hypothesis"], out["p_holm"], out["mean_diff"], strict=True)]
    cols = ["arm", "lr", "T", "hypothesis", "n", "mean_diff", "std_diff", "ci_low", "ci_high", "p", "p_holm",
            "verdict", "detectable"]
    return out[cols]


def hypothesis_preceded(records: Iterable[Record | dict[str, Any]], path: str | os.PathLike
                        ) -> dict[str, bool | None]:
    """For each commit the ``records`` were run from, whether it already held the hypothesis file
    ``path`` exactly as it is now (:func:`kdlib.lab.provenance.file_at_commit`): ``True`` yes, ``False``
    no (missing or different there: the runs did not follow the file as committed), ``None``
    unknown (no git history here, or a record without a commit, under the key ``"?"``)."""
    current = Path(path).read_bytes()
    out: dict[str, bool | None] = {}
    for r in records:
        commit = parse_record(r).provenance.get("git_commit") or "?"
        if commit in out:
            continue
        try:
            out[commit] = None if commit == "?" else file_at_commit(path, commit) == current
        except LookupError:
            out[commit] = None
    return out


def check_hypothesis_preceded(records: Iterable[Record | dict[str, Any]], path: str | os.PathLike) -> str:
    """:func:`hypothesis_preceded`, as a page states it: one line saying in how many commits the
    ``records`` ran from the file ``path`` was already committed as it is now (and whether some
    commits are not in this clone's history).

    Raises:
        ValueError: a record ran from a commit that did not hold the file as it is now (it is
            named), so the runs did not follow the committed hypotheses.
    """
    preceded = hypothesis_preceded(records, path)
    late = sorted(c for c, ok in preceded.items() if ok is False)
    if late:
        raise ValueError(f"records ran from commits without {Path(path).name} as committed now: "
                         f"{', '.join(c[:10] for c in late)}")
    known = sum(ok is True for ok in preceded.values())
    unknown = "; some are not in this clone's history" if None in preceded.values() else ""
    return ("the hypothesis file, as committed now, is in every commit\n"
            f"the runs started from ({known} commit{'' if known == 1 else 's'}{unknown})")
