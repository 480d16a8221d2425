"""Early termination policies (cluster.sweep.policy): pure decisions over metric series."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cluster.errors import UsageError
from cluster.sweep import (
    BanditPolicy,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    PrimaryMetricGoal,
    StopDecision,
    TruncationSelectionPolicy,
    policy_from_dict,
)

MAX = PrimaryMetricGoal.MAXIMIZE
MIN = PrimaryMetricGoal.MINIMIZE


def stopped(decisions: list[StopDecision]) -> list[str]:
    return [d.run_id for d in decisions]


# --------------------------------------------------------------------------- bandit


def test_bandit_stops_a_lagging_run_and_not_the_leader() -> None:
    series = {"leader": [0.5, 0.8], "close": [0.4, 0.7], "lagging": [0.6, 0.6]}
    decisions = BanditPolicy(slack_factor=0.2).evaluate(series, MAX)
    assert stopped(decisions) == ["lagging"]  # 0.6 < 0.8 / 1.2 = 0.667; close's 0.7 is within
    (d,) = decisions
    assert d.policy == "BanditPolicy"
    assert d.compared == {
        "interval": 2,
        "value": 0.6,
        "best": 0.8,
        "threshold": pytest.approx(0.8 / 1.2),
        "runs": 3,
    }
    assert "0.6" in d.reason and "0.8" in d.reason and "0.666667" in d.reason


def test_bandit_slack_amount_and_minimize() -> None:
    series = {"a": [0.20], "b": [0.34], "c": [0.36]}
    # minimize, factor: threshold 0.2 * 1.75 = 0.35
    assert stopped(BanditPolicy(slack_factor=0.75).evaluate(series, MIN)) == ["c"]
    # minimize, amount: threshold 0.2 + 0.1 = 0.3
    assert stopped(BanditPolicy(slack_amount=0.1).evaluate(series, "minimize")) == ["b", "c"]
    # maximize, amount: threshold 0.36 - 0.1 = 0.26
    assert stopped(BanditPolicy(slack_amount=0.1).evaluate(series, "MAXIMIZE")) == ["a"]


def test_bandit_compares_runs_at_the_same_interval_only() -> None:
    # "ahead" is at interval 3 with a great value; the others are judged at interval 1 and 2
    series = {"ahead": [0.1, 0.2, 0.9], "b": [0.5, 0.15], "c": [0.09]}
    decisions = BanditPolicy(slack_factor=0.1).evaluate(series, MAX)
    assert stopped(decisions) == ["b", "c"]
    assert [d.compared["best"] for d in decisions] == [0.2, 0.5]


def test_bandit_never_stops_the_leader_with_negative_metrics() -> None:
    series = {"leader": [-1.0], "near": [-1.4], "far": [-2.0]}
    # slack on |best|: threshold -1 - 1 * 0.5 / 1.5 = -1.333
    assert stopped(BanditPolicy(slack_factor=0.5).evaluate(series, MAX)) == ["near", "far"]
    # minimize: threshold -1.4 + 1.4 * 0.5 = -0.7
    assert stopped(BanditPolicy(slack_factor=0.5).evaluate({"a": [-0.5], "b": [-1.4]}, MIN)) == ["a"]
    assert stopped(BanditPolicy(slack_factor=0.5).evaluate({"a": [-1.0], "b": [-1.4]}, MIN)) == []


def test_delay_evaluation_and_evaluation_interval_are_respected() -> None:
    policy = BanditPolicy(evaluation_interval=2, slack_amount=0.0, delay_evaluation=3)
    assert [policy.evaluation_point(i) for i in range(8)] == [None, None, None, None, 4, 4, 6, 6]
    good, bad = [1.0] * 8, [0.0] * 8
    for length in (1, 2, 3):  # before the delay: nothing, however bad
        assert policy.evaluate({"good": good[:length], "bad": bad[:length]}, MAX) == []
    # interval 4 is the first evaluation; a run at interval 5 is judged at 4
    assert stopped(policy.evaluate({"good": good[:4], "bad": bad[:5]}, MAX)) == ["bad"]
    assert policy.evaluate({"good": good[:4], "bad": bad[:5]}, MAX)[0].compared["interval"] == 4
    # off-interval values do not count: bad is only bad at interval 5, judged at 4
    assert policy.evaluate({"good": good[:5], "bad": [1.0] * 4 + [0.0]}, MAX) == []
    assert BanditPolicy(slack_factor=0.1, delay_evaluation=0).evaluation_point(1) == 1


def test_candidates_limit_who_can_be_stopped_but_everyone_is_a_peer() -> None:
    series = {"finished": [0.9], "running": [0.5], "also-running": [0.85]}
    policy = BanditPolicy(slack_factor=0.1)
    assert stopped(policy.evaluate(series, MAX, candidates=["running", "also-running", "ghost"])) == ["running"]
    assert policy.evaluate(series, MAX, candidates=[]) == []
    with pytest.raises(UsageError, match="candidates"):
        policy.evaluate(series, MAX, candidates="running")


def test_nan_counts_as_the_worst_value() -> None:
    series = {"ok": [0.5], "diverged": [float("nan")]}
    assert stopped(BanditPolicy(slack_factor=0.5).evaluate(series, MAX)) == ["diverged"]
    assert stopped(BanditPolicy(slack_factor=0.5).evaluate(series, MIN)) == ["diverged"]


# --------------------------------------------------------------------------- median


def test_median_stopping_stops_a_run_whose_best_is_below_the_median_of_averages() -> None:
    series = {"a": [0.5, 0.7, 0.9], "b": [0.4, 0.6, 0.8], "c": [0.1, 0.3, 0.4], "d": [0.6, 0.6]}
    decisions = MedianStoppingPolicy().evaluate(series, MAX)
    # at 3: averages a 0.7, b 0.6, c 0.267 -> median 0.6; c's best 0.4 < 0.6
    # at 2: averages a 0.6, b 0.5, c 0.2, d 0.6 -> median 0.55; d's best 0.6 is fine
    assert stopped(decisions) == ["c"]
    assert decisions[0].compared["median"] == pytest.approx(0.6)
    assert decisions[0].compared["best"] == 0.4
    assert MedianStoppingPolicy().evaluate({"alone": [0.0, 0.0]}, MAX) == []


def test_median_stopping_minimize_and_delay() -> None:
    series = {"a": [1.0, 0.5], "b": [1.2, 0.9], "c": [3.0, 2.0]}
    # averages 0.75, 1.05, 2.5 -> median 1.05; c's best 2.0 > 1.05, b's best 0.9 is fine
    assert stopped(MedianStoppingPolicy().evaluate(series, MIN)) == ["c"]
    assert MedianStoppingPolicy(delay_evaluation=3).evaluate(series, MIN) == []
    assert MedianStoppingPolicy(evaluation_interval=3).evaluate(series, MIN) == []


# --------------------------------------------------------------------------- truncation


def test_truncation_stops_the_worst_percentage_at_the_interval() -> None:
    policy = TruncationSelectionPolicy(truncation_percentage=20)
    five = {f"r{i}": [0.1 * i] for i in range(1, 6)}
    decisions = policy.evaluate(five, MAX)
    assert stopped(decisions) == ["r1"]
    assert decisions[0].compared == {"interval": 1, "value": 0.1, "cutoff": 0.2, "truncated": 1, "runs": 5}
    assert stopped(policy.evaluate(five, MIN)) == ["r5"]
    # too few runs for 20% of them to be a whole run
    assert policy.evaluate({k: v for k, v in five.items() if k != "r5"}, MAX) == []
    # 10 runs at 30%: the worst 3
    ten = {f"r{i}": [float(i)] for i in range(10)}
    assert stopped(TruncationSelectionPolicy(30).evaluate(ten, MAX)) == ["r0", "r1", "r2"]


def test_truncation_keeps_ties_with_the_cutoff_and_respects_delay() -> None:
    tied = {"a": [1.0], "b": [1.0], "c": [1.0], "d": [1.0], "e": [2.0]}
    assert TruncationSelectionPolicy(20).evaluate(tied, MAX) == []
    late = {f"r{i}": [float(i), float(i)] for i in range(5)}
    assert TruncationSelectionPolicy(20, delay_evaluation=3).evaluate(late, MAX) == []
    assert stopped(TruncationSelectionPolicy(20, delay_evaluation=2).evaluate(late, MAX)) == ["r0"]


def test_no_termination_policy_never_stops() -> None:
    assert NoTerminationPolicy().evaluate({"a": [1.0], "b": [0.0]}, MAX) == []


# --------------------------------------------------------------------------- validation, serialization


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of slack_factor and slack_amount"),
        ({"slack_factor": 0.1, "slack_amount": 0.1}, "exactly one"),
        ({"slack_factor": -0.1}, "slack_factor must be"),
        ({"slack_amount": float("inf")}, "slack_amount must be"),
        ({"slack_factor": 0.1, "evaluation_interval": 0}, "evaluation_interval"),
        ({"slack_factor": 0.1, "delay_evaluation": -1}, "delay_evaluation"),
    ],
)
def test_bandit_validates(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        BanditPolicy(**kwargs)


def test_other_policies_validate() -> None:
    for pct in (0, 100, 12.5):
        with pytest.raises(UsageError, match="truncation_percentage"):
            TruncationSelectionPolicy(pct)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="evaluation_interval"):
        MedianStoppingPolicy(evaluation_interval=1.5)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="goal"):
        MedianStoppingPolicy().evaluate({}, "best")
    with pytest.raises(UsageError, match="non-number"):
        MedianStoppingPolicy().evaluate({"a": ["high"]}, MAX)  # type: ignore[list-item]


def test_policies_round_trip_through_json() -> None:
    policies = [
        NoTerminationPolicy(),
        BanditPolicy(evaluation_interval=2, slack_factor=0.1, delay_evaluation=5),
        BanditPolicy(slack_amount=0.2),
        MedianStoppingPolicy(evaluation_interval=3, delay_evaluation=1),
        TruncationSelectionPolicy(truncation_percentage=25, evaluation_interval=2, delay_evaluation=4),
    ]
    for policy in policies:
        data = json.loads(json.dumps(policy.to_dict()))
        assert policy_from_dict(data) == policy
        assert type(policy).from_dict(data) == policy
    assert policy_from_dict(None) == NoTerminationPolicy()
    with pytest.raises(UsageError, match="unknown early termination policy"):
        policy_from_dict({"type": "hyperband"})
    with pytest.raises(UsageError, match="median_stopping early termination policy: slack_factor is not a known field"):
        policy_from_dict({"type": "median_stopping", "slack_factor": 0.1})
    with pytest.raises(UsageError, match="expected a bandit policy"):
        BanditPolicy.from_dict({"type": "median_stopping"})
