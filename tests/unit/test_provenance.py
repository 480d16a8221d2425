"""tasks.provenance: the package list a node records for each run (environment.json), read from the
distributions' folder names (no METADATA parsing on the common path)."""

from __future__ import annotations

import sys
from pathlib import Path

from tasks import provenance


def test_installed_reads_names_and_versions_from_folder_names(tmp_path: Path) -> None:
    (tmp_path / "scikit_learn-1.5.0.dist-info").mkdir()
    (tmp_path / "Typing.Extensions-4.12.2.dist-info").mkdir()
    (tmp_path / "numpy").mkdir()  # a package, not its metadata
    old = tmp_path / "legacy.egg-info"  # no version in the name: read from its PKG-INFO
    old.mkdir()
    (old / "PKG-INFO").write_text("Metadata-Version: 1.0\nName: Legacy_Tool\nVersion: 0.3\n")
    broken = tmp_path / "broken.egg-info"  # nothing readable: skipped, never fatal
    broken.mkdir()
    assert sorted(provenance._installed(str(tmp_path))) == [
        ("legacy-tool", "0.3"), ("scikit-learn", "1.5.0"), ("typing-extensions", "4.12.2")]
    assert provenance._installed(str(tmp_path / "missing")) == []


def test_frozen_lists_this_interpreters_packages_once_sorted() -> None:
    version, lines = provenance.frozen(sys.executable)
    assert version == f"{sys.version_info[0]}.{sys.version_info[1]}"
    names = [line.split("==", 1)[0] for line in lines]
    assert names == sorted(set(names)) and {"numpy", "scikit-learn", "pydantic"} <= set(names)
    assert all("==" in line and line.split("==", 1)[1] for line in lines)
