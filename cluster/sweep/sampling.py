"""Parameter sampling: which hyperparameter combinations a sweep tries next.

Pure decision logic, no I/O. A sampler is a frozen description of a search space (plus a seed);
the caller keeps the sweep's state as a list of :class:`Trial` (what was sampled so far, with the
final primary metric of each finished child) and asks::

    samples = sampling.next_samples(history, n, goal=PrimaryMetricGoal.MAXIMIZE)

for up to ``n`` new ``{argument name: value}`` dicts. The answer depends only on the sampler, the
history, ``n`` and ``goal``, so a sweep controller that restarts and rebuilds ``history`` from
its child runs continues exactly where it left off.

* :class:`GridParameterSampling` -- every combination of ``choice`` values, each once, then nothing.
* :class:`RandomParameterSampling` -- independent draws; the k-th sample (k = 0, 1, ...) is a
  function of ``(seed, k)`` only, so batching and restarts do not change the sequence.
* :class:`BayesianParameterSampling` -- Optuna's TPE, refitted from the history on every call.
"""

from __future__ import annotations

import copy
import itertools
import math
import secrets
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

import numpy as np
from pydantic import BeforeValidator, Field, Strict

from cluster.errors import UsageError
from cluster.schema import Kinds, Record, WholeNumber, python_scalar, record
from cluster.sweep.expressions import (
    EXPRESSIONS,
    Choice,
    LogUniform,
    Normal,
    ParameterExpression,
    QLogUniform,
    QNormal,
    QUniform,
    RandInt,
    Uniform,
    canonical_key,
    quantize,
)
from cluster.sweep.policy import PrimaryMetricGoal, coerce_goal

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

__all__ = [
    "SAMPLINGS",
    "BayesianParameterSampling",
    "GridParameterSampling",
    "ParameterSampling",
    "RandomParameterSampling",
    "Trial",
    "sampling_from_dict",
]


if TYPE_CHECKING:
    Space = dict[str, ParameterExpression]
    MetricValue = float
else:
    #: a search space: parameter name -> expression (or its tagged dict)
    Space = EXPRESSIONS.mapping_field(key="parameter")
    #: a final metric: any float, NaN included (a failed metric is no value, not an error)
    MetricValue = Annotated[float, BeforeValidator(python_scalar), Strict()]
#: a seed: an int >= 0, or None for a fresh random one (kept, so a stored sweep replays it)
Seed = Annotated[WholeNumber, Field(ge=0)] | None


@record
class Trial(Record):
    """One sampled combination of a sweep.

    ``params`` is what the sampler returned; ``value`` is the child run's final primary metric,
    or ``None`` while it runs, or if it failed, was cancelled or logged no usable metric.
    """

    params: dict[str, Any]
    value: MetricValue | None = None


class ParameterSampling(Record, ABC):
    """Base of the samplers: a search space mapping argument names to expressions.

    Subclasses are :func:`~cluster.schema.record` classes registered in :data:`SAMPLINGS`."""

    kind: ClassVar[str]
    space: Space

    @property
    def max_total(self) -> int | None:
        """How many samples this sampler can ever produce, or ``None`` if unlimited."""
        return None

    @abstractmethod
    def next_samples(
        self, history: Sequence[Trial], n: int, goal: PrimaryMetricGoal | str = PrimaryMetricGoal.MAXIMIZE
    ) -> list[dict[str, Any]]:
        """Up to ``n`` new parameter dicts, given every trial sampled so far (in order).

        Fewer than ``n`` (possibly none) only when the space is exhausted (grid sampling).
        ``goal`` says whether a larger or smaller ``Trial.value`` is better (Bayesian only).
        """

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``{"type": kind, "space": {...}, ...}``), read back by :func:`sampling_from_dict`."""
        return SAMPLINGS.dump(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Inverse of :meth:`to_dict` (dispatches on ``type`` like :func:`sampling_from_dict`)."""
        sampling = SAMPLINGS.load(data)
        if not isinstance(sampling, cls):
            raise UsageError(f"expected {cls.kind} sampling, got {sampling.kind!r}")
        return sampling

    def _check_space(self) -> None:
        if not self.space:
            raise UsageError(f"{self.kind} sampling got an empty parameter space", hint="give at least one parameter")
        for name in self.space:
            if not isinstance(name, str) or not name.strip():
                raise UsageError(f"parameter names must be non-empty strings, got {name!r}")

    def _fix_seed(self) -> int:
        """The seed; ``None`` becomes a fresh random one, stored (so to_dict replays it)."""
        seed: int | None = getattr(self, "seed", None)
        if seed is None:
            seed = secrets.randbits(32)
            object.__setattr__(self, "seed", seed)
        return seed


#: the one registry of samplers, by their ``type`` tag
SAMPLINGS: Kinds[ParameterSampling] = Kinds("parameter sampling", base=ParameterSampling)


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise UsageError(f"next_samples(): n must be an int >= 0, got {n!r}")
    return int(n)


def _check_history(history: Any) -> list[Trial]:
    if isinstance(history, str | bytes) or not isinstance(history, Sequence):
        raise UsageError(f"history must be a list of Trial, got {type(history).__name__}")
    for trial in history:
        if not isinstance(trial, Trial):
            raise UsageError(f"history must hold Trial objects, got {trial!r}", hint="Trial(params, value)")
    return list(history)


# --------------------------------------------------------------------------- grid


@SAMPLINGS.register
@record
class GridParameterSampling(ParameterSampling):
    """Every combination of the ``choice`` values, each exactly once, in a fixed order.

    Combinations already in the history (matched by their parameter values, whatever their
    order or outcome) are skipped, so asking in batches, or after a restart, still yields each
    combination once in total, and then nothing. Only ``choice`` expressions are allowed.
    """

    __what__ = "grid sampling"
    kind: ClassVar[str] = "grid"
    space: Space

    def __post_init__(self) -> None:
        self._check_space()
        for name, expr in self.space.items():
            if not isinstance(expr, Choice):
                raise UsageError(
                    f"grid sampling supports only choice(); parameter {name!r} is {expr.kind}()",
                    hint=f"list the values to try, e.g. {name!r}: choice(0.01, 0.1, 1.0), "
                    "or use RandomParameterSampling / BayesianParameterSampling",
                )

    @property
    def max_total(self) -> int:
        """The number of combinations."""
        return math.prod(len(expr.options) for expr in self._choices().values())

    def _choices(self) -> dict[str, Choice]:
        return {name: expr for name, expr in self.space.items() if isinstance(expr, Choice)}

    def combinations(self) -> Iterator[dict[str, Any]]:
        """All combinations, in grid order (the last parameter varies fastest)."""
        choices = self._choices()
        for values in itertools.product(*(expr.options for expr in choices.values())):
            yield dict(zip(choices, values, strict=True))

    def next_samples(
        self, history: Sequence[Trial], n: int, goal: PrimaryMetricGoal | str = PrimaryMetricGoal.MAXIMIZE
    ) -> list[dict[str, Any]]:
        n = _check_n(n)
        history = _check_history(history)
        coerce_goal(goal)
        names = list(self.space)
        seen = {
            canonical_key([trial.params[name] for name in names])
            for trial in history
            if all(name in trial.params for name in names)
        }
        out: list[dict[str, Any]] = []
        if n == 0:
            return out
        for combo in self.combinations():
            if canonical_key([combo[name] for name in names]) not in seen:
                out.append(combo)
                if len(out) == n:
                    break
        return out


# --------------------------------------------------------------------------- random


def _random_sample(space: Mapping[str, ParameterExpression], seed: int, k: int) -> dict[str, Any]:
    """The k-th random sample of a seeded sweep: a function of ``(seed, k)`` and the space only.

    Parameters are drawn in sorted name order, so the order of the space dict does not matter.
    """
    rng = np.random.default_rng([seed, k])
    drawn = {name: space[name].sample(rng) for name in sorted(space)}
    return {name: drawn[name] for name in space}


@SAMPLINGS.register
@record
class RandomParameterSampling(ParameterSampling):
    """Independent random draws from every expression (any expression type).

    The k-th sample of the sweep (k = ``len(history)``, ``len(history) + 1``, ...) depends only on
    ``(seed, k)``: asking 10 at once, 10 times one, or 5 then (after a restart, with a history
    of 5) 5 more gives the same 10 samples. ``seed=None`` picks a random seed at construction,
    kept in :attr:`seed` and :meth:`to_dict`, so a stored sweep still resumes reproducibly.
    Samples may repeat when the space is small and discrete.
    """

    __what__ = "random sampling"
    kind: ClassVar[str] = "random"
    space: Space
    seed: Seed = None

    def __post_init__(self) -> None:
        self._check_space()
        self._fix_seed()

    def next_samples(
        self, history: Sequence[Trial], n: int, goal: PrimaryMetricGoal | str = PrimaryMetricGoal.MAXIMIZE
    ) -> list[dict[str, Any]]:
        n = _check_n(n)
        start = len(_check_history(history))
        coerce_goal(goal)
        assert self.seed is not None  # set in __post_init__
        return [_random_sample(self.space, self.seed, k) for k in range(start, start + n)]


# --------------------------------------------------------------------------- bayesian

_NORMAL_SIGMAS = 4.0
"""Optuna needs bounded ranges: normal(mu, sigma) is searched over mu +- 4 sigma (99.994 % of it)."""


@dataclass(frozen=True)
class _Encoding:
    """How one expression maps onto an Optuna distribution: ``encode`` a value into it (``None``
    if the value cannot be represented), ``decode`` an Optuna value back into a sample."""

    distribution: BaseDistribution
    encode: Callable[[Any], Any]
    decode: Callable[[Any], Any]


def _clip_float(low: float, high: float) -> Callable[[Any], float | None]:
    def encode(value: Any) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return min(max(float(value), low), high)

    return encode


def _index_encoding(kmin: int, kmax: int, q: int | float, *, log: bool = False) -> _Encoding:
    """A quantized expression as an int index ``k`` (value ``k * q``) in ``[kmin, kmax]``."""
    from optuna.distributions import IntDistribution

    def encode(value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return min(max(round(value / q), kmin), kmax)

    return _Encoding(IntDistribution(kmin, kmax, log=log), encode, lambda k: quantize(int(k) * q, q))


def _encoding(expr: ParameterExpression) -> _Encoding:
    """The Optuna search distribution for an expression (see BayesianParameterSampling)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(expr, Choice):
        index = {canonical_key(option): i for i, option in enumerate(expr.options)}
        options = expr.options
        return _Encoding(
            CategoricalDistribution(tuple(range(len(options)))),
            lambda v: index.get(canonical_key(v)),
            lambda i: copy.deepcopy(options[int(i)]),
        )
    if isinstance(expr, RandInt):
        upper = expr.upper

        def encode_int(value: Any) -> int | None:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < upper:
                return None
            return value

        return _Encoding(IntDistribution(0, upper - 1), encode_int, int)
    if isinstance(expr, Uniform):
        return _Encoding(FloatDistribution(expr.low, expr.high), _clip_float(expr.low, expr.high), float)
    if isinstance(expr, LogUniform):
        low, high = math.exp(expr.min_exp), math.exp(expr.max_exp)
        return _Encoding(FloatDistribution(low, high, log=True), _clip_float(low, high), float)
    if isinstance(expr, Normal):
        low, high = expr.mu - _NORMAL_SIGMAS * expr.sigma, expr.mu + _NORMAL_SIGMAS * expr.sigma
        return _Encoding(FloatDistribution(low, high), _clip_float(low, high), float)
    if isinstance(expr, QUniform):
        return _index_encoding(round(expr.low / expr.q), round(expr.high / expr.q), expr.q)
    if isinstance(expr, QNormal):
        spread = _NORMAL_SIGMAS * expr.sigma
        return _index_encoding(round((expr.mu - spread) / expr.q), round((expr.mu + spread) / expr.q), expr.q)
    if isinstance(expr, QLogUniform):
        kmin = round(math.exp(expr.min_exp) / expr.q)
        kmax = round(math.exp(expr.max_exp) / expr.q)
        if kmax < 1:  # every value rounds to 0
            return _index_encoding(0, 0, expr.q)
        return _index_encoding(max(kmin, 1), kmax, expr.q, log=True)
    raise UsageError(f"Bayesian sampling does not support {type(expr).__name__}")


@contextmanager
def _quiet_optuna() -> Iterator[Any]:
    """Import optuna with its INFO logging and ExperimentalWarnings silenced, then restore."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield optuna
    finally:
        optuna.logging.set_verbosity(verbosity)


@SAMPLINGS.register
@record
class BayesianParameterSampling(ParameterSampling):
    """Bayesian optimization with Optuna's TPE sampler, rebuilt from the history on every call.

    * The first ``n_startup_trials`` samples (and any sample asked before a trial has finished)
      are :class:`RandomParameterSampling` draws with the same seed, from the true prior
      distributions.
    * After that, a fresh in-memory Optuna study is told every trial of the history: finished
      ones (``value`` a finite number) as COMPLETE, the others as RUNNING, which TPE's
      ``constant_liar`` treats as pessimistic guesses so that concurrent samples spread out.
      TPE (seeded from ``(seed, len(history))``) then proposes the new samples.

    The result is a pure function of ``(self, history, n, goal)``. Search distributions:
    ``choice`` is categorical over the option indices; ``randint`` an int range; ``uniform``
    and ``loguniform`` (``log=True`` on ``[e**min_exp, e**max_exp]``) float ranges; ``quniform``,
    ``qloguniform`` and ``qnormal`` the int index ``k`` of the value ``k * q`` (log-scaled for
    qloguniform, where TPE never proposes 0); ``normal(mu, sigma)`` has no bounds, so TPE
    searches ``[mu - 4 sigma, mu + 4 sigma]`` uniformly. Trials whose params do not fit the space
    (a missing parameter, an unknown choice) are not told. (HyperDrive itself allows only
    choice, uniform and quniform with Bayesian sampling; these extensions are ours.)
    """

    __what__ = "bayesian sampling"
    kind: ClassVar[str] = "bayesian"
    space: Space
    seed: Seed = None
    n_startup_trials: Annotated[WholeNumber, Field(ge=0)] = 10

    def __post_init__(self) -> None:
        self._check_space()
        self._fix_seed()

    def next_samples(
        self, history: Sequence[Trial], n: int, goal: PrimaryMetricGoal | str = PrimaryMetricGoal.MAXIMIZE
    ) -> list[dict[str, Any]]:
        n = _check_n(n)
        history = _check_history(history)
        goal = coerce_goal(goal)
        assert self.seed is not None  # set in __post_init__
        start = len(history)
        finished = sum(1 for t in history if _finished(t.value))
        if finished == 0 or start + n <= self.n_startup_trials:
            return [_random_sample(self.space, self.seed, k) for k in range(start, start + n)]

        with _quiet_optuna() as optuna:
            from optuna.trial import TrialState, create_trial

            encodings = {name: _encoding(expr) for name, expr in self.space.items()}
            distributions = {name: enc.distribution for name, enc in encodings.items()}
            tpe_seed = int(np.random.SeedSequence([self.seed, start]).generate_state(1)[0])
            sampler = optuna.samplers.TPESampler(seed=tpe_seed, n_startup_trials=0, constant_liar=True)
            study = optuna.create_study(direction=goal.value, sampler=sampler)

            def tell(params: dict[str, Any], value: float | None) -> None:
                encoded = {name: enc.encode(params.get(name)) for name, enc in encodings.items()}
                if any(name not in params or v is None for name, v in encoded.items()):
                    return
                if _finished(value):
                    study.add_trial(create_trial(params=encoded, distributions=distributions, value=value))
                else:
                    study.add_trial(create_trial(params=encoded, distributions=distributions, state=TrialState.RUNNING))

            for trial in history:
                tell(trial.params, trial.value)
            out: list[dict[str, Any]] = []
            for k in range(start, start + n):
                if k < self.n_startup_trials:
                    sample = _random_sample(self.space, self.seed, k)
                    tell(sample, None)
                else:
                    asked = study.ask(distributions)  # stays RUNNING: a constant-liar point
                    sample = {name: encodings[name].decode(asked.params[name]) for name in self.space}
                out.append(sample)
            return out


def _finished(value: float | None) -> bool:
    return (
        value is not None
        and not isinstance(value, bool)
        and isinstance(value, int | float | np.integer | np.floating)
        and math.isfinite(value)
    )


# --------------------------------------------------------------------------- deserialization


def sampling_from_dict(data: Any) -> ParameterSampling:
    """Rebuild any sampler from its ``to_dict`` form (validated; a misspelt or missing key is an error)."""
    return SAMPLINGS.load(data)
