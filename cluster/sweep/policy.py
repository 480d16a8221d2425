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
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Self

from pydantic import Field

from cluster.errors import UsageError
from cluster.schema import Hint, Kinds, Number, Record, WholeNumber, record

__all__ = [
    "POLICIES",
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


#: how often a policy is applied: every ``evaluation_interval``-th logged value
Interval = Annotated[WholeNumber, Field(ge=1), Hint("evaluation_interval=1 applies the policy at every logged value")]
#: the first interval at which a policy may apply
Delay = Annotated[WholeNumber, Field(ge=0), Hint("delay_evaluation=0 applies the policy from the first interval")]
#: a Bandit slack: a finite number >= 0 (or None when the other slack is given)
Slack = Annotated[Number, Field(ge=0),
                  Hint("e.g. BanditPolicy(slack_factor=0.1) keeps runs within 10% of the best one")]
#: the percentage of runs a truncation selection stops at each evaluation
Percentage = Annotated[WholeNumber, Field(ge=1, le=99),
                       Hint("e.g. truncation_percentage=20 stops the worst 20% of runs at each evaluation")]


def _fmt(x: float) -> str:
    return f"{x:.6g}"


class EarlyTerminationPolicy(Record, ABC):
    """Base of the policies. Subclasses are :func:`~cluster.schema.record` classes registered in :data:`POLICIES`."""

    kind: ClassVar[str]
    if TYPE_CHECKING:  # fields of every policy but NoTerminationPolicy, which has none (and applies nowhere)
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``{"type": kind, <field>: <value>, ...}``), read back by :func:`policy_from_dict`."""
        return POLICIES.dump(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Inverse of :meth:`to_dict` (dispatches on ``type`` like :func:`policy_from_dict`)."""
        policy = policy_from_dict(data)
        if not isinstance(policy, cls):
            raise UsageError(f"expected a {cls.kind} policy, got {policy.kind!r}")
        return policy


#: the one registry of early termination policies, by their ``type`` tag
POLICIES: Kinds[EarlyTerminationPolicy] = Kinds("early termination policy", base=EarlyTerminationPolicy)


# --------------------------------------------------------------------------- policies


@POLICIES.register
@record
class NoTerminationPolicy(EarlyTerminationPolicy):
    """Never stops a run: every child runs to completion. It has no fields (``{"type": "no_termination"}``)."""

    kind: ClassVar[str] = "no_termination"
    evaluation_interval = 1  # not fields: the policy applies nowhere
    delay_evaluation = 0

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


@POLICIES.register
@record
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
    evaluation_interval: Interval = 1
    slack_factor: Slack | None = None
    slack_amount: Slack | None = None
    delay_evaluation: Delay = 0

    def __post_init__(self) -> None:
        if (self.slack_factor is None) == (self.slack_amount is None):
            raise UsageError(
                "BanditPolicy needs exactly one of slack_factor and slack_amount, got "
                f"slack_factor={self.slack_factor!r}, slack_amount={self.slack_amount!r}",
                hint="e.g. BanditPolicy(slack_factor=0.1) keeps runs within 10% of the best one",
            )

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


@POLICIES.register
@record
class MedianStoppingPolicy(EarlyTerminationPolicy):
    """Stop a run whose best value so far is worse than the median of the running averages.

    At an evaluation interval ``t``, each run that reached ``t`` (the judged one included) has a
    running average of its first ``t`` values; a run whose best value among its first ``t`` is
    strictly worse than the median of those averages is stopped. A lone run is never stopped.
    """

    kind: ClassVar[str] = "median_stopping"
    evaluation_interval: Interval = 1
    delay_evaluation: Delay = 0

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


@POLICIES.register
@record
class TruncationSelectionPolicy(EarlyTerminationPolicy):
    """At each evaluation interval, stop the runs in the worst ``truncation_percentage`` percent.

    The runs that reached the interval are ranked by their value there; the worst
    ``floor(runs * truncation_percentage / 100)`` are stopped -- so nothing is stopped until at
    least ``ceil(100 / truncation_percentage)`` runs reached the interval (5 runs for 20%).
    A run whose value equals the cutoff (the worst value that survives) is kept: ties never
    stop more runs than the percentage allows, and runs with equal values are never split.
    """

    kind: ClassVar[str] = "truncation_selection"
    truncation_percentage: Percentage
    evaluation_interval: Interval = 1
    delay_evaluation: Delay = 0

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


# --------------------------------------------------------------------------- deserialization


def policy_from_dict(data: Any) -> EarlyTerminationPolicy:
    """Rebuild any policy from its ``to_dict`` form (validated; a misspelt key is an error). ``None`` means no
    policy (:class:`NoTerminationPolicy`)."""
    if data is None:
        return NoTerminationPolicy()
    return POLICIES.load(data)
