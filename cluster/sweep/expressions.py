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

Every expression is a frozen dataclass that validates itself on construction (raising
:class:`~cluster.errors.UsageError`), draws with :meth:`ParameterExpression.sample` from a
``numpy.random.Generator``, and round-trips through JSON with ``to_dict`` /
:func:`expression_from_dict`.
"""

from __future__ import annotations

import copy
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np

from cluster.errors import UsageError

__all__ = [
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


# --------------------------------------------------------------------------- validation helpers


def _real(kind: str, name: str, value: Any) -> float:
    """``value`` as a finite float, or a UsageError naming the expression and argument."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise UsageError(
            f"{kind}(): {name} must be a number, got {value!r} ({type(value).__name__})",
            hint=f"pass a plain int or float as {name}",
        )
    try:
        result = float(value)
    except OverflowError:  # an int beyond float range
        result = math.inf
    if not math.isfinite(result):
        raise UsageError(f"{kind}(): {name} must be finite, got {value!r:.60}")
    return result


def _step(kind: str, value: Any) -> int | float:
    """A quantization step ``q``: a positive number, kept an int if given as an int."""
    number = _real(kind, "q", value)
    if number <= 0:
        raise UsageError(f"{kind}(): q must be > 0, got {value!r}", hint="q is the spacing of the values")
    if isinstance(value, int | np.integer):
        return int(value)
    return number


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


class ParameterExpression(ABC):
    """A distribution over one hyperparameter. Subclasses are frozen dataclasses."""

    kind: ClassVar[str]
    """The ``type`` tag in :meth:`to_dict`, and the name of the constructor function."""

    @abstractmethod
    def sample(self, rng: np.random.Generator) -> Any:
        """Draw one value (a plain Python int, float or JSON value, never a numpy scalar)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"type": kind, <field>: <value>, ...}``."""
        return {"type": self.kind, **{f.name: getattr(self, f.name) for f in fields(self)}}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterExpression:
        """Inverse of :meth:`to_dict`; dispatches on ``type`` like :func:`expression_from_dict`."""
        expr = expression_from_dict(data)
        if not isinstance(expr, cls):
            raise UsageError(f"expected a {cls.kind} expression, got {data.get('type')!r}")
        return expr


@dataclass(frozen=True)
class Choice(ParameterExpression):
    """One of ``options``, each equally likely. Options are JSON values and distinct."""

    kind: ClassVar[str] = "choice"
    options: tuple[Any, ...]

    def __post_init__(self) -> None:
        if isinstance(self.options, str | bytes) or not isinstance(self.options, list | tuple):
            raise UsageError(f"choice(): options must be a list or tuple, got {self.options!r}")
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

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "options": copy.deepcopy(list(self.options))}


@dataclass(frozen=True)
class RandInt(ParameterExpression):
    """An int in ``0 .. upper-1``, each equally likely."""

    kind: ClassVar[str] = "randint"
    upper: int

    def __post_init__(self) -> None:
        if isinstance(self.upper, bool) or not isinstance(self.upper, int | np.integer):
            raise UsageError(f"randint(): upper must be an int, got {self.upper!r}")
        if self.upper < 1:
            raise UsageError(f"randint(): upper must be >= 1, got {self.upper}", hint="values are 0..upper-1")
        object.__setattr__(self, "upper", int(self.upper))

    def sample(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.upper))


@dataclass(frozen=True)
class Uniform(ParameterExpression):
    """A float uniformly distributed in ``[low, high]``."""

    kind: ClassVar[str] = "uniform"
    low: float
    high: float

    def __post_init__(self) -> None:
        _bounds(self, "low", "high")

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high))


@dataclass(frozen=True)
class QUniform(ParameterExpression):
    """``round(uniform(low, high) / q) * q``."""

    kind: ClassVar[str] = "quniform"
    low: float
    high: float
    q: int | float

    def __post_init__(self) -> None:
        _bounds(self, "low", "high")
        object.__setattr__(self, "q", _step(self.kind, self.q))

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(float(rng.uniform(self.low, self.high)), self.q)


@dataclass(frozen=True)
class LogUniform(ParameterExpression):
    """``exp(uniform(min_exp, max_exp))``: log-uniform in ``[e**min_exp, e**max_exp]``."""

    kind: ClassVar[str] = "loguniform"
    min_exp: float
    max_exp: float

    def __post_init__(self) -> None:
        _bounds(self, "min_exp", "max_exp")
        _check_exponent(self.kind, "min_exp", self.min_exp)
        _check_exponent(self.kind, "max_exp", self.max_exp)

    def sample(self, rng: np.random.Generator) -> float:
        value = math.exp(float(rng.uniform(self.min_exp, self.max_exp)))
        # exp() of a value at the bound may land one ulp outside [e**min, e**max]
        return min(max(value, math.exp(self.min_exp)), math.exp(self.max_exp))


@dataclass(frozen=True)
class QLogUniform(ParameterExpression):
    """``round(exp(uniform(min_exp, max_exp)) / q) * q``."""

    kind: ClassVar[str] = "qloguniform"
    min_exp: float
    max_exp: float
    q: int | float

    def __post_init__(self) -> None:
        _bounds(self, "min_exp", "max_exp")
        _check_exponent(self.kind, "min_exp", self.min_exp)
        _check_exponent(self.kind, "max_exp", self.max_exp)
        object.__setattr__(self, "q", _step(self.kind, self.q))

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(math.exp(float(rng.uniform(self.min_exp, self.max_exp))), self.q)


@dataclass(frozen=True)
class Normal(ParameterExpression):
    """A float from a normal distribution with mean ``mu`` and standard deviation ``sigma``."""

    kind: ClassVar[str] = "normal"
    mu: float
    sigma: float

    def __post_init__(self) -> None:
        _normal_args(self)

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.normal(self.mu, self.sigma))


@dataclass(frozen=True)
class QNormal(ParameterExpression):
    """``round(normal(mu, sigma) / q) * q``."""

    kind: ClassVar[str] = "qnormal"
    mu: float
    sigma: float
    q: int | float

    def __post_init__(self) -> None:
        _normal_args(self)
        object.__setattr__(self, "q", _step(self.kind, self.q))

    def sample(self, rng: np.random.Generator) -> int | float:
        return quantize(float(rng.normal(self.mu, self.sigma)), self.q)


def _bounds(expr: ParameterExpression, low_name: str, high_name: str) -> None:
    low = _real(expr.kind, low_name, getattr(expr, low_name))
    high = _real(expr.kind, high_name, getattr(expr, high_name))
    if not low < high:
        raise UsageError(
            f"{expr.kind}(): {low_name} must be < {high_name}, got {low_name}={low!r}, {high_name}={high!r}",
            hint=f"swap them, or use choice({low!r}) for a constant",
        )
    object.__setattr__(expr, low_name, low)
    object.__setattr__(expr, high_name, high)


def _normal_args(expr: Normal | QNormal) -> None:
    mu = _real(expr.kind, "mu", expr.mu)
    sigma = _real(expr.kind, "sigma", expr.sigma)
    if sigma <= 0:
        raise UsageError(f"{expr.kind}(): sigma must be > 0, got {sigma!r}", hint="sigma is a standard deviation")
    object.__setattr__(expr, "mu", mu)
    object.__setattr__(expr, "sigma", sigma)


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

_KINDS: dict[str, type[ParameterExpression]] = {
    cls.kind: cls for cls in (Choice, RandInt, Uniform, QUniform, LogUniform, QLogUniform, Normal, QNormal)
}


def expression_from_dict(data: dict[str, Any]) -> ParameterExpression:
    """Rebuild any expression from its :meth:`ParameterExpression.to_dict` form (validated)."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise UsageError(
            f"a parameter expression must be a dict with a 'type', got {data!r}",
            hint=f"e.g. {{'type': 'uniform', 'low': 0, 'high': 1}}; types: {', '.join(_KINDS)}",
        )
    cls = _KINDS.get(data["type"])
    if cls is None:
        raise UsageError(f"unknown parameter expression type {data['type']!r}", hint=f"use one of: {', '.join(_KINDS)}")
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    args = {k: v for k, v in data.items() if k != "type"}
    if set(args) != set(names):
        raise UsageError(
            f"{cls.kind} expression needs exactly the keys {names}, got {sorted(args)}",
            hint=f"e.g. {cls.kind}({', '.join(names)})",
        )
    return cls(**args)
