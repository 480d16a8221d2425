"""The one validation layer: typed records on pydantic, their JSON form, and one registry for kinds.

Every structured value the cluster stores or takes from a user -- run specs and records, pool definitions, model
records, sweep specs, parameter expressions, samplers and policies -- is a frozen dataclass decorated with
:func:`record`. pydantic builds its validator from the annotations, so a field's type *is* its check:

* constructing a record checks every field (``PoolSpec(name="cpu", max_nodes=0)`` raises a
  :class:`~cluster.errors.UsageError` that names the field, the value and the rule);
* :func:`load` reads a record from its JSON form (``from_dict``) and reports a bad payload as the caller's error
  (:class:`~cluster.errors.PayloadError` by default: stored data that is damaged, not a user mistake); unknown keys
  are ignored, so a newer writer does not break an older reader;
* :func:`dump` (``to_dict``) is the inverse, JSON-ready (tuples become lists, enums their values).

The field types below (:data:`WholeNumber`, :data:`Number`, ...) say what a user may pass: numpy scalars are
accepted, bools and numeric strings are not (``max_nodes="4"`` is an error, not a 4). Rules that relate two fields
(``min_nodes <= max_nodes``) stay in the record's ``__post_init__``, which raises :class:`UsageError` itself.

:class:`Kinds` is the one mechanism that maps a ``type`` tag to a class (parameter expressions, samplers, early
termination policies): ``kinds.register`` on each class, ``kinds.load(data)`` / ``kinds.dump(obj)`` for the tagged
JSON form, and ``kinds.field()`` as the annotation of a field that holds one.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Generic, Self, TypeVar, dataclass_transform

import pydantic
import pydantic.dataclasses
from pydantic import AllowInfNan, BeforeValidator, ConfigDict, PlainSerializer, PlainValidator, Strict, ValidationError

from cluster.errors import ClusterError, PayloadError, UsageError

__all__ = [
    "Hint",
    "Kinds",
    "Number",
    "PositiveNumber",
    "Record",
    "Seconds",
    "WholeNumber",
    "dump",
    "explain",
    "load",
    "python_scalar",
    "record",
    "shown",
]

T = TypeVar("T")
R = TypeVar("R", bound="Record")

_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def python_scalar(value: Any) -> Any:
    """numpy scalars (``np.int64(3)``, ``np.float64(0.5)``) as Python numbers; anything else unchanged."""
    if not isinstance(value, bool | int | float | str) and hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value

#: an int (numpy ints too); bools, floats and strings are refused
WholeNumber = Annotated[int, BeforeValidator(python_scalar), Strict()]
#: a finite real number (ints become floats); bools, strings, NaN and infinities are refused
Number = Annotated[float, BeforeValidator(python_scalar), Strict(), AllowInfNan(False)]
#: a finite number >= 0 (a duration, an interval)
Seconds = Annotated[Number, pydantic.Field(ge=0)]
#: a finite number > 0
PositiveNumber = Annotated[Number, pydantic.Field(gt=0)]


@dataclasses.dataclass(frozen=True)
class Hint:
    """Field metadata: the hint shown when that field is refused.

    ``upper: Annotated[WholeNumber, Field(ge=1), Hint("values are 0..upper-1")]``"""

    text: str


class Record:
    """Base of every :func:`record`: the JSON form both ways.

    ``__what__`` names a record in messages; it may use the record's fields (``"pool {name!r}"``).
    ``__load_error__`` is what :meth:`from_dict` raises for a payload that does not validate.
    """

    __what__: ClassVar[str] = ""
    __load_error__: ClassVar[type[ClusterError]] = PayloadError

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (read back by :meth:`from_dict`)."""
        return dump(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The record from its JSON form; unknown keys are ignored. Raises ``__load_error__`` for a bad payload."""
        return load(cls, data, error=cls.__load_error__)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, pydantic.Field))
def record(cls: type[T]) -> type[T]:
    """Make ``cls`` a frozen, validated dataclass (pydantic). Construction errors become :class:`UsageError`."""
    built: Any = pydantic.dataclasses.dataclass(frozen=True, config=_CONFIG)(cls)
    validated_init = built.__init__

    @functools.wraps(validated_init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validated_init(self, *args, **kwargs)
        except ValidationError as e:
            given = dict(zip(_field_names(built), args, strict=False)) | kwargs
            raise UsageError(explain(e, _what(built, given), _field_names(built)), hint=_hint(e, built)) from None

    built.__init__ = __init__
    return built  # type: ignore[no-any-return]


_ADAPTERS: dict[type[Any], pydantic.TypeAdapter[Any]] = {}  # a cache: one validator/serializer per record class
_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def _adapter(cls: type[Any]) -> pydantic.TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = pydantic.TypeAdapter(cls)
    return adapter


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    return names


def load(cls: type[T], data: Any, *, error: type[ClusterError] = PayloadError, exact: bool = False,
         what: str | None = None) -> T:
    """``cls`` from its JSON form. Unknown keys are ignored unless ``exact``; every problem raises ``error``."""
    label = what or _what(cls, data if isinstance(data, Mapping) else {})
    if not isinstance(data, Mapping):
        raise error(f"{label} must be an object (a mapping), got {shown(data)} ({type(data).__name__})")
    if not exact:
        names = _field_names(cls)
        data = {k: v for k, v in data.items() if k in names}
    try:
        return _adapter(cls).validate_python(data)  # type: ignore[no-any-return]
    except ValidationError as e:
        raise error(explain(e, label), hint=_hint(e, cls)) from None
    except UsageError as e:  # a cross-field rule in __post_init__
        if error is UsageError:
            raise
        raise error(f"{label}: {e.message}", hint=e.hint) from None


def dump(obj: Any) -> dict[str, Any]:
    """A record's JSON-ready form: tuples as lists, enums as their values, nested records as dicts."""
    out: dict[str, Any] = _adapter(type(obj)).dump_python(obj, mode="json")
    return out


# --------------------------------------------------------------------------- messages


def shown(value: Any) -> str:
    """A value as messages quote it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _what(cls: type[Any], given: Mapping[str, Any]) -> str:
    template = getattr(cls, "__what__", "") or cls.__name__
    try:
        return template.format(**given)
    except (KeyError, IndexError, ValueError, AttributeError):
        return cls.__name__


def _phrase(err: Any) -> str:
    """One pydantic error as the end of a sentence that starts with the field's name."""
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    plain_number = isinstance(value, int | float) and not isinstance(value, bool)
    got = f"got {shown(value)}" + ("" if plain_number else f" ({type(value).__name__})")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, {got}"
    if kind == "float_type" and isinstance(value, int) and not isinstance(value, bool):  # beyond float range
        return f"must be a finite number, got {shown(value)}"
    if kind in ("float_type", "float_parsing"):
        hint = ""
        if isinstance(value, str):
            try:
                float(value)
                hint = f" (write {value.strip()} without quotes)"
            except ValueError:
                pass
        return f"must be a number, {got}{hint}"
    if kind == "finite_number":
        return f"must be a finite number, got {shown(value)}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, {got}"
    if kind == "string_type":
        return f"must be a string, {got}"
    if kind in ("dict_type", "mapping_type"):
        return f"must be a mapping, {got}"
    if kind in ("list_type", "tuple_type", "iterable_type"):
        return f"must be a list, {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, got {shown(value)}"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']}, got {shown(value)}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, got {shown(value)}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}, got {shown(value)}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')}, got {shown(value)}"
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument", "missing_positional_only_argument"):
        return "is required"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return "is not a known field"
    if kind == "too_long":
        return f"is too long (at most {ctx.get('max_length')})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"]).lower()


def explain(e: ValidationError, what: str, names: tuple[str, ...] = ()) -> str:
    """A pydantic error in this project's words: ``"pool 'cpu': max_nodes must be at least 1, got 0"``.

    ``names`` are the record's fields in order, to name a positional argument (pydantic reports its index)."""
    parts = []
    for err in e.errors(include_url=False):
        path = list(err["loc"])
        if path and isinstance(path[0], int) and path[0] < len(names):
            path[0] = names[path[0]]
        loc = ".".join(str(x) for x in path if x != "__root__")
        if err["type"] == "too_many_positional_arguments":
            parts.append("too many positional arguments")
            continue
        parts.append(f"{loc} {_phrase(err)}" if loc else _phrase(err))
    return f"{what}: " + "; ".join(parts)


def _hint(e: ValidationError, cls: type[Any]) -> str | None:
    """A "did you mean" for a misspelt field name, else the :class:`Hint` of the first refused field."""
    names = _field_names(cls)
    errors = e.errors(include_url=False)
    for err in errors:
        if err["type"] in ("unexpected_keyword_argument", "extra_forbidden") and err["loc"]:
            given = str(err["loc"][-1])
            close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
            if close:
                return f"did you mean {close[0]!r} instead of {given!r}?"
            return f"known fields: {', '.join(names)}" if names else "it takes no fields"
    fields = getattr(cls, "__pydantic_fields__", {})
    for err in errors:
        loc = err["loc"]
        name = names[loc[0]] if loc and isinstance(loc[0], int) and loc[0] < len(names) else loc[0] if loc else None
        info = fields.get(name) if isinstance(name, str) else None
        for meta in info.metadata if info is not None else ():
            if isinstance(meta, Hint):
                return meta.text
    return None


# --------------------------------------------------------------------------- kinds


class Kinds(Generic[T]):
    """A registry of the classes of one family, by their ``kind`` tag (``{"type": kind, ...fields}`` in JSON).

    ``noun`` names the family in messages (``"parameter expression"``); ``exact`` makes :meth:`load` refuse keys
    the kind does not have (a spec written by hand should not lose a misspelt key silently).
    """

    def __init__(self, noun: str, *, base: type[Any], exact: bool = True, tag: str = "type") -> None:
        # base is type[Any], not type[T]: the base of a family is usually abstract, which mypy refuses as type[T];
        # T comes from the annotation (``EXPRESSIONS: Kinds[ParameterExpression] = Kinds(...)``)
        self.noun = noun
        self.base = base
        self.exact = exact
        self.tag = tag
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[R]) -> type[R]:
        """Class decorator: ``cls.kind`` is its tag (one class per tag)."""
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{cls.__name__} needs a class attribute kind = '<tag>'")
        if kind in self._classes and self._classes[kind] is not cls:
            raise TypeError(f"{self.noun} kind {kind!r} is registered twice")
        self._classes[kind] = cls  # type: ignore[assignment]
        return cls

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def __contains__(self, kind: object) -> bool:
        return kind in self._classes

    def __getitem__(self, kind: str) -> type[T]:
        return self._classes[kind]

    def load(self, data: Any, *, error: type[ClusterError] = UsageError) -> T:
        """The instance a tagged dict describes (or ``data`` itself when it already is one)."""
        if isinstance(data, self.base):
            found: T = data
            return found
        kind = data.get(self.tag) if isinstance(data, Mapping) else None
        if not isinstance(kind, str):
            raise error(f"a {self.noun} must be a {self.base.__name__} or a mapping with a {self.tag!r}, "
                        f"got {shown(data)}",
                        hint=f"{self.tag!r} is one of: {', '.join(self._classes)}")
        cls = self._classes.get(kind)
        if cls is None:
            raise error(f"unknown {self.noun} {self.tag} {kind!r}", hint=f"use one of: {', '.join(self._classes)}")
        fields = {k: v for k, v in data.items() if k != self.tag}
        return load(cls, fields, error=error, exact=self.exact, what=f"{kind} {self.noun}")

    def dump(self, obj: Any) -> dict[str, Any]:
        """The tagged JSON form of one instance."""
        return {self.tag: obj.kind, **dump(obj)}

    def field(self) -> Any:
        """The annotation of a field holding one of these: accepts an instance or its tagged dict, dumps tagged."""
        return Annotated[self.base, PlainValidator(self.load), PlainSerializer(self.dump)]

    def mapping_field(self, key: str = "name") -> Any:
        """The annotation of a ``{name: instance}`` field (a sweep's search space).

        An entry that does not load is reported with its name: ``"{key} 'lr': <why>"``."""
        def check(value: Any) -> dict[str, T]:
            if not isinstance(value, Mapping):
                raise UsageError(f"expected a mapping of {key} -> {self.noun}, got {shown(value)}")
            out: dict[str, T] = {}
            for k, v in value.items():
                try:
                    out[k] = self.load(v)
                except ClusterError as e:
                    raise type(e)(f"{key} {k!r}: {e.message}", hint=e.hint) from None
            return out

        def dump_all(value: Mapping[str, Any]) -> dict[str, Any]:
            return {k: self.dump(v) for k, v in value.items()}

        return Annotated[dict[str, self.base], PlainValidator(check), PlainSerializer(dump_all)]  # type: ignore[name-defined]
