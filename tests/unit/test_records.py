"""The run record's commit: which attempt's folder readers see."""

from cluster import layout
from cluster.records import RunRecord, RunStatus


def _record(**changes: object) -> RunRecord:
    return RunRecord(run_id="r1", experiment="e", status=RunStatus.RUNNING,
                     prefix=layout.run_prefix("e", "r1"), **changes)  # type: ignore[arg-type]


def test_committed_attempt_names_the_visible_folder() -> None:
    rec = _record(attempt=3, committed=2)
    assert rec.files_prefix == "experiments/e/runs/r1/attempts/2/"
    assert RunRecord.from_dict(rec.to_dict()).committed == 2  # survives run.json


def test_uncommitted_and_older_records_use_the_run_folder() -> None:
    assert _record(attempt=1).files_prefix == "experiments/e/runs/r1/"
    old = {k: v for k, v in _record(attempt=1).to_dict().items() if k != "committed"}  # stored before commits
    assert RunRecord.from_dict(old).files_prefix == "experiments/e/runs/r1/"
