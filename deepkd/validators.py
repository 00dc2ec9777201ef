"""attrs validators for config numbers: booleans and non-finite values are rejected, bounds name the value.

>>> import attrs
>>> @attrs.frozen
... class C:
...     t: float = attrs.field(default=1.0, validator=real(gt=0))
>>> C(t=True)
Traceback (most recent call last):
...
TypeError: 't' must be a number, got True
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import attrs

from deepkd.errors import ConfigError

__all__ = ["check_choice", "integer", "real"]

_OPS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


def _bounds(name: str, value: float, bounds: dict[str, float | None]) -> None:
    for key, bound in bounds.items():
        if bound is None:
            continue
        op, sym = _OPS[key]
        if not op(value, bound):
            raise ValueError(f"'{name}' must be {sym} {bound}: {value}")


def _describe(what: str, bounds: dict[str, float | None]) -> str:
    """The constraint in words, e.g. ``an integer >= 1``: the generated config reference reads it."""
    limits = ", ".join(f"{_OPS[k][1]} {b}" for k, b in bounds.items() if b is not None)
    return f"{what} {limits}" if limits else what


def real(
    *, gt: float | None = None, ge: float | None = None, lt: float | None = None, le: float | None = None
) -> Callable[[Any, attrs.Attribute, Any], None]:  # type: ignore[type-arg]
    """A finite int or float (not a bool) within the given bounds."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:  # type: ignore[type-arg]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"'{attribute.name}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"'{attribute.name}' must be finite, got {value!r}")
        _bounds(attribute.name, value, {"gt": gt, "ge": ge, "lt": lt, "le": le})

    check.__doc__ = _describe("a finite number", {"gt": gt, "ge": ge, "lt": lt, "le": le})
    return check


def integer(*, ge: int | None = None, lt: int | None = None) -> Callable[[Any, attrs.Attribute, Any], None]:  # type: ignore[type-arg]
    """An int (not a bool) within the given bounds."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:  # type: ignore[type-arg]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"'{attribute.name}' must be an integer, got {value!r}")
        _bounds(attribute.name, value, {"ge": ge, "lt": lt})

    check.__doc__ = _describe("an integer", {"ge": ge, "lt": lt})
    return check


def check_choice(name: str, value: object, valid: tuple[object, ...]) -> None:
    """Raise :class:`~deepkd.errors.ConfigError` unless ``value`` is one of ``valid`` (of the same type: ``1`` is not
    ``True``), naming the argument and the valid values."""
    if not any(type(value) is type(v) and value == v for v in valid):
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, valid))}, got {value!r}")
