"""cluster/schema.py, the one validation layer: records checked by their annotations, errors in the project's
words, the JSON form both ways, and validation.py's checks as field validators."""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from typing import Annotated

import numpy as np
import pytest
from pydantic import Field

from cluster import validation
from cluster.errors import ConfigError, PayloadError, UsageError
from cluster.schema import Record, Seconds, WholeNumber, dump, load, record


class Color(StrEnum):
    RED = "red"
    BLUE = "blue"


@record
class Inner(Record):
    label: str
    sizes: tuple[int, ...] = ()


@record
class Sample(Record):
    __what__ = "sample {name!r}"

    name: str
    count: Annotated[WholeNumber, Field(ge=1)] = 1
    wait: Seconds = 0.0
    color: Color = Color.RED
    inner: Inner | None = None
    packages: validation.Packages = ()

    def __post_init__(self) -> None:
        if self.name == "forbidden":
            raise UsageError("sample 'forbidden': that name is taken")


@record
class Configured(Record):
    __load_error__ = ConfigError

    url: str


def test_a_bad_field_names_the_record_the_field_the_rule_and_the_value() -> None:
    with pytest.raises(UsageError, match=r"^sample 'a': count must be at least 1, got 0$"):
        Sample("a", 0)  # positional: named after the field all the same
    with pytest.raises(UsageError, match=r"sample 'a': count must be a whole number, got True \(bool\)"):
        Sample("a", count=True)
    with pytest.raises(UsageError, match=r"count must be a whole number, got '3' \(str\)"):
        Sample("a", count="3")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"wait must be a finite number, got nan"):
        Sample("a", wait=float("nan"))
    with pytest.raises(UsageError, match=r"color must be one of 'red' or 'blue', got 'green'"):
        Sample("a", color="green")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="that name is taken"):  # a rule in __post_init__ keeps its own words
        Sample("forbidden")


def test_a_misspelt_field_gets_a_did_you_mean() -> None:
    with pytest.raises(UsageError) as info:
        Sample("a", cuont=2)  # type: ignore[call-arg]
    assert info.value.message == "sample 'a': cuont is not a known field"
    assert info.value.hint == "did you mean 'count' instead of 'cuont'?"


def test_numpy_scalars_are_numbers_and_field_checks_reuse_validation() -> None:
    s = Sample("a", count=np.int64(3), wait=np.float64(0.5), packages=[" numpy>=1.26 "])
    assert (s.count, type(s.count), s.wait, s.packages) == (3, int, 0.5, ("numpy>=1.26",))
    with pytest.raises(UsageError, match="packages: '--index-url=x' is a pip option, not a package"):
        Sample("a", packages=["--index-url=x"])
    with pytest.raises(UsageError, match="packages must be a list of strings, got the string 'numpy'"):
        Sample("a", packages="numpy")  # type: ignore[arg-type]


def test_json_form_round_trips_and_replace_revalidates() -> None:
    s = Sample("a", count=2, color=Color.BLUE, inner=Inner("x", (1, 2)))
    data = s.to_dict()
    assert data == {"name": "a", "count": 2, "wait": 0.0, "color": "blue", "inner": {"label": "x", "sizes": [1, 2]},
                    "packages": []}
    assert dump(s) == data and Sample.from_dict(data) == s
    assert Sample.from_dict({**data, "added_by_a_newer_writer": 1}) == s  # unknown keys are ignored
    with pytest.raises(UsageError, match="count must be at least 1"):
        replace(s, count=0)


def test_a_bad_payload_is_the_classes_load_error() -> None:
    with pytest.raises(PayloadError, match=r"sample 'a': count must be at least 1, got 0"):
        Sample.from_dict({"name": "a", "count": 0})
    with pytest.raises(PayloadError, match="Sample: name is required"):
        Sample.from_dict({})
    with pytest.raises(PayloadError, match="must be an object"):
        Sample.from_dict(["a"])
    with pytest.raises(PayloadError, match="that name is taken"):  # a __post_init__ rule, as a payload error
        Sample.from_dict({"name": "forbidden"})
    with pytest.raises(ConfigError, match="Configured: url must be a string, got 3"):
        Configured.from_dict({"url": 3})
    with pytest.raises(UsageError, match="strict: bogus is not a known field"):
        load(Inner, {"label": "x", "bogus": 1}, error=UsageError, exact=True, what="strict")


def test_records_are_frozen_and_hashable_when_their_fields_are() -> None:
    inner = Inner("x", (1,))
    with pytest.raises(AttributeError):
        inner.label = "y"  # type: ignore[misc]
    assert {inner, Inner("x", (1,))} == {inner}
