"""Shared by the zoo tests: the recorded reference layouts (``tests/data/zoo``) and the weights and input their
recorded logits were computed with."""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ZOO = Path(__file__).parent / "data" / "zoo"

Layout = list[tuple[str, tuple[int, ...]]]


@cache
def record(path: Path) -> dict[str, Any]:
    """A recorded model: its ordered ``state_dict`` keys and shapes, parameter count and reference logits."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def layout(data: dict[str, Any]) -> Layout:
    """The recorded ``(key, shape)`` pairs, in order."""
    return [(key, tuple(shape)) for key, shape in data["state_dict"]]


def filled_state_dict(keys: Layout, seed: int = 0) -> dict[str, Tensor]:
    """Deterministic, well-scaled weights for the keys and shapes ``keys``, as a trained checkpoint would hold (the
    recorded reference logits were computed after loading this filling with ``seed=0``): fan-in scaled normal conv /
    linear weights, BN scales in [0.25, 0.75), small biases and running means, running variances in [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for key, shape in keys:
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(240, dtype=torch.long)  # not read in eval mode
        elif len(shape) > 1:
            out[key] = torch.randn(shape, generator=gen) / math.prod(shape[1:]) ** 0.5
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("weight"):
            out[key] = torch.rand(shape, generator=gen) * 0.5 + 0.25
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.1
    return out


def reference_input() -> Tensor:
    """The input the recorded reference logits were computed on."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
