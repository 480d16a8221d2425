"""Small typed validators for configuration objects, shared by the SDK and the CLI.

Every user-facing object (Estimator, ScriptRunConfig, compute targets, datastores, models, sweeps) and every
CLI command checks its input with these, at construction, so a mistake is reported where it is made and the
SDK and the CLI cannot disagree: both raise the same :class:`~cluster.errors.UsageError` with the same words.

Each validator takes ``what`` (how the value is named in the message, e.g. ``"max_run_duration_seconds"``)
and returns the value in its canonical type.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

from cluster.datareference import DataReference
from cluster.errors import UsageError
from cluster.layout import check_name
from cluster.schema import python_scalar, shown

__all__ = [
    "Packages",
    "StringMap",
    "check_kwargs",
    "field_check",
    "finite_number",
    "local_dir_target",
    "name",
    "package_list",
    "path_like",
    "positive_number",
    "run_id",
    "script_value",
    "string_list",
    "string_map",
    "text",
    "whole_number",
]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_number(what: str, value: Any) -> float:
    """A real number that is neither NaN nor infinite (bools and numeric strings are refused)."""
    value = python_scalar(value)
    if not _is_number(value):
        hint = f"write {value.strip()} without quotes" if isinstance(value, str) and _numeric(value) else None
        raise UsageError(f"{what} must be a number, got {shown(value)} ({type(value).__name__})", hint=hint)
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise UsageError(f"{what} is too large: {shown(value)}") from None
    if not math.isfinite(number):
        raise UsageError(f"{what} must be a finite number, got {value!r}")
    return number


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def positive_number(what: str, value: Any) -> float:
    """A finite number > 0."""
    number = finite_number(what, value)
    if number <= 0:
        raise UsageError(f"{what} must be positive, got {value!r}",
                         hint=f"leave {what} out (None) for no limit" if "seconds" in what else None)
    return number


def whole_number(what: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (numpy ints accepted; bools, floats and strings refused) within the given bounds."""
    value = python_scalar(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{what} must be a whole number, got {shown(value)} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise UsageError(f"{what} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{what} must be at most {maximum}, got {value}")
    return int(value)


def text(what: str, value: Any, *, empty: bool = False) -> str:
    """A string (non-empty unless ``empty``), without NUL or line breaks."""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a string, got {shown(value)} ({type(value).__name__})")
    if not empty and not value.strip():
        raise UsageError(f"{what} must not be empty")
    if any(c in value for c in "\0\n\r"):
        raise UsageError(f"{what} must not contain a NUL or a line break, got {value!r}")
    return value


def name(kind: str, value: Any) -> str:
    """A user-chosen name that is safe as a path segment (experiment, model, pool)."""
    return check_name(kind, value)


_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")


def run_id(value: Any) -> str:
    """A run id as the cluster makes them (``<experiment>_<ms>_<hex>``): safe as a key, never a path."""
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value) or ".." in value:
        raise UsageError(f"invalid run id {value!r}",
                         hint="run ids look like 'my-experiment_1717171717171_1a2b3c4d'; list them with "
                         "`cluster runs list` or experiment.get_runs()")
    return value


def string_list(what: str, value: Any) -> tuple[str, ...]:
    """A list/tuple of non-empty strings; None is empty. A single string is refused, never split into letters."""
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        raise UsageError(f"{what} must be a list of strings, got the string {shown(value)}",
                         hint=f"write {what}=[{value!r}]" if isinstance(value, str) else None)
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise UsageError(f"{what} must be a list of strings, got {shown(value)} ({type(value).__name__})")
    items = list(value)
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"{what}: every entry must be a non-empty string, got {shown(item)}")
        text(f"{what} entry", item)
    return tuple(items)


def package_list(what: str, value: Any) -> tuple[str, ...]:
    """Package requirements (``'numpy>=1.26'``): a list of strings, none of them a pip option."""
    items = tuple(p.strip() for p in string_list(what, value))
    for p in items:
        if p.startswith("-"):
            raise UsageError(f"{what}: {p!r} is a pip option, not a package",
                             hint="give package requirements only, like 'numpy>=1.26'")
    return items


def string_map(what: str, value: Any, *, keys: str = "name") -> dict[str, str]:
    """A mapping of string keys to strings, numbers or bools (values become strings); None is empty."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"{what} must be a mapping of {keys} -> value, got {shown(value)} "
                         f"({type(value).__name__})", hint=f"e.g. {what}={{'SEED': '7'}}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not k or "=" in k or "\0" in k:
            raise UsageError(f"{what}: {shown(k)} is not a valid {keys}")
        v = python_scalar(v)
        if not isinstance(v, str | int | float | bool):
            raise UsageError(f"{what}: the value of {k!r} must be a string or a number, got {shown(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise UsageError(f"{what}: the value of {k!r} must be finite, got {v!r}")
        if isinstance(v, str) and "\0" in v:
            raise UsageError(f"{what}: the value of {k!r} contains a NUL character")
        out[k] = str(v)
    return out


def script_value(what: str, value: Any) -> Any:
    """One script argument: a string, a number (finite), a bool or a data reference (as its dict)."""
    if isinstance(value, DataReference):
        return value.to_dict()
    if DataReference.is_reference(value):  # already in its stored form
        return DataReference.from_dict(value).to_dict()
    value = python_scalar(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{what}: {value!r} is not a usable value (NaN or infinite)",
                         hint="pass a finite number, or the string 'nan'/'inf' if the script really expects it")
    if isinstance(value, str) and "\0" in value:
        raise UsageError(f"{what}: a script argument cannot contain a NUL character")
    if isinstance(value, bool | int | float | str):
        return value
    raise UsageError(f"{what}: cannot pass {shown(value)} ({type(value).__name__}) as a script argument",
                     hint="use strings, numbers, booleans or data references (ds.as_mount())")


def path_like(what: str, value: Any) -> Path:
    """A local path given as a string or os.PathLike."""
    if isinstance(value, str) and value.strip():
        return Path(value)
    if isinstance(value, os.PathLike):
        return Path(value)
    raise UsageError(f"{what} must be a path (a string or pathlib.Path), got {shown(value)}")


def local_dir_target(what: str, value: Any) -> Path:
    """A local folder to write into: it may not exist yet, but it must not be an existing file."""
    path = path_like(what, value)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{what} {str(path)!r} is an existing file, not a folder",
                         hint="pass a folder (it is created if missing), or move the file away")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {str(path)!r} is inside {str(parent)!r}, which is a file")
            break
    return path


def check_kwargs(where: str, given: Mapping[str, Any], *, known: Iterable[str],
                 ignored: Mapping[str, Any] | None = None, noun: str = "argument") -> None:
    """Refuse keyword arguments ``where`` does not take, with a "did you mean" hint for near misses.

    ``known`` are the accepted names (used for suggestions). ``ignored`` maps names Azure ML accepts but this
    cluster does not implement to their harmless default: passing that default is fine, anything else is an
    error (the setting would silently not apply).
    """
    ignored = dict(ignored or {})
    known = [*known, *ignored]
    unknown = [k for k in given if k not in known]
    if unknown:
        parts = []
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
            parts.append(repr(k))
            if close:
                hints.append(f"did you mean {close[0]!r} instead of {k!r}?")
        raise UsageError(f"{where}: unknown {noun}(s) {', '.join(parts)}",
                         hint=" ".join(hints) or f"accepted: {', '.join(sorted(known))}")
    unsupported = [k for k, v in given.items() if k in ignored and v is not None and v != ignored[k]]
    if unsupported:
        raise UsageError(f"{where}: unsupported argument(s) {', '.join(unsupported)}: this cluster does not "
                         "implement them", hint="leave them out (the setting would have no effect here)")


def warn_ignored(where: str, given: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Azure ML arguments that mean nothing on this cluster (``use_gpu``, ``vm_priority``, ...): one warning each
    (:class:`~cluster.errors.IgnoredArgumentWarning`; none for None / False, Azure's defaults), then dropped.
    Returns the other arguments, unchanged."""
    import warnings

    from cluster.errors import IgnoredArgumentWarning

    names = set(names)
    for k in given:
        if k in names and given[k] is not None and given[k] is not False:  # Azure's own defaults say nothing
            warnings.warn(f"{where}: {k}={shown(given[k])} is an Azure ML argument with no meaning on this cluster; "
                          "ignored (docs/porting.md lists them)", IgnoredArgumentWarning, stacklevel=3)
    return {k: v for k, v in given.items() if k not in names}


# --------------------------------------------------------------------------- as record field types


def field_check(check: Callable[[str, Any], Any]) -> BeforeValidator:
    """One of the checks above as a record field's validator (cluster/schema.py), named after the field in its
    messages: the SDK's arguments and the records they become are checked by the same code."""
    def validate(value: Any, info: ValidationInfo) -> Any:
        return check(info.field_name or "value", value)

    return BeforeValidator(validate)


#: package requirements (``'numpy>=1.26'``), never a pip option; a single string is refused
Packages = Annotated[tuple[str, ...], field_check(package_list)]
#: names to strings (numbers and bools become strings); None is empty
StringMap = Annotated[dict[str, str], field_check(string_map)]
