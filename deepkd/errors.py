"""The deepkd error family.

Every error deepkd raises on bad input derives from :class:`DeepKDError`, so callers can catch the library's
complaints in one place. Each subclass also derives from the built-in exception a Python user would expect
(``ValueError``, ``LookupError``, ...), so generic handlers keep working.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DeepKDError",
    "InputError",
    "InstallError",
    "NonFiniteLossError",
    "UnknownStrategyError",
]


class DeepKDError(Exception):
    """Base class of every error raised by deepkd."""


class ConfigError(DeepKDError, ValueError):
    """A configuration value is invalid.

    ``lines`` holds one ``message @ $.path`` entry per problem, so every error in a config is reported at once.
    """

    def __init__(self, lines: str | Iterable[str]) -> None:
        self.lines: tuple[str, ...] = (lines,) if isinstance(lines, str) else tuple(lines)
        super().__init__("\n".join(self.lines))


class UnknownStrategyError(DeepKDError, LookupError):
    """A name is not registered (a strategy, a model, a data set); the message lists the known names and the closest
    match."""

    def __init__(
        self, axis: str, name: str, known: Iterable[str], suggestion: str | None, kind: str | None = None
    ) -> None:
        self.axis, self.name, self.known, self.suggestion = axis, name, tuple(known), suggestion
        kind = kind or f"{axis} strategy"  # what the registry holds: "momentum strategy", "model", "data set"...
        kinds = kind[:-1] + "ies" if kind.endswith("y") else kind + "s"
        hint = f" Did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kinds}: {', '.join(self.known) or '(none)'}.")

    def __str__(self) -> str:  # LookupError would otherwise quote the message like a dict key
        return str(self.args[0])


class InputError(DeepKDError, ValueError):
    """A tensor handed to deepkd has the wrong shape, dtype or values (labels out of range, class mismatch...)."""


class NonFiniteLossError(DeepKDError, FloatingPointError):
    """A loss part became NaN or infinite; the message names the step and the part."""

    @classmethod
    def at(cls, step: int, epoch: int, parts: dict[str, float]) -> NonFiniteLossError:
        """The error for the first non-finite part of ``parts`` at optimizer step ``step`` of epoch ``epoch``."""
        bad = next(name for name, value in parts.items() if not math.isfinite(value))
        return cls(
            f"step {step} (epoch {epoch}): loss part {bad!r} is {parts[bad]} (parts: {parts}); pass nonfinite='skip' "
            "to skip such steps"
        )


class CheckpointError(DeepKDError, ValueError):
    """A checkpoint is corrupt, truncated, or belongs to another recipe or model."""


class DataError(DeepKDError, FileNotFoundError):
    """A data set is missing or malformed; the message says how to get it."""


class InstallError(DeepKDError, ImportError):
    """A dependency is missing or installed in a build that does not work with the others (torch and torchvision
    from different releases or indexes); the message says what to reinstall."""
