"""Lua scripts for Redis live in ``.lua`` files, in a ``lua/`` folder next to the module that runs them (package
data: see ``[tool.setuptools.package-data]``); this reads one."""

from __future__ import annotations

from importlib import resources


def read(package: str, name: str) -> str:
    """The text of ``<package>/lua/<name>``."""
    return resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
