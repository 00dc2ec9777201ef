"""A small typed registry of named strategies, one per axis (loss, momentum, mask, model).

Registering a name twice is an error unless ``replace=True``; looking up an unknown name raises
:class:`~deepkd.errors.UnknownStrategyError` with the known names and the closest match.

>>> reg: Registry[int] = Registry("example")
>>> _ = reg.register("one")(1)
>>> reg.get("one")
1
>>> reg.get("onr")
Traceback (most recent call last):
...
deepkd.errors.UnknownStrategyError: unknown example strategy 'onr'. Did you mean 'one'? Known example strategies: one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from deepkd.errors import UnknownStrategyError

__all__ = ["LOSSES", "MASKS", "MOMENTA", "Registry", "register_loss", "register_mask", "register_momentum"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (strategy config classes, model builders...) for one axis."""

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._items: dict[str, T] = {}

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name`` and returns it unchanged."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.axis} strategy names must be identifiers, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._items and not replace and self._items[name] is not obj:
                raise ValueError(
                    f"{self.axis} strategy {name!r} is already registered; pass replace=True to override it"
                )
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise :class:`UnknownStrategyError`."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
            raise UnknownStrategyError(self.axis, str(name), self.names(), close[0] if close else None) from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (mostly useful in tests that register throw-away strategies)."""
        self.get(name)
        del self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._items))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.axis!r}, {list(self.names())})"


# One registry per axis of a recipe. Each maps a name to a frozen attrs config class whose instances are the
# strategy (the config is the data, its methods are pure functions of it).
LOSSES: Registry[type] = Registry("loss")
MOMENTA: Registry[type] = Registry("momentum")
MASKS: Registry[type] = Registry("mask")


def register_loss(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Register a loss strategy class (an attrs class with ``part_names``, ``needs_teacher`` and ``parts()``)."""
    return _registrar(LOSSES, name, replace)


def register_momentum(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Register a momentum strategy class (an attrs class with ``plan(part_names)``)."""
    return _registrar(MOMENTA, name, replace)


def register_mask(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Register a mask strategy class (an attrs class with ``init``, ``advance``, ``keep`` and ``window``)."""
    return _registrar(MASKS, name, replace)


def _registrar(registry: Registry[type], name: str, replace: bool) -> Callable[[type], type]:
    def decorator(cls: type) -> type:
        import attrs

        if not attrs.has(cls):
            raise TypeError(f"{registry.axis} strategy {name!r} must be an attrs class, got {cls!r}")
        registry.register(name, replace=replace)(cls)  # refuses duplicates before the class is touched
        cls.strategy_name = name  # type: ignore[attr-defined]
        return cls

    return decorator
