"""The algorithm checks of ``benchmarks/algorithm`` in quick mode: each runs end to end into a temporary folder,
writes its JSON and markdown with provenance, and measures what it exists to measure (digits and synthetic tensors
only: nothing is downloaded)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sklearn")  # quick mode reads scikit-learn's bundled digits

from benchmarks.algorithm import CHECKS, main
from benchmarks.algorithm.cliff import THRESHOLDS
from benchmarks.algorithm.estimator import analytic_floor, noise_floor
from deepkd.masks import DynamicMask, max_k_step
from deepkd.registry import LOSSES, MASKS


def _run(check: str, out: Path) -> dict[str, Any]:
    json_path, md_path = main([check, "--quick", "--out", str(out)])
    assert json_path == out / f"{check}-quick.json" and md_path == out / f"{check}-quick.md"
    result = json.loads(json_path.read_text())
    assert result["check"] == check and result["quick"] is True
    for key in ("git_commit", "date", "command"):
        assert key in result["provenance"]
    assert {"torch", "deepkd", "cpu_model"} <= set(result["machine"])
    text = md_path.read_text()
    assert text.startswith(f"# Algorithm check: {check}") and "Commit:" in text and "Command:" in text
    return result


def test_every_check_is_on_the_command_line() -> None:
    assert set(CHECKS) == {"estimator", "collapse", "cliff"}


def test_estimator(tmp_path: Path) -> None:
    result = _run("estimator", tmp_path)
    points = result["points"]
    assert [p["epoch"] for p in points] == result["settings"]["measure_at"]
    for p in points:
        for part in ("task", "tckd", "nckd"):
            frozen, at_frozen = p["frozen"][part], p["stream_at_frozen"][part]
            assert math.isfinite(frozen) and frozen > 0
            assert math.isfinite(p["stream_in_run"][part]) and p["stream_in_run"][part] > 0
            # the stream formula agrees with the frozen measurement when the parameters do not move
            assert 0.5 < at_frozen / frozen < 2.0
            assert p["stream_centred"][part] < 0.05  # a true 0 reads near the floor
        assert sorted(p["order_stream"]) == sorted(p["order_frozen"]) == ["nckd", "task", "tckd"]
    for row in result["noise_floor"]:
        assert abs(row["read"] - row["analytic"]) < 0.25 * row["analytic"]
        assert row["read"] < 0.02


def test_noise_floor_matches_its_closed_form() -> None:
    assert analytic_floor(10**6) == pytest.approx(0.02 / 1.98 / (1 - 0.02 / 1.98), rel=1e-6)
    (row,) = noise_floor([2000], 4000)
    assert row["read"] == pytest.approx(row["analytic"], rel=0.15)


def test_collapse(tmp_path: Path) -> None:
    result = _run("collapse", tmp_path)
    runs = result["runs"]
    assert {r["form"] for r in runs} == {"none", "renormalize", "bucket"}
    for r in runs:
        assert r["masked_classes"] == 100 - 1 - result["settings"]["k"]
        for key in ("student_masked_share", "student_argmax_masked", "teacher_masked_share", "final_test_top1"):
            assert 0.0 <= r[key] <= 1.0
    designed = result["designed"]
    # renormalised NCKD gives the masked classes no gradient: their mass stays where it started
    assert designed["renormalize"]["before"] > 0.9
    assert designed["renormalize"]["after"] == pytest.approx(designed["renormalize"]["before"], abs=0.01)
    # the bucket form pulls it to the teacher's
    assert designed["bucket"]["after"] < 0.1
    assert designed["bucket"]["after"] == pytest.approx(designed["teacher_masked_share"], abs=0.05)


def test_cliff(tmp_path: Path) -> None:
    result = _run("cliff", tmp_path)
    assert "algorithm_epoch_mask" not in MASKS and "algorithm_ramped_dkd" not in LOSSES  # registered for the run only
    runs = {r["variant"]: r for r in result["runs"]}
    bound = max_k_step(10, DynamicMask(thresholds=THRESHOLDS, horizon=result["settings"]["horizon"]))  # type: ignore[arg-type]
    for name, run in runs.items():
        if name.startswith("epoch_"):  # the earlier schedule moves K at epoch boundaries only
            assert all(step % run["steps_per_epoch"] == 0 for step in run["k_rises_after_steps"])
        elif name.startswith("dynamic_"):  # deepkd's moves it every step, by a bounded amount
            assert run["k_last"] > run["k_first"]
            assert 0 < run["max_k_rise"] <= bound
    assert runs["no_mask"]["k_first"] == runs["no_mask"]["k_last"] == 9
    early = runs["epoch_renorm_k1"]
    assert early["k_first"] == 1 and early["k_last"] == 9
    assert early["max_k_rise"] >= 6  # into Hard in one step: from Easy (1) or at most Transition's end (3)
    assert runs["epoch_renorm_k2"]["k_first"] == 2
