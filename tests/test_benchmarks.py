"""The benchmark's statistics and the recipes it compares (the benchmark itself runs in CI's smoke profile)."""

from __future__ import annotations

import math

import pytest

from benchmarks import accuracy


def _run(method: str, seed: int, best: float, final: float) -> dict:
    return {
        "dataset": "d",
        "method": method,
        "seed": seed,
        "best_top1": best,
        "final_top1": final,
        "epoch_time": [1.0, 2.0],
    }


def test_summary_pairs_differences_by_seed():
    runs = [_run("kd", 0, 0.50, 0.4), _run("kd", 1, 0.60, 0.5), _run("x", 0, 0.55, 0.5), _run("x", 1, 0.62, 0.6)]
    rows = {r["method"]: r for r in accuracy.summarise(runs)["d"]}
    assert rows["x"]["best"][0] == pytest.approx(0.585)
    assert rows["x"]["best"][1] == pytest.approx(math.sqrt(((0.55 - 0.585) ** 2 + (0.62 - 0.585) ** 2) / 1))
    diffs = [0.05, 0.02]
    assert rows["x"]["vs_kd"][0] == pytest.approx(0.035)
    assert rows["x"]["vs_kd"][1] == pytest.approx(math.sqrt(sum((d - 0.035) ** 2 for d in diffs)) / math.sqrt(2))
    assert rows["kd"]["vs_kd"][0] == 0.0
    assert rows["x"]["epoch_seconds"] == 1.5


def test_every_method_is_a_valid_recipe_with_the_axis_it_claims():
    book = accuracy.recipes(classes=100, epochs=3, steps_per_epoch=40)
    assert set(book) == set(accuracy.METHODS)
    assert book["static_20"].mask.k == 20 and book["static_30"].mask.k == 30
    assert book["gsnr_nomask"].momentum.interval == 10
    assert book["dynamic_sgd"].plan().groups == (("task", "tckd", "nckd"),)
    assert book["dkd"].loss.warmup == 1
    assert book["deepkd_official"].plan().quirks
    assert accuracy.recipes(classes=10, epochs=240, steps_per_epoch=40)["dkd"].loss.warmup == 20


def test_speed_setup_runs_every_variant_with_overrides():
    """The code path the CPU and GPU speed benchmarks share, on a tiny setup."""
    from benchmarks import speed

    profile = {"setups": {"small": (4, 1, 1)}, "overrides": {"small": {"shape": (1, 12, 12)}}}
    res = speed.bench_setup("small", profile, device="cpu")
    assert res["input"] == [1, 12, 12] and res["batch"] == 4
    expected = {*speed.RECIPES, "floor[3 products]", "official pattern", "update only[foreach]"}
    assert expected <= set(res["seconds_per_step"])
    assert all(t > 0 for t in res["seconds_per_step"].values())
    assert res["products"] == {
        "kd": 1,
        "dkd": 1,
        "dot": 2,
        "deepkd_fixed": 2,
        "deepkd_fixed3": 3,
        "deepkd_gsnr": 3,
        "deepkd_official": 3,
    }
    assert res["memory"]["deepkd_gsnr"]["gradients"] == 3 * res["param_bytes"]
    assert "official pattern" in speed.markdown([res])
