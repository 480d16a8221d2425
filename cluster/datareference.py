"""Data references: a datastore path plus how a node should make it visible to the script.

``ds.as_mount()`` / ``ds.path('mnist').as_mount()`` / ``ds.as_download()`` return one of these. They are
small, frozen and JSON-serializable; a node resolves them to a local path when the run starts.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, get_args

from cluster.errors import PayloadError, UsageError
from cluster.schema import Record, record

Mode = Literal["mount", "download"]
MODES: tuple[str, ...] = get_args(Mode)


@record
class DataReference(Record):
    """``datastore:/path_on_datastore`` and how a node makes it visible (``mount`` or ``download``)."""

    __what__ = "data reference"

    datastore: str
    path_on_datastore: str = ""
    mode: Mode = "mount"
    path_on_compute: str | None = None

    def __post_init__(self) -> None:
        if self.path_on_compute is not None and not self.path_on_compute.strip():
            raise UsageError("data reference: path_on_compute must not be empty",
                             hint="leave it out (None) to let the node choose the folder")
        clean = self.path_on_datastore.strip("/")
        if any(part == ".." for part in clean.split("/")):
            raise UsageError(f"datastore path {self.path_on_datastore!r} may not contain '..'")
        object.__setattr__(self, "path_on_datastore", clean)

    def as_mount(self) -> DataReference:
        return replace(self, mode="mount", path_on_compute=None)

    def as_download(self, path_on_compute: str | None = None) -> DataReference:
        return replace(self, mode="download", path_on_compute=path_on_compute)

    def path(self, path: str) -> DataReference:
        if not isinstance(path, str):
            raise UsageError(f"data reference path must be a string, got {type(path).__name__}")
        joined = "/".join(p for p in (self.path_on_datastore, path.strip("/")) if p)
        return replace(self, path_on_datastore=joined)

    def to_dict(self) -> dict[str, Any]:
        """The form stored in a run's arguments: the fields, tagged ``kind: data_reference``."""
        return {"kind": "data_reference", **super().to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> DataReference:
        if not cls.is_reference(data):
            raise PayloadError(f"not a data reference: {data!r:.80}")
        return super().from_dict(data)

    @staticmethod
    def is_reference(value: Any) -> bool:
        return isinstance(value, dict) and value.get("kind") == "data_reference"

    def __str__(self) -> str:
        where = f"{self.datastore}:/{self.path_on_datastore}"
        extra = f" -> {self.path_on_compute}" if self.path_on_compute else ""
        return f"$DATAREF[{self.mode} {where}{extra}]"

    def __repr__(self) -> str:
        return (f"DataReference(datastore={self.datastore!r}, path={self.path_on_datastore!r}, mode={self.mode!r}"
                + (f", path_on_compute={self.path_on_compute!r})" if self.path_on_compute else ")"))


def display_argument(arg: Any) -> str:
    """A run argument as a record shows it: a data reference as its text form, anything else as ``str``."""
    return str(DataReference.from_dict(arg)) if DataReference.is_reference(arg) else str(arg)
