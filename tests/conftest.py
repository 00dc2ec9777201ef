"""Shared test setup: hypothesis profiles and strategies."""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "ci",
    max_examples=30,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Tests use tiny tensors: one intra-op thread is as fast, and it keeps timings sane when other processes share the
# two cores (OpenMP worker threads stall badly when a core is taken). OMP_NUM_THREADS says so to `deepkd train`
# (run in this process by the CLI tests, which would otherwise choose threads for the machine) and to subprocesses.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@st.composite
def logits_batch(
    draw: st.DrawFn,
    *,
    min_classes: int = 2,
    max_classes: int = 12,
    max_batch: int = 6,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(student logits, teacher logits, target) with a drawn batch size, class count and logit scale."""
    classes = draw(st.integers(min_classes, max_classes), label="classes")
    batch = draw(st.integers(1, max_batch), label="batch")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    s = scale if scale is not None else draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]), label="scale")
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=gen, dtype=torch.float64).float() * s
    teacher = torch.randn(batch, classes, generator=gen, dtype=torch.float64).float() * s
    target = torch.randint(0, classes, (batch,), generator=gen)
    return student, teacher, target


temperatures = st.sampled_from([1.0, 2.0, 4.0, 8.0])
