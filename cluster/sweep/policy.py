"""Early termination policies: which child runs of a sweep to stop before they finish.

Pure decision logic, no I/O. The caller collects, for every child run of the sweep, the
primary metric values it has logged so far, in order, and asks::

    decisions = policy.evaluate({"run-1": [0.61, 0.70], "run-2": [0.40, 0.45]}, goal)

Each logged value is one *interval*: a run that logged 3 values is at interval 3. Following
Azure ML HyperDrive, a policy is applied at the intervals that are multiples of
``evaluation_interval`` and ``>= delay_evaluation``. A run is judged at its latest such
interval (so a caller that polls rarely does not skip evaluations), against the values of all
runs of the series that reached that interval (finished runs included, which is why they
belong in ``series``). ``candidates`` restricts which runs may be stopped (e.g. only the ones
still running); the others are peers only. NaN values count as the worst possible value.

The policy keeps no state: it decides again for a run passed again, and the caller does the
bookkeeping (cancel the run once, and stop passing it as a candidate).
"""

from __future__ import annotations

import math
import statistics
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from cluster.errors import UsageError

__all__ = [
    "BanditPolicy",
    "EarlyTerminationPolicy",
    "MedianStoppingPolicy",
    "NoTerminationPolicy",
    "PrimaryMetricGoal",
    "StopDecision",
    "TruncationSelectionPolicy",
    "coerce_goal",
    "policy_from_dict",
]


class PrimaryMetricGoal(StrEnum):
    """Whether a larger (MAXIMIZE) or smaller (MINIMIZE) primary metric is better."""

    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


def coerce_goal(goal: PrimaryMetricGoal | str) -> PrimaryMetricGoal:
    """``goal`` as a :class:`PrimaryMetricGoal`; accepts ``'maximize'``/``'MINIMIZE'`` strings."""
    if isinstance(goal, PrimaryMetricGoal):
        return goal
    if isinstance(goal, str):
        try:
            return PrimaryMetricGoal(goal.strip().lower())
        except ValueError:
            pass
    raise UsageError(
        f"primary metric goal must be 'maximize' or 'minimize', got {goal!r}",
        hint="use PrimaryMetricGoal.MAXIMIZE or PrimaryMetricGoal.MINIMIZE",
    )


@dataclass(frozen=True)
class StopDecision:
    """A policy's verdict that a run should be cancelled.

    ``reason`` is a sentence for logs and the run record, with the numbers compared;
    ``compared`` holds those numbers (always ``interval`` and ``value``, plus policy-specific ones).
    """

    run_id: str
    policy: str
    reason: str
    compared: dict[str, Any]


# --------------------------------------------------------------------------- helpers


def _is_worse(a: float, b: float, goal: PrimaryMetricGoal) -> bool:
    """Whether ``a`` is strictly worse than ``b``."""
    return a < b if goal is PrimaryMetricGoal.MAXIMIZE else a > b


def _best(values: Iterable[float], goal: PrimaryMetricGoal) -> float:
    return max(values) if goal is PrimaryMetricGoal.MAXIMIZE else min(values)


def _check_series(series: Any, goal: PrimaryMetricGoal) -> dict[str, list[float]]:
    """Validated copy of ``series`` with every value a float and NaN replaced by the worst value."""
    if not isinstance(series, Mapping):
        raise UsageError(f"series must be a dict of run id -> list of metric values, got {type(series).__name__}")
    worst = -math.inf if goal is PrimaryMetricGoal.MAXIMIZE else math.inf
    out: dict[str, list[float]] = {}
    for run_id, values in series.items():
        if not isinstance(run_id, str):
            raise UsageError(f"series keys must be run ids (str), got {run_id!r}")
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise UsageError(f"series[{run_id!r}] must be a list of numbers, got {values!r}")
        clean: list[float] = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float):
                try:  # numpy scalars
                    v = float(v)
                except (TypeError, ValueError):
                    raise UsageError(f"series[{run_id!r}] holds a non-number {v!r}") from None
            v = float(v)
            clean.append(worst if math.isnan(v) else v)
        out[run_id] = clean
    return out


def _check_int(policy: str, name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{policy}: {name} must be an int >= {minimum}, got {value!r}")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class EarlyTerminationPolicy(ABC):
    """Base of the policies. Subclasses are frozen dataclasses."""

    kind: ClassVar[str]
    evaluation_interval: int
    delay_evaluation: int

    def evaluation_point(self, interval: int) -> int | None:
        """The latest interval ``<= interval`` at which this policy applies, or ``None``.

        Those are the multiples of ``evaluation_interval`` that are ``>= delay_evaluation``
        (and >= 1): with ``evaluation_interval=2, delay_evaluation=5``, intervals 6, 8, 10, ...
        """
        point = interval - interval % self.evaluation_interval
        return point if point >= max(1, self.delay_evaluation) else None

    def evaluate(
        self,
        series: Mapping[str, Sequence[float]],
        goal: PrimaryMetricGoal | str,
        *,
        candidates: Iterable[str] | None = None,
    ) -> list[StopDecision]:
        """The runs to stop now, in ``series`` order.

        ``series`` maps every child run id to the primary metric values it logged, in order;
        ``candidates`` (default: all of them) are the runs that may be stopped. A candidate
        absent from ``series`` has logged nothing and is never stopped.
        """
        goal = coerce_goal(goal)
        clean = _check_series(series, goal)
        if isinstance(candidates, str):
            raise UsageError(f"candidates must be a collection of run ids, got the string {candidates!r}")
        allowed = set(clean) if candidates is None else set(candidates)
        decisions: list[StopDecision] = []
        for run_id, values in clean.items():
            if run_id not in allowed:
                continue
            point = self.evaluation_point(len(values))
            if point is None:
                continue
            peers = [v for v in clean.values() if len(v) >= point]
            decision = self._judge(run_id, values[:point], peers, point, goal)
            if decision is not None:
                decisions.append(decision)
        return decisions

    @abstractmethod
    def _judge(
        self,
        run_id: str,
        values: list[float],
        peers: list[list[float]],
        interval: int,
        goal: PrimaryMetricGoal,
    ) -> StopDecision | None:
        """Decide for one run at ``interval``: ``values`` is its series up to it, ``peers`` the
        series of every run (itself included) that reached it."""

    def _common(self) -> dict[str, Any]:
        return {"evaluation_interval": self.evaluation_interval, "delay_evaluation": self.delay_evaluation}

    def _check_common(self) -> None:
        name = type(self).__name__
        _check_int(name, "evaluation_interval", self.evaluation_interval, 1)
        _check_int(name, "delay_evaluation", self.delay_evaluation, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, read back by :func:`policy_from_dict`."""
        return {"type": self.kind, **self._common()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EarlyTerminationPolicy:
        """Inverse of :meth:`to_dict` (dispatches on ``type`` like :func:`policy_from_dict`)."""
        policy = policy_from_dict(data)
        if not isinstance(policy, cls):
            raise UsageError(f"expected a {cls.kind} policy, got {data.get('type')!r}")
        return policy


# --------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class NoTerminationPolicy(EarlyTerminationPolicy):
    """Never stops a run: every child runs to completion."""

    kind: ClassVar[str] = "no_termination"
    evaluation_interval: int = 1
    delay_evaluation: int = 0

    def __post_init__(self) -> None:
        self._check_common()

    def evaluate(
        self,
        series: Mapping[str, Sequence[float]],
        goal: PrimaryMetricGoal | str,
        *,
        candidates: Iterable[str] | None = None,
    ) -> list[StopDecision]:
        coerce_goal(goal)
        return []

    def _judge(
        self,
        run_id: str,
        values: list[float],
        peers: list[list[float]],
        interval: int,
        goal: PrimaryMetricGoal,
    ) -> StopDecision | None:
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind}


@dataclass(frozen=True)
class BanditPolicy(EarlyTerminationPolicy):
    """Stop a run whose value at an evaluation interval falls outside the slack of the best run.

    ``best`` is the best value any run logged at that same interval. The threshold, as in
    HyperDrive, is ``best / (1 + slack_factor)`` when maximizing and ``best * (1 + slack_factor)``
    when minimizing, or ``best - slack_amount`` / ``best + slack_amount``; a run strictly worse
    than the threshold is stopped. Give exactly one of ``slack_factor`` and ``slack_amount``.
    The factor formulas assume a positive metric; for a negative ``best`` the slack is taken
    on ``|best|`` (``best -/+ |best| * slack_factor / (1 + slack_factor)`` resp.
    ``* slack_factor``), which equals them for positive values and never stops the leader.
    """

    kind: ClassVar[str] = "bandit"
    evaluation_interval: int = 1
    slack_factor: float | None = None
    slack_amount: float | None = None
    delay_evaluation: int = 0

    def __post_init__(self) -> None:
        self._check_common()
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise UsageError(
                "BanditPolicy needs exactly one of slack_factor and slack_amount, got "
                f"slack_factor={self.slack_factor!r}, slack_amount={self.slack_amount!r}",
                hint="e.g. BanditPolicy(slack_factor=0.1) keeps runs within 10% of the best one",
            )
        name, value = (
            ("slack_factor", self.slack_factor)
            if self.slack_factor is not None
            else ("slack_amount", self.slack_amount)
        )
        bad = UsageError(f"BanditPolicy: {name} must be a finite number >= 0, got {value!r:.60}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            raise bad from None
        if not math.isfinite(number) or number < 0:
            raise bad
        object.__setattr__(self, name, number)

    def threshold(self, best: float, goal: PrimaryMetricGoal | str) -> float:
        """The worst value a run may have at an interval whose best value is ``best``."""
        goal = coerce_goal(goal)
        sign = 1.0 if goal is PrimaryMetricGoal.MAXIMIZE else -1.0
        if self.slack_amount is not None:
            return best - sign * self.slack_amount
        assert self.slack_factor is not None
        if goal is PrimaryMetricGoal.MAXIMIZE:
            if best > 0:
                return best / (1 + self.slack_factor)
            return best - abs(best) * self.slack_factor / (1 + self.slack_factor)
        return best + abs(best) * self.slack_factor

    def _judge(
        self,
        run_id: str,
        values: list[float],
        peers: list[list[float]],
        interval: int,
        goal: PrimaryMetricGoal,
    ) -> StopDecision | None:
        value = values[interval - 1]
        best = _best((p[interval - 1] for p in peers), goal)
        threshold = self.threshold(best, goal)
        if not _is_worse(value, threshold, goal):
            return None
        slack = (
            f"slack_factor {self.slack_factor:g}"
            if self.slack_factor is not None
            else f"slack_amount {self.slack_amount:g}"
        )
        word = "below" if goal is PrimaryMetricGoal.MAXIMIZE else "above"
        return StopDecision(
            run_id=run_id,
            policy=type(self).__name__,
            reason=(
                f"at interval {interval} its value {_fmt(value)} is {word} the bandit threshold "
                f"{_fmt(threshold)} (best {_fmt(best)} among {len(peers)} runs at that interval, {slack})"
            ),
            compared={
                "interval": interval,
                "value": value,
                "best": best,
                "threshold": threshold,
                "runs": len(peers),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.kind,
            **self._common(),
            "slack_factor": self.slack_factor,
            "slack_amount": self.slack_amount,
        }


@dataclass(frozen=True)
class MedianStoppingPolicy(EarlyTerminationPolicy):
    """Stop a run whose best value so far is worse than the median of the running averages.

    At an evaluation interval ``t``, each run that reached ``t`` (the judged one included) has a
    running average of its first ``t`` values; a run whose best value among its first ``t`` is
    strictly worse than the median of those averages is stopped. A lone run is never stopped.
    """

    kind: ClassVar[str] = "median_stopping"
    evaluation_interval: int = 1
    delay_evaluation: int = 0

    def __post_init__(self) -> None:
        self._check_common()

    def _judge(
        self,
        run_id: str,
        values: list[float],
        peers: list[list[float]],
        interval: int,
        goal: PrimaryMetricGoal,
    ) -> StopDecision | None:
        best = _best(values, goal)
        median = float(statistics.median(math.fsum(p[:interval]) / interval for p in peers))
        if not _is_worse(best, median, goal):
            return None
        return StopDecision(
            run_id=run_id,
            policy=type(self).__name__,
            reason=(
                f"at interval {interval} its best value {_fmt(best)} is worse than {_fmt(median)}, "
                f"the median of the running averages of the {len(peers)} runs that reached that interval"
            ),
            compared={
                "interval": interval,
                "value": values[-1],
                "best": best,
                "median": median,
                "runs": len(peers),
            },
        )


@dataclass(frozen=True)
class TruncationSelectionPolicy(EarlyTerminationPolicy):
    """At each evaluation interval, stop the runs in the worst ``truncation_percentage`` percent.

    The runs that reached the interval are ranked by their value there; the worst
    ``floor(runs * truncation_percentage / 100)`` are stopped -- so nothing is stopped until at
    least ``ceil(100 / truncation_percentage)`` runs reached the interval (5 runs for 20%).
    A run whose value equals the cutoff (the worst value that survives) is kept: ties never
    stop more runs than the percentage allows, and runs with equal values are never split.
    """

    kind: ClassVar[str] = "truncation_selection"
    truncation_percentage: int
    evaluation_interval: int = 1
    delay_evaluation: int = 0

    def __post_init__(self) -> None:
        self._check_common()
        pct = self.truncation_percentage
        if isinstance(pct, bool) or not isinstance(pct, int) or not 1 <= pct <= 99:
            raise UsageError(
                f"TruncationSelectionPolicy: truncation_percentage must be an int from 1 to 99, got {pct!r}",
                hint="e.g. truncation_percentage=20 stops the worst 20% of runs at each evaluation",
            )

    def _judge(
        self,
        run_id: str,
        values: list[float],
        peers: list[list[float]],
        interval: int,
        goal: PrimaryMetricGoal,
    ) -> StopDecision | None:
        n_cut = len(peers) * self.truncation_percentage // 100
        if n_cut == 0:
            return None
        ranked = sorted((p[interval - 1] for p in peers), reverse=goal is PrimaryMetricGoal.MINIMIZE)
        cutoff = ranked[n_cut]  # the worst value that survives
        value = values[interval - 1]
        if not _is_worse(value, cutoff, goal):
            return None
        return StopDecision(
            run_id=run_id,
            policy=type(self).__name__,
            reason=(
                f"at interval {interval} its value {_fmt(value)} is in the worst "
                f"{self.truncation_percentage}% of the {len(peers)} runs that reached that interval "
                f"({n_cut} truncated; the worst value kept is {_fmt(cutoff)})"
            ),
            compared={
                "interval": interval,
                "value": value,
                "cutoff": cutoff,
                "truncated": n_cut,
                "runs": len(peers),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "truncation_percentage": self.truncation_percentage, **self._common()}


# --------------------------------------------------------------------------- deserialization

_POLICIES: dict[str, type[EarlyTerminationPolicy]] = {
    cls.kind: cls for cls in (NoTerminationPolicy, BanditPolicy, MedianStoppingPolicy, TruncationSelectionPolicy)
}


def policy_from_dict(data: dict[str, Any] | None) -> EarlyTerminationPolicy:
    """Rebuild any policy from its ``to_dict`` form (validated). ``None`` means no policy."""
    if data is None:
        return NoTerminationPolicy()
    if not isinstance(data, dict) or data.get("type") not in _POLICIES:
        raise UsageError(
            f"unknown early termination policy {data.get('type') if isinstance(data, dict) else data!r}",
            hint=f"a dict with 'type' one of {', '.join(_POLICIES)}",
        )
    cls = _POLICIES[data["type"]]
    kwargs = {k: v for k, v in data.items() if k != "type"}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{cls.__name__}: bad keys {sorted(kwargs)} ({e})", hint="rebuild it with to_dict()") from e
