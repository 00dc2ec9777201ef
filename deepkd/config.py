"""Configs: one cattrs converter that (un)structures the frozen attrs configs, strictly, with ``$.path`` errors.

Strategy fields (a recipe's ``loss``, ``momentum`` and ``mask``) are tagged unions keyed by registry name: in a file
they read ``{name = "gsnr", delta = 0.075}``, or just ``"gsnr"`` for the defaults. Unknown keys, unknown strategy
names, wrong types (``interval = 1.5``, ``standardize = "no"``) and values that fail a validator are all reported at
once, one ``message @ $.path`` line each, in a :class:`~deepkd.errors.ConfigError`.

TOML has no null: fields whose value is ``None`` are left out when dumping, and every such field defaults to ``None``.

>>> from deepkd.recipe import Recipe
>>> structure({"momentum": {"name": "gsnr", "delta": 2}}, Recipe)
Traceback (most recent call last):
...
deepkd.errors.ConfigError: 'delta' must be < 1.0: 2.0 @ $.momentum.delta
"""

from __future__ import annotations

import difflib
import json
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.v import format_exception

from deepkd.errors import ConfigError, UnknownStrategyError
from deepkd.registry import Registry

__all__ = ["converter", "dump", "dumps", "load", "loads", "register_axis", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter(detailed_validation=True, unstruct_collection_overrides={tuple: list})

# Strategy protocol type -> the registry of its implementations (filled by register_axis).
_AXES: dict[Any, Registry[type]] = {}


def _strict(tp: type, ok: type | tuple[type, ...], what: str) -> None:
    def hook(value: Any, _: Any) -> Any:
        if not isinstance(value, ok) or (isinstance(value, bool) and tp is not bool):
            raise TypeError(f"expected {what}, got {value!r}")
        return tp(value)

    converter.register_structure_hook(tp, hook)


_strict(int, int, "an integer")
_strict(float, (int, float), "a float")
_strict(bool, bool, "true or false")
_strict(str, str, "a string")


def _literal(value: Any, tp: Any) -> Any:
    if not any(type(value) is type(choice) and value == choice for choice in typing.get_args(tp)):
        raise ValueError(f"expected one of {', '.join(map(repr, typing.get_args(tp)))}, got {value!r}")
    return value


converter.register_structure_hook_func(lambda tp: typing.get_origin(tp) is typing.Literal, _literal)


def _at(name: str, exc: Exception) -> Exception:
    """``exc`` noted as the error of key ``name``, so :func:`cattrs.transform_error` puts it at ``path.name``."""
    exc.add_note(AttributeValidationNote(f"@ {name}", name, None))
    return exc


def _validated(field: attrs.Attribute) -> Callable[[Any, Any], Any]:  # type: ignore[type-arg]
    """A field hook that also runs the field's converter and validator, so their errors get the field's path."""

    def hook(value: Any, tp: Any) -> Any:
        value = converter.structure(value, tp)
        if field.converter is not None:
            value = field.converter(value)  # type: ignore[operator]
        field.validator(None, field, value)  # type: ignore[misc]
        return value

    return hook


@converter.register_structure_hook_factory(attrs.has)
def _attrs_hook(cls: type) -> Callable[[Any, Any], Any]:
    fields = [f for f in attrs.fields(cls) if f.init]
    known = [f.name for f in fields]
    checked: dict[str, Any] = {f.name: override(struct_hook=_validated(f)) for f in fields if f.validator is not None}
    build: Callable[[Any, Any], Any] = make_dict_structure_fn(cls, converter, **checked)  # unknown keys: below

    def hook(data: Any, _: Any) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a table of {cls.__name__} settings, got {data!r}")
        errors: list[Exception] = []
        for key in (k for k in data if k not in known):
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            message = f"unknown key {key!r} for {cls.__name__}{hint} Valid keys: {', '.join(known) or '(none)'}"
            errors.append(_at(str(key), ValueError(message)))
        try:
            obj = build(data, cls)
        except ClassValidationError as exc:
            errors.extend(exc.exceptions)
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        return obj

    return hook


@converter.register_unstructure_hook_factory(attrs.has)
def _attrs_unhook(cls: type) -> Callable[[Any], dict[str, Any]]:
    fields: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cls, converter)

    def hook(obj: Any) -> dict[str, Any]:
        tag = next((name for r in _AXES.values() if (name := r.name_for(cls)) is not None), None)
        return fields(obj) if tag is None else {"name": tag, **fields(obj)}

    return hook


def _strategy(value: Any, registry: Registry[type]) -> Any:
    if registry.name_for(type(value)) is not None:
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a {registry.kind} name or table, got {value!r}")
    if "name" not in value:
        raise ValueError(f"a {registry.kind} needs a 'name' key (one of {', '.join(registry.names())})")
    try:
        cls = registry.get(value["name"])
    except UnknownStrategyError as exc:
        raise ClassValidationError(f"While structuring a {registry.kind}", [_at("name", exc)], object) from None
    return converter.structure({k: v for k, v in value.items() if k != "name"}, cls)


def register_axis(protocol: Any, registry: Registry[type]) -> None:
    """Declare that fields annotated with ``protocol`` hold a strategy from ``registry``: a union tagged by its
    ``name`` key (a bare name is short for ``{name = ...}``). The registry stays open: names added later work."""
    _AXES[protocol] = registry
    converter.register_structure_hook_func(lambda tp: tp is protocol, lambda value, _: _strategy(value, registry))
    converter.register_unstructure_hook_func(lambda tp: tp is protocol, converter.unstructure)  # by its own class


def _describe(exc: BaseException, tp: Any) -> str:
    if isinstance(exc, ConfigError):
        return "\n".join(exc.lines)
    if isinstance(exc, KeyError) and exc.args:  # cattrs' generated hook looked the field up
        return f"missing required key {exc.args[0]!r}"
    if isinstance(exc, (TypeError, ValueError, LookupError)):
        return str(exc)
    return format_exception(exc, tp)


def _lines(exc: BaseException, path: str) -> Iterator[str]:
    for line in cattrs.transform_error(exc, path, format_exception=_describe):
        message, _, where = line.rpartition(" @ ")
        for part in message.split("\n"):  # a ConfigError's own lines: their paths are relative to ``where``
            text, nested, rest = part.rpartition(" @ $")
            yield f"{text} @ {where}{rest}" if nested else f"{part} @ {where}"


def structure(data: Any, cls: type[T], *, path: str = "$") -> T:
    """Build a config of type ``cls`` from plain data, raising :class:`ConfigError` with every problem found, one
    ``message @ path`` line each (``path`` names where ``data`` sits in a larger config)."""
    try:
        return converter.structure(data, cls)
    except Exception as exc:  # cattrs' error groups, the strict hooks' and the validators' errors: all become lines
        raise ConfigError(list(_lines(exc, path))) from None


def unstructure(obj: Any) -> Any:
    """Plain data (dicts, lists, numbers, strings) for a config; strategies carry their registry ``name`` first."""
    return converter.unstructure(obj)


def _drop_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data


def dumps(obj: Any, fmt: str = "toml") -> str:
    """Serialise a config to TOML or JSON text."""
    data = unstructure(obj)
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(_drop_none(data))
    raise ValueError(f"format must be 'toml' or 'json', got {fmt!r}")


def loads(text: str, cls: type[T], fmt: str = "toml", *, transform: Callable[[Any], Any] | None = None) -> T:
    """Parse TOML or JSON text into a config of type ``cls``; ``transform`` edits the plain data first."""
    try:
        data = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot parse {fmt.upper()}: {exc} @ $") from None
    return structure(transform(data) if transform is not None else data, cls)


def _fmt(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"config files must end in .toml or .json, got {str(path)!r}")
    return suffix[1:]


def load(path: str | Path, cls: type[T], *, transform: Callable[[Any], Any] | None = None) -> T:
    """Read a ``.toml`` or ``.json`` config file; ``transform`` edits the plain data first (e.g. overrides)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        return loads(text, cls, _fmt(path), transform=transform)
    except ConfigError as exc:
        raise ConfigError([f"{line} (in {path})" for line in exc.lines]) from None


def dump(obj: Any, path: str | Path) -> None:
    """Write a config as ``.toml`` or ``.json`` (by suffix)."""
    path = Path(path)
    path.write_text(dumps(obj, _fmt(path)))
