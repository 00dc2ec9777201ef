"""Configs: one cattrs converter that (un)structures the frozen attrs configs, strictly, with ``$.path`` errors.

Strategy fields (a recipe's ``loss``, ``momentum`` and ``mask``) are tagged unions keyed by registry name: in a file
they read ``{name = "gsnr", delta = 0.075}``, or just ``"gsnr"`` for the defaults. Unknown keys, unknown strategy
names, wrong types (``interval = 1.5``, ``standardize = "no"``) and values that fail a validator are all reported at
once, one ``message @ $.path`` line each, in a :class:`~deepkd.errors.ConfigError`.

TOML has no null: fields whose value is ``None`` are left out when dumping, and every such field defaults to ``None``.

>>> from deepkd.compose import Recipe
>>> structure({"momentum": {"name": "gsnr", "delta": 2}}, Recipe)
Traceback (most recent call last):
...
deepkd.errors.ConfigError: 'delta' must be < 1.0: 2.0 @ $.momentum.delta
"""

from __future__ import annotations

import difflib
import json
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs

from deepkd.errors import ConfigError, UnknownStrategyError
from deepkd.registry import Registry

__all__ = ["converter", "dump", "dumps", "load", "loads", "register_axis", "structure", "unstructure"]

T = TypeVar("T")

converter = cattrs.Converter(forbid_extra_keys=True)

# Strategy protocol type -> the registry of its implementations (filled by register_axis).
_AXES: dict[Any, Registry[type]] = {}


def register_axis(protocol: Any, registry: Registry[type]) -> None:
    """Declare that fields annotated with ``protocol`` hold a strategy from ``registry`` (a tagged union)."""
    _AXES[protocol] = registry


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {value!r}")
    return value


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


converter.register_structure_hook(int, _strict_int)
converter.register_structure_hook(float, _strict_float)
converter.register_structure_hook(bool, _strict_bool)
converter.register_structure_hook(str, _strict_str)


def _messages(exc: BaseException, path: str) -> list[str]:
    if isinstance(exc, ConfigError):
        return [line if " @ $" in line else f"{line} @ {path}" for line in exc.lines]
    if isinstance(exc, UnknownStrategyError):
        return [f"{exc} @ {path}"]
    if isinstance(exc, (cattrs.BaseValidationError)):
        return list(cattrs.transform_error(exc, path=path))
    msg = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    return [f"{msg} @ {path}"]


def _structure_at(value: Any, tp: Any, path: str) -> Any:
    if tp in _AXES:
        return _structure_strategy(value, _AXES[tp], path)
    if isinstance(tp, type) and attrs.has(tp):
        return _structure_attrs(value, tp, path)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        axis_args = [a for a in args if a in _AXES]
        if len(axis_args) == 1:
            return _structure_strategy(value, _AXES[axis_args[0]], path)
        attrs_args = [a for a in args if isinstance(a, type) and attrs.has(a)]
        if len(attrs_args) == 1 and isinstance(value, Mapping):
            return _structure_attrs(value, attrs_args[0], path)
    try:
        return converter.structure(value, tp)
    except Exception as exc:  # cattrs and the strict hooks raise many kinds; all become path lines
        lines = [
            line if "got" in line else line.replace(" @ ", f" (got {value!r}) @ ", 1) for line in _messages(exc, path)
        ]
        raise ConfigError(lines) from None


def _structure_strategy(value: Any, registry: Registry[type], path: str) -> Any:
    if attrs.has(type(value)) and type(value) in {registry.get(n) for n in registry.names()}:
        return value
    if isinstance(value, str):
        name, rest = value, {}
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(
                f"a {registry.axis} strategy needs a 'name' key (one of {', '.join(registry.names())}) @ {path}"
            )
        name, rest = value["name"], {k: v for k, v in value.items() if k != "name"}
    else:
        raise ConfigError(f"expected a {registry.axis} strategy name or table, got {value!r} @ {path}")
    try:
        cls = registry.get(name)
    except UnknownStrategyError as exc:
        raise ConfigError(f"{exc} @ {path}.name") from None
    return _structure_attrs(rest, cls, path)


def _structure_attrs(data: Any, cls: type[T], path: str) -> T:
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a table of {cls.__name__} settings, got {data!r} @ {path}")
    attrs.resolve_types(cls)  # type: ignore[type-var]
    fields = {f.name: f for f in attrs.fields(cls) if f.init}  # type: ignore[arg-type]
    errors: list[str] = []
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "."
            valid = ", ".join(fields) or "(none)"
            errors.append(f"unknown key {key!r} for {cls.__name__}{hint} Valid keys: {valid} @ {path}.{key}")
    values: dict[str, Any] = {}
    for name, field in fields.items():
        fpath = f"{path}.{name}"
        if name not in data:
            if field.default is attrs.NOTHING:
                errors.append(f"missing required key {name!r} @ {fpath}")
            continue
        try:
            value = _structure_at(data[name], field.type, fpath)
            if field.converter is not None:
                value = field.converter(value)  # type: ignore[operator]
            if field.validator is not None:
                field.validator(None, field, value)
        except Exception as exc:
            errors.extend(_messages(exc, fpath))
            continue
        values[name] = value
    if errors:
        raise ConfigError(errors)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:
        raise ConfigError(_messages(exc, path)) from None


def structure(data: Any, cls: type[T]) -> T:
    """Build a config of type ``cls`` from plain data, raising :class:`ConfigError` with every problem found."""
    return _structure_at(data, cls, "$")  # type: ignore[no-any-return]


def unstructure(obj: Any) -> Any:
    """Plain data (dicts, lists, numbers, strings) for a config; strategies carry their registry ``name`` first."""
    if attrs.has(type(obj)):
        out: dict[str, Any] = {}
        name = getattr(type(obj), "strategy_name", None)
        if name is not None:
            out["name"] = name
        for field in attrs.fields(type(obj)):
            if field.init:
                out[field.name] = unstructure(getattr(obj, field.name))
        return out
    if isinstance(obj, (tuple, list)):
        return [unstructure(x) for x in obj]
    if isinstance(obj, Mapping):
        return {k: unstructure(x) for k, x in obj.items()}
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
