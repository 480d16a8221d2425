"""The sweep driver's decision (plan_step) and result ranking: pure functions, no servers."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest

from cluster.records import RunError, RunRecord, RunStatus
from cluster.sweep import (
    BanditPolicy,
    GridParameterSampling,
    NoTerminationPolicy,
    RandomParameterSampling,
    choice,
    uniform,
)
from cluster.sweep.config import SweepSpec
from cluster.sweep.driver import StepPlan, plan_step
from cluster.sweep.state import ChildInfo, build_summary, child_rows

RC = {"source_directory": "/src", "entry_script": "train.py", "arguments": [], "pool": "p"}


def spec_of(sampling: Any, policy: Any = None, **kw: Any) -> SweepSpec:
    base: dict[str, Any] = {"sampling": sampling.to_dict(), "policy": (policy or NoTerminationPolicy()).to_dict(),
                            "primary_metric_name": "acc", "primary_metric_goal": "maximize", "max_total_runs": 6,
                            "max_concurrent_runs": 2, "max_duration_minutes": 60.0, "goal_threshold": None,
                            "run_config": RC, "created": 0.0}
    return SweepSpec(**{**base, **kw})


def plan(spec: SweepSpec, children: list[ChildInfo], intents: dict[int, dict[str, Any]], *,
         cancel: bool = False, now: float = 1.0) -> StepPlan:
    return plan_step(spec, children, intents, cancel_requested=cancel, now=now)


class World:
    """Children that run one step and then finish with ``value(params)`` (or fail if it returns None)."""

    def __init__(self, spec: SweepSpec, value: Any) -> None:
        self.spec, self.value = spec, value
        self.children: list[ChildInfo] = []
        self.intents: dict[int, dict[str, Any]] = {}
        self.peak = 0

    def step(self, *, submit: bool = True) -> StepPlan:
        p = plan(self.spec, self.children, self.intents)
        for index, params in p.new_intents:
            assert index not in self.intents
            self.intents[index] = params
        if submit:
            for index in p.submit:
                assert all(c.index != index for c in self.children), "an index got a second child"
                self.children.append(ChildInfo(f"c{index}", index, self.intents[index], RunStatus.QUEUED))
        self.peak = max(self.peak, sum(not c.final for c in self.children))
        self.children = [self._advance(c) for c in self.children]
        return p

    def _advance(self, c: ChildInfo) -> ChildInfo:
        if c.status is RunStatus.QUEUED:
            return replace(c, status=RunStatus.RUNNING)
        if c.status is RunStatus.RUNNING:
            v = self.value(c.params)
            return replace(c, status=RunStatus.FAILED if v is None else RunStatus.COMPLETED,
                           series=() if v is None else (float(v),))
        return c

    def run(self, limit: int = 100) -> StepPlan:
        for _ in range(limit):
            p = self.step()
            if p.finish is not None:
                return p
        raise AssertionError("the sweep never finished")


def test_grid_runs_every_combination_once_within_concurrency() -> None:
    spec = spec_of(GridParameterSampling({"--a": choice(1, 2), "--b": choice(1, 2, 3)}), max_total_runs=10)
    world = World(spec, lambda p: p["--a"] * p["--b"])
    final = world.run()
    assert final.finish is RunStatus.COMPLETED and "grid is exhausted" in final.reason
    combos = sorted((c.params["--a"], c.params["--b"]) for c in world.children)
    assert combos == sorted(itertools.product((1, 2), (1, 2, 3)))
    assert world.peak <= 2
    assert sorted(c.index for c in world.children) == list(range(6))


def test_random_children_follow_the_seeded_sequence() -> None:
    sampling = RandomParameterSampling({"--x": uniform(0, 1)}, seed=11)
    world = World(spec_of(sampling, max_total_runs=5, max_concurrent_runs=3), lambda p: p["--x"])
    world.run()
    assert [world.intents[i] for i in range(5)] == sampling.next_samples([], 5)
    assert world.peak <= 3


def test_pending_intents_are_submitted_before_sampling_more() -> None:
    """A crash between writing intents and submitting: the same parameters, once, no new samples."""
    spec = spec_of(RandomParameterSampling({"--x": uniform(0, 1)}, seed=1), max_concurrent_runs=2)
    world = World(spec, lambda p: p["--x"])
    world.step(submit=False)  # intents 0 and 1 written, then the controller "died"
    assert sorted(world.intents) == [0, 1] and world.children == []
    again = plan(spec, [], world.intents)
    assert again.new_intents == () and again.submit == (0, 1)
    # one child got submitted before the crash: only the other one is
    child0 = ChildInfo("c0", 0, world.intents[0], RunStatus.QUEUED)
    again = plan(spec, [child0], world.intents)
    assert again.submit == (1,) and again.new_intents == ()


def test_failed_children_count_and_do_not_stop_the_sweep() -> None:
    world = World(spec_of(GridParameterSampling({"--a": choice(1, 2, 3, 4)}), max_total_runs=4),
                  lambda p: None if p["--a"] == 2 else p["--a"])
    final = world.run()
    assert final.finish is RunStatus.COMPLETED
    assert [c.status for c in world.children].count(RunStatus.FAILED) == 1


def test_every_child_failing_fails_the_sweep() -> None:
    world = World(spec_of(GridParameterSampling({"--a": choice(1, 2)})), lambda p: None)
    final = world.run()
    assert final.finish is RunStatus.FAILED and "every child run failed" in final.reason


def test_goal_threshold_cancels_the_rest_then_completes() -> None:
    spec = spec_of(GridParameterSampling({"--a": choice(1, 2, 3)}), goal_threshold=0.9)
    done = ChildInfo("c0", 0, {"--a": 1}, RunStatus.COMPLETED, series=(0.95,))
    running = ChildInfo("c1", 1, {"--a": 2}, RunStatus.RUNNING, series=(0.2,))
    p = plan(spec, [done, running], {0: {"--a": 1}, 1: {"--a": 2}})
    assert p.ending == "goal_threshold" and p.cancel == ("c1",) and p.finish is None and p.submit == ()
    p = plan(spec, [done, replace(running, status=RunStatus.CANCELED)], {0: {"--a": 1}, 1: {"--a": 2}})
    assert p.finish is RunStatus.COMPLETED and "goal threshold" in p.reason


def test_max_duration_cancels_then_completes() -> None:
    spec = spec_of(GridParameterSampling({"--a": choice(1, 2, 3)}), max_duration_minutes=1.0, created=100.0)
    running = ChildInfo("c0", 0, {"--a": 1}, RunStatus.RUNNING)
    assert plan(spec, [running], {0: {"--a": 1}}, now=150.0).cancel == ()
    p = plan(spec, [running], {0: {"--a": 1}}, now=161.0)
    assert p.ending == "max_duration" and p.cancel == ("c0",)
    p = plan(spec, [replace(running, status=RunStatus.CANCELED)], {0: {"--a": 1}}, now=161.0)
    assert p.finish is RunStatus.COMPLETED


def test_cancel_request_cancels_everything_and_ends_canceled() -> None:
    spec = spec_of(GridParameterSampling({"--a": choice(1, 2, 3)}))
    kids = [ChildInfo("c0", 0, {"--a": 1}, RunStatus.RUNNING), ChildInfo("c1", 1, {"--a": 2}, RunStatus.QUEUED)]
    p = plan(spec, kids, {0: {"--a": 1}, 1: {"--a": 2}, 2: {"--a": 3}}, cancel=True)
    assert set(p.cancel) == {"c0", "c1"} and p.submit == () and p.new_intents == ()
    p = plan(spec, [replace(k, status=RunStatus.CANCELED) for k in kids], {0: {"--a": 1}, 1: {"--a": 2}}, cancel=True)
    assert p.finish is RunStatus.CANCELED


def test_bandit_stops_only_running_unstopped_children() -> None:
    spec = spec_of(GridParameterSampling({"--a": choice(1, 2, 3)}),
                   policy=BanditPolicy(evaluation_interval=1, slack_factor=0.1), max_concurrent_runs=3)
    good = ChildInfo("c0", 0, {"--a": 1}, RunStatus.RUNNING, series=(0.9, 0.95))
    lag = ChildInfo("c1", 1, {"--a": 2}, RunStatus.RUNNING, series=(0.1, 0.1))
    queued = ChildInfo("c2", 2, {"--a": 3}, RunStatus.QUEUED)
    intents = {0: {"--a": 1}, 1: {"--a": 2}, 2: {"--a": 3}}
    p = plan(spec, [good, lag, queued], intents)
    assert [d.run_id for d in p.stop] == ["c1"]
    assert p.stop[0].policy == "BanditPolicy" and p.stop[0].compared["best"] == 0.95
    p = plan(spec, [good, replace(lag, stopped={"by": "BanditPolicy"}), queued], intents)
    assert p.stop == ()


def test_concurrency_counts_queued_and_stopping_children() -> None:
    spec = spec_of(RandomParameterSampling({"--x": uniform(0, 1)}, seed=2), max_concurrent_runs=2)
    kids = [ChildInfo("c0", 0, {}, RunStatus.QUEUED), ChildInfo("c1", 1, {}, RunStatus.RUNNING, stopped={"by": "x"})]
    assert plan(spec, kids, {0: {}, 1: {}}).submit == ()
    kids[1] = replace(kids[1], status=RunStatus.CANCELED)
    p = plan(spec, kids, {0: {}, 1: {}})
    assert [i for i, _ in p.new_intents] == [2] and p.submit == (2,)


def _record(run_id: str, status: RunStatus, error: str | None = None) -> RunRecord:
    rec = RunRecord(run_id=run_id, experiment="e", status=RunStatus.QUEUED, prefix=f"x/{run_id}/")
    rec = rec.with_status(RunStatus.PREPARING, at=10.0).with_status(RunStatus.RUNNING, at=10.0)
    if status is RunStatus.COMPLETED:
        rec = rec.with_status(RunStatus.FINALIZING, at=12.5)
    return rec.with_status(status, at=12.5, error=RunError(kind="user", message=error) if error else None)


def test_ranking_never_mixes_in_failed_stopped_or_silent_children() -> None:
    kids = [
        ChildInfo("a", 0, {"--x": 1}, RunStatus.COMPLETED, series=(0.5, 0.7), record=_record("a", RunStatus.COMPLETED)),
        ChildInfo("b", 1, {"--x": 2}, RunStatus.FAILED, series=(0.99,), record=_record("b", RunStatus.FAILED, "boom")),
        ChildInfo("c", 2, {"--x": 3}, RunStatus.COMPLETED, series=(), record=_record("c", RunStatus.COMPLETED)),
        ChildInfo("d", 3, {"--x": 4}, RunStatus.CANCELED, series=(0.2,), stopped={"by": "BanditPolicy"},
                  record=_record("d", RunStatus.CANCELED)),
        ChildInfo("e", 4, {"--x": 5}, RunStatus.COMPLETED, series=(0.8,), record=_record("e", RunStatus.COMPLETED)),
    ]
    rows = child_rows(kids, "maximize", "acc")
    assert [r["run_id"] for r in rows] == ["e", "a", "b", "c", "d"]
    assert [r["rank"] for r in rows] == [1, 2, None, None, None]
    assert rows[1]["best_primary_metric"] == 0.7 and rows[1]["duration_seconds"] == 2.5
    assert rows[2]["note"] == "failed: boom" and rows[3]["note"] == "never reported 'acc'"
    assert rows[4]["note"] == "stopped by BanditPolicy" and rows[4]["stopped_by"] == {"by": "BanditPolicy"}
    low = child_rows(kids, "minimize", "acc")
    assert [r["run_id"] for r in low if r["ranked"]] == ["a", "e"]

    spec = spec_of(GridParameterSampling({"--x": choice(1, 2, 3, 4, 5)}))
    parent = _record("p", RunStatus.COMPLETED)
    summary = build_summary(spec, parent, kids, end_reason="done")
    assert summary["best"] == {"run_id": "e", "value": 0.8, "hyperparameters": {"--x": 5}}
    assert summary["counts"]["children"] == 5 and summary["counts"]["stopped_early"] == 1
    assert summary["counts"]["Failed"] == 1 and summary["end_reason"] == "done"


@pytest.mark.parametrize("values", [[], [float("nan")]])
def test_no_metric_means_no_best(values: list[float]) -> None:
    kids = [ChildInfo("a", 0, {}, RunStatus.COMPLETED, series=tuple(values))]
    rows = child_rows(kids, "maximize", "acc")
    assert not rows[0]["ranked"] and rows[0]["best_primary_metric"] is None
