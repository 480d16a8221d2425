"""The run state machine (records.TRANSITIONS) is enforced on every status change."""

from __future__ import annotations

import pytest

from cluster.errors import TransitionError
from cluster.records import (
    FINAL_STATUSES,
    KIND_SWEEP,
    SWEEP_TRANSITIONS,
    TRANSITIONS,
    RunRecord,
    RunStatus,
    can_transition,
)


def _record(status: RunStatus = RunStatus.QUEUED, **tags: str) -> RunRecord:
    return RunRecord(run_id="e_1_a", experiment="e", status=status, prefix="p/", tags=dict(tags))


def test_the_node_path_is_allowed_and_stamped() -> None:
    rec = _record()
    for i, status in enumerate((RunStatus.PREPARING, RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.COMPLETED)):
        rec = rec.with_status(status, at=100.0 + i)
    assert rec.status is RunStatus.COMPLETED
    assert list(rec.timestamps) == ["Preparing", "Running", "Finalizing", "Completed"]


@pytest.mark.parametrize("final", sorted(FINAL_STATUSES))
def test_a_finished_run_stays_finished(final: RunStatus) -> None:
    rec = _record(final)
    for status in RunStatus:
        if status is not final:
            with pytest.raises(TransitionError, match=f"{final.value} -> {status.value}"):
                rec.with_status(status)
    assert rec.with_status(final).status is final  # staying put is no change


def test_skipping_the_node_phases_is_refused() -> None:
    for status in (RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.COMPLETED):
        with pytest.raises(TransitionError):
            _record().with_status(status)
    with pytest.raises(TransitionError):
        _record(RunStatus.PREPARING).with_status(RunStatus.COMPLETED)


def test_retries_and_takeovers_from_every_live_state() -> None:
    for live in (RunStatus.PREPARING, RunStatus.RUNNING, RunStatus.FINALIZING):
        assert _record(live).with_status(RunStatus.QUEUED).status is RunStatus.QUEUED  # node lost / stopping
        assert _record(live).with_status(RunStatus.PREPARING).status is RunStatus.PREPARING  # a new attempt


def test_a_sweep_parent_has_its_own_machine() -> None:
    parent = _record(kind=KIND_SWEEP).with_status(RunStatus.RUNNING).with_status(RunStatus.COMPLETED)
    assert parent.status is RunStatus.COMPLETED
    with pytest.raises(TransitionError, match="sweep"):
        _record(kind=KIND_SWEEP).with_status(RunStatus.PREPARING)
    assert not can_transition(RunStatus.COMPLETED, RunStatus.RUNNING, sweep=True)


def test_the_tables_cover_every_status() -> None:
    assert set(TRANSITIONS) == set(RunStatus) == set(SWEEP_TRANSITIONS)
    assert all(not TRANSITIONS[s] and not SWEEP_TRANSITIONS[s] for s in FINAL_STATUSES)

