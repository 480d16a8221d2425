"""docs/porting.md's snippets run as written (issue 13): each ```python block under "Snippets, tested" is Azure
ML v1 code with only the imports changed; they run in order, in one namespace, from an empty folder, against the
session's embedded cluster (its controller scales the pool the first snippet creates)."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest

from cluster import IgnoredArgumentWarning
from tests.helpers import unique

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOC = Path(__file__).resolve().parents[2] / "docs" / "porting.md"


def snippets() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    tested = text.split("## Snippets, tested", 1)[1]
    return re.findall(r"```python\n(.*?)```", tested, flags=re.S)


def test_the_doc_has_snippets() -> None:
    blocks = snippets()
    assert len(blocks) >= 6
    assert not any("azureml" in line for b in blocks for line in b.splitlines() if line.startswith(("from", "import")))


def test_porting_snippets_run_as_written(cluster_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for key in [k for k in os.environ if k.startswith("CLUSTER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CLUSTER_CONFIG", str(cluster_dir / "config.json"))
    pool = unique("porting")
    monkeypatch.setenv("AML_COMPUTE_CLUSTER_NAME", pool)
    monkeypatch.setenv("AML_COMPUTE_CLUSTER_MAX_NODES", "2")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__porting__"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, block in enumerate(snippets()):
            try:
                exec(compile(block, f"docs/porting.md snippet {i + 1}", "exec"), namespace)
            except Exception as e:
                pytest.fail(f"snippet {i + 1} of docs/porting.md failed: {type(e).__name__}: {e}\n{block}")
    ignored = [w for w in caught if issubclass(w.category, IgnoredArgumentWarning)]
    assert [str(w.message).split(":")[1].split("=")[0].strip() for w in ignored] == ["vm_priority"]
    others = [w for w in caught if not issubclass(w.category, IgnoredArgumentWarning)]
    assert not others, [str(w.message) for w in others]
    out = capsys.readouterr().out
    assert "SDK version:" in out and "Status: Completed" in out
    run, best, again = namespace["run"], namespace["best"], namespace["again"]
    assert run.get_status() == "Completed"  # type: ignore[attr-defined]
    assert [c.get_status() for c in run.get_children()] == ["Completed"] * 3  # type: ignore[attr-defined]
    assert again.get_metrics()["C"] == 2.0  # type: ignore[attr-defined]
    assert again.get_properties()["resubmitted_from"] == best.id  # type: ignore[attr-defined]
    assert (tmp_path / "azureml-models" / "digits-model").is_dir()
    from cluster.widgets import RunDetails

    sweep_view = RunDetails(namespace["hd_run"]).get_html()  # a sweep: its children, best first
    assert "Children" in sweep_view and best.id in sweep_view and "Completed" in sweep_view  # type: ignore[attr-defined]
    namespace["compute_target"].delete()  # type: ignore[attr-defined]  # later tests see no stray target
