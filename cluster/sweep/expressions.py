"""Parameter expressions: the distributions a sweep draws hyperparameter values from.

Same meanings as Azure ML HyperDrive (``azureml.train.hyperdrive.parameter_expressions``):

===============================  ==========================================================
``choice(*options)``             one of the options (or ``choice([a, b, c])``)
``randint(upper)``               an int in ``0 .. upper-1``
``uniform(low, high)``           a float uniformly in ``[low, high]``
``quniform(low, high, q)``       ``round(uniform(low, high) / q) * q``
``loguniform(min_exp, max_exp)`` ``exp(uniform(min_exp, max_exp))``: the bounds are exponents
                                 of *e*, so values lie in ``[e**min_exp, e**max_exp]``
``qloguniform(min_exp, max_exp, q)``  ``round(exp(uniform(min_exp, max_exp)) / q) * q``
``normal(mu, sigma)``            a float from a normal distribution
``qnormal(mu, sigma, q)``        ``round(normal(mu, sigma) / q) * q``
===============================  ==========================================================

Quantized values (the ``q`` variants) are ints when ``q`` is an int (so ``--batch-size 32``
reaches the script, not ``32.0``), floats otherwise, computed so that ``q=0.1`` gives ``0.3``
rather than ``0.30000000000000004``. Rounding is Python's ``round`` (half to even), so a
quantized value can lie up to ``q/2`` outside ``[low, high]``, as in HyperDrive.

Every expression is a typed record (:mod:`cluster.schema`) that validates itself on construction (raising
:class:`~cluster.errors.UsageError`), draws with :meth:`ParameterExpression.sample` from a
``numpy.random.Generator``, and round-trips through JSON with ``to_dict`` / :func:`expression_from_dict`
(the :data:`EXPRESSIONS` registry, keyed by the ``type`` tag).
"""

from __future__ import annotations

import copy
import json
import math
from abc import ABC, abstractmethod
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Self

import numpy as np
from pydantic import BeforeValidator, Field, PlainValidator
from pydantic_core import PydanticCustomError

from cluster.errors import UsageError
from cluster.schema import Hint, Kinds, Number, PositiveNumber, Record, WholeNumber, python_scalar, record

__all__ = [
    "EXPRESSIONS",
    "Choice",
    "LogUniform",
    "Normal",
    "ParameterExpression",
    "QLogUniform",
    "QNormal",
    "QUniform",
    "RandInt",
    "Uniform",
    "choice",
    "expression_from_dict",
    "loguniform",
    "normal",
    "qloguniform",
    "qnormal",
    "quniform",
    "randint",
    "uniform",
]

# exp() of anything above this overflows a float; below -_MAX_EXP it underflows to 0.
_MAX_EXP = 700.0


# --------------------------------------------------------------------------- field types


def _step(value: Any) -> int | float:
    """A quantization step ``q``: a positive finite number, kept an int if given as an int (numpy ones too).

    Its errors carry pydantic's own error types, so :mod:`cluster.schema` words them like any other field's
    (``"quniform(): q must be greater than 0, got 0"``)."""
    value = python_scalar(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("float_type", "Input should be a valid number")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond float range
        finite = False
    if not finite:
        raise PydanticCustomError("finite_number", "Input should be a finite number")
    if value <= 0:
        raise PydanticCustomError("greater_than", "Input should be greater than 0", {"gt": 0})
    return value


#: a quantization step: a number > 0, an int stays an int (so quantized values are ints)
Step = Annotated[int | float, PlainValidator(_step), Hint("q is the spacing of the values")]
#: a standard deviation
Sigma = Annotated[PositiveNumber, Hint("sigma is a standard deviation")]


def _options(value: Any) -> Any:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise PydanticCustomError("list_type", "Input should be a valid list")
    return value


def _check_exponent(kind: str, name: str, value: float) -> None:
    if abs(value) > _MAX_EXP:
        raise UsageError(
            f"{kind}(): {name}={value!r} is an exponent of e and e**{value!r} is out of float range",
            hint=f"the bounds of {kind} are natural-log exponents: use math.log(bound), e.g. "
            "loguniform(math.log(1e-5), math.log(1e-1))",
        )


def quantize(x: float, q: int | float) -> int | float:
    """``round(x / q) * q``: an int for an int ``q``; for a float ``q`` without binary noise."""
    k = round(x / q)
    if isinstance(q, int):
        return k * q
    return float(Decimal(repr(q)) * k)


def _json_value(kind: str, value: Any) -> Any:
    """``value`` normalized to plain JSON types (tuples become lists, numpy scalars Python ones)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        return _json_value(kind, value.item())
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UsageError(f"{kind}(): option {value!r} is not finite", hint="use finite numbers")
        return value
    if isinstance(value, list | tuple):
        return [_json_value(kind, v) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise UsageError(f"{kind}(): option {value!r} has a non-string key {key!r}")
            out[key] = _json_value(kind, v)
        return out
    raise UsageError(
        f"{kind}(): option {value!r} ({type(value).__name__}) cannot be stored as JSON",
        hint="options must be str, int, float, bool, None, or lists/dicts of those",
    )


def canonical_key(value: Any) -> str:
    """A string identifying a JSON value (``1`` and ``1.0`` and ``True`` stay distinct)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- expressions


class ParameterExpression(Record, ABC):
    """A distribution over one hyperparameter. Subclasses are :func:`~cluster.schema.record` classes registered
    in :data:`EXPRESSIONS` (the JSON form is ``{"type": kind, <field>: <value>, ...}``)."""

    kind: ClassVar[str]
    """The ``type`` tag in :meth:`to_dict`, and the name of the constructor function."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """Draw one value (a plain Python int, float or JSON value, never a numpy scalar)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"type": kind, <field>: <value>, ...}``."""
        return EXPRESSIONS.dump(self)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Inverse of :meth:`to_dict`; dispatches on ``type`` like :func:`expression_from_dict`."""
        expr = EXPRESSIONS.load(data)
        if not isinstance(expr, cls):
            raise UsageError(f"expected a {cls.kind} expression, got {expr.kind!r}")
        return expr


#: the one registry of parameter expressions, by their ``type`` tag
EXPRESSIONS: Kinds[ParameterExpression] = Kinds("parameter expression", base=ParameterExpression)


@EXPRESSIONS.register
@record
class Choice(ParameterExpression):
    """One of ``options``, each equally likely. Options are JSON values and distinct."""

    __what__ = "choice()"
    kind: ClassVar[str] = "choice"
    options: Annotated[tuple[Any, ...], BeforeValidator(_options)]

    def __post_init__(self) -> None:
        options = tuple(_json_value("choice", o) for o in self.options)
        if not options:
            raise UsageError("choice() needs at least one option", hint="e.g. choice(16, 32, 64)")
        seen: set[str] = set()
        for option in options:
            key = canonical_key(option)
            if key in seen:
                raise UsageError(f"choice(): option {option!r} is given twice", hint="list each value once")
            seen.add(key)
        object.__setattr__(self, "options", options)

    def sample(self, rng: np.random.Generator) -> Any:
        return copy.deepcopy(self.options[int(rng.integers(len(self.options)))])


@EXPRESSIONS.register
@record
class RandInt(ParameterExpression):
    """An int in ``0 .. upper-1``, each equally likely."""

    __what__ = "randint()"
    kind: ClassVar[str] = "randint"
    upper: Annotated[WholeNumber, Field(ge=1), Hint("values are 0..upper-1")]

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.upper))


@EXPRESSIONS.register
@record
class Uniform(ParameterExpression):
    """A float uniformly distributed in ``[low, high]``."""

    __what__ = "uniform()"
    kind: ClassVar[str] = "uniform"
    low: Number
    high: Number

    def __post_init__(self) -> None:
        _bounds(self, "low", "high")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@EXPRESSIONS.register
@record
class QUniform(ParameterExpression):
    """``round(uniform(low, high) / q) * q``."""

    __what__ = "quniform()"
    kind: ClassVar[str] = "quniform"
    low: Number
    high: Number
    q: Step

    def __post_init__(self) -> None:
        _bounds(self, "low", "high")

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(float(rng.uniform(self.low, self.high)), self.q)


@EXPRESSIONS.register
@record
class LogUniform(ParameterExpression):
    """``exp(uniform(min_exp, max_exp))``: log-uniform in ``[e**min_exp, e**max_exp]``."""

    __what__ = "loguniform()"
    kind: ClassVar[str] = "loguniform"
    min_exp: Number
    max_exp: Number

    def __post_init__(self) -> None:
        _bounds(self, "min_exp", "max_exp")
        _check_exponent(self.kind, "min_exp", self.min_exp)
        _check_exponent(self.kind, "max_exp", self.max_exp)

    def sample(self, rng: np.random.Generator) -> float:
        value = math.exp(float(rng.uniform(self.min_exp, self.max_exp)))
        # exp() of a value at the bound may land one ulp outside [e**min, e**max]
        return min(max(value, math.exp(self.min_exp)), math.exp(self.max_exp))


@EXPRESSIONS.register
@record
class QLogUniform(ParameterExpression):
    """``round(exp(uniform(min_exp, max_exp)) / q) * q``."""

    __what__ = "qloguniform()"
    kind: ClassVar[str] = "qloguniform"
    min_exp: Number
    max_exp: Number
    q: Step

    def __post_init__(self) -> None:
        _bounds(self, "min_exp", "max_exp")
        _check_exponent(self.kind, "min_exp", self.min_exp)
        _check_exponent(self.kind, "max_exp", self.max_exp)

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(math.exp(float(rng.uniform(self.min_exp, self.max_exp))), self.q)


@EXPRESSIONS.register
@record
class Normal(ParameterExpression):
    """A float from a normal distribution with mean ``mu`` and standard deviation ``sigma``."""

    __what__ = "normal()"
    kind: ClassVar[str] = "normal"
    mu: Number
    sigma: Sigma

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.normal(self.mu, self.sigma))


@EXPRESSIONS.register
@record
class QNormal(ParameterExpression):
    """``round(normal(mu, sigma) / q) * q``."""

    __what__ = "qnormal()"
    kind: ClassVar[str] = "qnormal"
    mu: Number
    sigma: Sigma
    q: Step

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(float(rng.normal(self.mu, self.sigma)), self.q)


def _bounds(expr: ParameterExpression, low_name: str, high_name: str) -> None:
    low, high = getattr(expr, low_name), getattr(expr, high_name)
    if not low < high:
        raise UsageError(
            f"{expr.kind}(): {low_name} must be < {high_name}, got {low_name}={low!r}, {high_name}={high!r}",
            hint=f"swap them, or use choice({low!r}) for a constant",
        )


# --------------------------------------------------------------------------- constructors


def choice(*options: Any) -> Choice:
    """One of ``options``: ``choice(16, 32, 64)`` or ``choice([16, 32, 64])`` (or a ``range``).

    A single list, tuple or range argument is the list of options (as in HyperDrive); to offer
    one list-valued option, nest it: ``choice([[1, 2]])``.
    """
    if len(options) == 1 and isinstance(options[0], list | tuple | range):
        options = tuple(options[0])
    return Choice(tuple(options))


def randint(upper: int) -> RandInt:
    """An int in ``0 .. upper-1``."""
    return RandInt(upper)


def uniform(low: float, high: float) -> Uniform:
    """A float uniformly distributed in ``[low, high]``."""
    return Uniform(low, high)


def quniform(low: float, high: float, q: int | float) -> QUniform:
    """``round(uniform(low, high) / q) * q`` (an int if ``q`` is an int)."""
    return QUniform(low, high, q)


def loguniform(min_exp: float, max_exp: float) -> LogUniform:
    """``exp(uniform(min_exp, max_exp))``. The bounds are exponents of e, not values:
    for learning rates between 1e-5 and 1e-1 use ``loguniform(math.log(1e-5), math.log(1e-1))``."""
    return LogUniform(min_exp, max_exp)


def qloguniform(min_exp: float, max_exp: float, q: int | float) -> QLogUniform:
    """``round(exp(uniform(min_exp, max_exp)) / q) * q`` (bounds are exponents of e)."""
    return QLogUniform(min_exp, max_exp, q)


def normal(mu: float, sigma: float) -> Normal:
    """A float from a normal distribution with mean ``mu`` and standard deviation ``sigma``."""
    return Normal(mu, sigma)


def qnormal(mu: float, sigma: float, q: int | float) -> QNormal:
    """``round(normal(mu, sigma) / q) * q`` (an int if ``q`` is an int)."""
    return QNormal(mu, sigma, q)


# --------------------------------------------------------------------------- deserialization

def expression_from_dict(data: Any) -> ParameterExpression:
    """Rebuild any expression from its :meth:`ParameterExpression.to_dict` form (validated; a misspelt or missing
    key is an error). Raises :class:`~cluster.errors.UsageError`."""
    return EXPRESSIONS.load(data)
