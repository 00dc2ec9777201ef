"""A small typed registry of named objects, one per axis (loss, momentum, mask, schedule; models, data sets).

Registering a name twice is an error unless ``replace=True``; looking up an unknown name raises
:class:`~deepkd.errors.UnknownStrategyError` with the known names and the closest match. The registry is the one
record of a strategy's name: :func:`name_of` reads it back, and a config writes it as the strategy's ``name`` key.

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
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar, cast

import attrs

from deepkd.errors import UnknownStrategyError

__all__ = ["LOSSES", "MASKS", "MOMENTA", "Registry", "name_of", "register_loss", "register_mask", "register_momentum"]

T = TypeVar("T")
C = TypeVar("C", bound=type)


class Registry(Generic[T]):
    """Maps names to objects (strategy config classes, model builders...) for one axis.

    ``kind`` names what it holds in messages: ``"<axis> strategy"`` unless given (``"model"``, ``"data set"``).
    """

    _all: ClassVar[weakref.WeakSet[Registry[Any]]] = weakref.WeakSet()

    def __init__(self, axis: str, *, kind: str | None = None) -> None:
        self.axis = axis
        self.kind = kind or f"{axis} strategy"
        self._items: dict[str, T] = {}
        Registry._all.add(self)

    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name`` and returns it unchanged."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} names must be identifiers, got {name!r}")

        def decorator(obj: T) -> T:
            if name in self._items and not replace and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to override it")
            self._items[name] = obj
            return obj

        return decorator

    def register_class(self, name: str, *, replace: bool = False) -> Callable[[C], C]:
        """Decorator registering an attrs class (a strategy: its instances are configs) under ``name``."""

        def decorator(cls: C) -> C:
            if not attrs.has(cast(type, cls)):
                raise TypeError(f"{self.kind} {name!r} must be an attrs class, got {cls!r}")
            self.register(name, replace=replace)(cast(T, cls))  # refuses a taken name before the class is touched
            return cls

        return decorator

    def get(self, name: str) -> T:
        """Return the object registered as ``name``, or raise :class:`UnknownStrategyError`."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), list(self._items), n=1, cutoff=0.5)
            suggestion = close[0] if close else None
            raise UnknownStrategyError(self.axis, str(name), self.names(), suggestion, self.kind) from None

    def name_for(self, obj: object) -> str | None:
        """The name ``obj`` is registered under here, or ``None``."""
        return next((name for name, item in self._items.items() if item is obj), None)

    def validator(self) -> Callable[[Any, attrs.Attribute, Any], None]:  # type: ignore[type-arg]
        """An attrs validator accepting only instances of the classes registered here."""

        def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:  # type: ignore[type-arg]
            if self.name_for(type(value)) is None:
                raise TypeError(
                    f"{attribute.name} must be an instance of a registered {self.kind} "
                    f"({', '.join(self.names())}), got {value!r}"
                )

        return check

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


def name_of(obj: object) -> str:
    """The name a strategy (an instance or its class) is registered under, else its class name.

    >>> from deepkd.momentum import GSNR
    >>> name_of(GSNR()), name_of(GSNR), name_of(3)
    ('gsnr', 'gsnr', 'int')
    """
    cls = obj if isinstance(obj, type) else type(obj)
    names = (registry.name_for(cls) for registry in list(Registry._all))
    return next((name for name in names if name is not None), cls.__name__)


# One registry per axis of a recipe. Each maps a name to a frozen attrs config class whose instances are the
# strategy (the config is the data, its methods are pure functions of it).
LOSSES: Registry[type] = Registry("loss")
MOMENTA: Registry[type] = Registry("momentum")
MASKS: Registry[type] = Registry("mask")


def register_loss(name: str, *, replace: bool = False) -> Callable[[C], C]:
    """Register a loss strategy class (an attrs class with ``part_names``, ``needs_teacher`` and ``parts()``; the
    whole contract is :class:`deepkd.types.LossStrategy`)."""
    return LOSSES.register_class(name, replace=replace)


def register_momentum(name: str, *, replace: bool = False) -> Callable[[C], C]:
    """Register a momentum strategy class (an attrs class with ``plan(part_names)`` returning a
    :class:`deepkd.types.Plan`; the contract is :class:`deepkd.types.MomentumStrategy`)."""
    return MOMENTA.register_class(name, replace=replace)


def register_mask(name: str, *, replace: bool = False) -> Callable[[C], C]:
    """Register a mask strategy class (an attrs class with ``form``, ``init`` and ``observe``, optionally ``keep``; the
    contract is :class:`deepkd.types.MaskStrategy`)."""
    return MASKS.register_class(name, replace=replace)
