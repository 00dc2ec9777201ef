"""The benchmark's statistics and the recipes it compares (the benchmark itself runs in CI's smoke profile)."""

from __future__ import annotations

import json
import math

import attrs
import pytest
import torch
from torch.utils.data import TensorDataset

import deepkd
from benchmarks import accuracy, provenance
from benchmarks.accuracy import cli, data, methods, pool, profiles, stats, teachers


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
    rows = {r["method"]: r for r in stats.summarise(runs)["d"]}
    assert rows["x"]["best"][0] == pytest.approx(0.585)
    assert rows["x"]["best"][1] == pytest.approx(math.sqrt(((0.55 - 0.585) ** 2 + (0.62 - 0.585) ** 2) / 1))
    diffs = [0.05, 0.02]
    assert rows["x"]["vs_kd"][0] == pytest.approx(0.035)
    assert rows["x"]["vs_kd"][1] == pytest.approx(math.sqrt(sum((d - 0.035) ** 2 for d in diffs)) / math.sqrt(2))
    assert rows["kd"]["vs_kd"][0] == 0.0
    assert rows["x"]["epoch_seconds"] == 1.5


def test_every_method_is_a_valid_recipe_with_the_axis_it_claims():
    skipped: dict[str, str] = {}
    book = methods.recipes(classes=100, epochs=3, steps_per_epoch=40, skipped=skipped)
    assert skipped == {}  # every candidate builds with this deepkd and differs from the default
    assert set(book) == {*methods.METHODS, *methods.LONG_METHODS, *methods.ABLATIONS, *methods.LONG_CANDIDATES}
    assert all(recipe.name == name for name, recipe in book.items())
    assert book["static_20"].mask.k == 20 and book["static_30"].mask.k == 30
    assert book["gsnr_nomask"].momentum.interval == 10
    assert book["dynamic_sgd"].plan().groups == (("task", "tckd", "nckd"),)
    assert book["dkd"].loss.warmup == 1
    assert book["deepkd_official"].plan().apply is deepkd.momentum.update_reference_quirks
    assert methods.recipes(classes=10, epochs=240, steps_per_epoch=40)["dkd"].loss.warmup == 20


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


REQUIRED_LONG = {
    "ce",
    "kd",
    "dkd",
    "dot",
    "deepkd_official",
    "deepkd_fixed",  # DeepKD paper-intent
    "deepkd_default",
    "default_no_gsnr",
    "default_no_mask",
    "default_preserve_step",
    "dot_preserve_step",
}


def test_long_profile_is_the_distillation_regime():
    profile = profiles.PROFILES["long"]
    assert set(profile["methods"]) >= REQUIRED_LONG
    assert set(profile["datasets"]) == {"fashion_mnist", "fashion_mnist_pairs"}
    for sizes in profile["datasets"].values():
        # validation held out of the whole training split; the teacher trains on all the rest
        assert sizes["val"] >= 1000 and sizes["teacher_train"] == "all" and sizes["test"] is None
    assert profile["seeds"] >= 5 and profile["lr"] == "grid" and profile["teacher_epochs"] >= 10
    assert len(profiles.LR_GRID) >= 3 and 0.1 in profiles.LR_GRID
    # CIFAR's 240-epoch step schedule, scaled: x0.1 after 62.5, 75 and 87.5 % of the run
    assert profiles.step_schedule(240).milestones == (150, 180, 210)
    assert profiles.schedule_for(profile).milestones == (15, 18, 21) and profile["epochs"] == 24
    # a real DKD warm-up: 20 of 240 epochs, so 2 of 24 (half weight in epoch 1); short runs get none
    book = methods.recipes(classes=10, epochs=profile["epochs"], steps_per_epoch=20)
    assert book["dkd"].loss.warmup == 2 and book["dkd"].loss.warm(1) == 0.5
    assert book["deepkd_default"].loss.warmup == 2
    assert methods.dkd_warmup(3) == 1 and methods.dkd_warmup(240) == 20
    # the step-size ablation changes only preserve_step
    assert book["default_preserve_step"].momentum == attrs.evolve(book["deepkd_default"].momentum, preserve_step=True)
    assert book["dot_preserve_step"].momentum == attrs.evolve(book["dot"].momentum, preserve_step=True)
    # the default profile is its miniature: the same teachers' data, validation split and methods
    default = profiles.PROFILES["default"]
    assert default["methods"] is None or set(default["methods"]) == set(profile["methods"])
    assert default["lr"] == "chosen" and default["teacher_epochs"] == profile["teacher_epochs"]
    for name, sizes in default["datasets"].items():
        assert sizes["val"] == profile["datasets"][name]["val"] and sizes["teacher_train"] == "all"


def test_the_regimes_teacher_sees_every_training_image_but_the_validation_ones():
    split = data.prepare("digits", {"train": 300, "val": 200, "test": 100, "teacher_train": "all"})
    rows = lambda ds: {tuple(r.tolist()) for r in ds.tensors[0].flatten(1)}
    # stratified: round(share · n_c) per class, so about 200 (Fashion-MNIST's 10 x 6,000 give exactly 2,000)
    assert abs(len(split.val) - 200) <= 5 and len(split.train) == 300 and len(split.test) == 100
    whole = len(deepkd.data.get_dataset("digits")[0])
    assert len(split.teacher_train) + len(split.val) == whole  # the whole training split
    assert rows(split.train) <= rows(split.teacher_train)
    assert not rows(split.val) & rows(split.teacher_train)
    # the validation split does not depend on the students' size, so profiles of different sizes share a teacher
    small = data.prepare("digits", {"train": 100, "val": 200, "test": 100, "teacher_train": "all"})
    assert torch.equal(small.val.tensors[0], split.val.tensors[0])
    assert torch.equal(small.teacher_train.tensors[0], split.teacher_train.tensors[0])
    long, default = (profiles.PROFILES[p] for p in ("long", "default"))
    keys = [
        teachers.cache_key("digits", {**prof, "datasets": {"digits": {"val": 200}}}, split.teacher_train)
        for prof in (long, default)
    ]
    assert keys[0] == keys[1]


def test_pairs_validation_shares_no_source_image_with_training():
    labels = torch.arange(100).repeat(6)

    class Pairs:
        source_indices = torch.stack([torch.arange(600), (torch.arange(600) + 1) % 600], dim=1)

    rest, val = data._held_out(Pairs(), labels, 100)
    assert len(val) == 100
    used = set(Pairs.source_indices[val].flatten().tolist())
    assert not used & set(Pairs.source_indices[rest].flatten().tolist())


def test_default_follows_the_library_and_each_alternative_changes_one_setting():
    book = methods.recipes(classes=10, epochs=24, steps_per_epoch=40)
    library = deepkd.compose()
    default = book["deepkd_default"]
    for axis in ("loss", "momentum", "mask"):
        assert type(getattr(default, axis)) is type(getattr(library, axis))
    # only the run-length adjustments differ from the library's defaults
    assert default.loss == attrs.evolve(library.loss, warmup=2)
    assert default.momentum == attrs.evolve(library.momentum, interval=10)
    assert default.mask == library.mask
    d = default.to_dict()
    assert methods.describe_change(d, book["default_no_gsnr"].to_dict()).startswith("momentum: ")
    assert book["default_no_gsnr"].plan().groups == (("task", "tckd", "nckd"),)
    assert methods.describe_change(d, book["default_no_mask"].to_dict()) == "mask: dynamic → none"
    assert book["default_kd_loss"].loss == deepkd.KD(temperature=4.0, w_ce=0.1, w_kd=0.9)
    for name in (*methods.ABLATIONS, *methods.LONG_CANDIDATES):
        change = methods.describe_change(d, book[name].to_dict())
        assert change != "none" and ";" not in change, (name, change)  # one setting, or one axis swapped


def test_validation_split_is_stratified_disjoint_and_deterministic():
    labels = torch.arange(10).repeat_interleave(torch.tensor([50, 40, 30, 20, 10, 50, 40, 30, 20, 10]))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    train, val = data.validation_indices(labels, 0.1, seed=3)
    assert len(set(train.tolist()) & set(val.tolist())) == 0
    assert sorted(train.tolist() + val.tolist()) == list(range(len(labels)))
    for c, n in enumerate([50, 40, 30, 20, 10, 50, 40, 30, 20, 10]):
        assert int((labels[val] == c).sum()) == round(0.1 * n)
    again = data.validation_indices(labels, 0.1, seed=3)
    assert torch.equal(again[0], train) and torch.equal(again[1], val)
    assert not torch.equal(data.validation_indices(labels, 0.1, seed=4)[1], val)

    x = torch.arange(len(labels), dtype=torch.float32)[:, None]
    rest, held = data.split_validation(TensorDataset(x, labels), 0.1, seed=3)
    assert held is not None and len(held) == len(val) and len(rest) + len(held) == len(labels)
    assert set(rest.tensors[0].flatten().tolist()).isdisjoint(held.tensors[0].flatten().tolist())
    assert torch.equal(held.tensors[1], labels[val])
    whole = TensorDataset(x, labels)
    assert data.split_validation(whole, 0.0) == (whole, None)
    with pytest.raises(ValueError):
        data.validation_indices(labels, 1.0)


def test_prepare_keeps_validation_images_from_the_students_and_the_teacher():
    split = data.prepare("digits", {"train": 600, "test": 100, "teacher_train": 1000}, 0.2)
    assert split.val is not None and len(split.train) + len(split.val) == 600 and len(split.test) == 100
    # the teacher's draw of 1000 holds the students' 600 (one seeded permutation); less the validation images
    assert len(split.teacher_train) == 1000 - len(split.val)
    rows = lambda ds: {tuple(r.tolist()) for r in ds.tensors[0].flatten(1)}
    assert rows(split.train) <= rows(split.teacher_train)
    assert not rows(split.val) & rows(split.teacher_train) and not rows(split.val) & rows(split.train)
    again = data.prepare("digits", {"train": 600, "test": 100, "teacher_train": 1000}, 0.2)
    assert torch.equal(again.val.tensors[0], split.val.tensors[0])
    # without a validation split or a teacher size this is what load() gives, for students and teacher alike
    plain = data.prepare("digits", {"train": 600, "test": 100})
    train, test, classes = data.load("digits", {"train": 600, "test": 100})
    assert plain.val is None and plain.classes == classes == 10
    assert torch.equal(plain.train.tensors[0], train.tensors[0]) and torch.equal(plain.test.tensors[1], test.tensors[1])
    assert torch.equal(plain.teacher_train.tensors[0], train.tensors[0])


def test_paired_difference_pairs_by_seed():
    mean, se, n = stats.paired_difference({0: 0.5, 1: 0.7, 2: 0.6, 5: 0.9}, {0: 0.4, 1: 0.5, 2: 0.6, 3: 0.1})
    diffs = [0.1, 0.2, 0.0]  # seeds 3 and 5 have no pair
    assert n == 3 and mean == pytest.approx(0.1)
    assert se == pytest.approx(math.sqrt(sum((d - 0.1) ** 2 for d in diffs) / 2) / math.sqrt(3))
    one = stats.paired_difference({0: 0.5}, {0: 0.25})
    assert one[0] == 0.25 and math.isnan(one[1]) and one[2] == 1
    assert math.isnan(stats.paired_difference({0: 0.5}, {1: 0.5})[0])


def test_learning_rates_chosen_on_validation_end_to_end_on_digits(tmp_path, monkeypatch):
    """The long profile's code path on digits: a grid of two learning rates on seed 0, the choice on validation,
    further seeds at the choice, the paired-differences and learning-rate tables, and a report re-rendered from its
    JSON alone."""
    profile = dict(profiles.PROFILES["long"])
    profile.update(
        datasets={"digits": {"train": 300, "val": 200, "test": 200, "teacher_train": "all"}},
        epochs=2,
        seeds=2,
        teacher_epochs=1,
        workers=1,
        methods=["ce", "kd", "dkd", "deepkd_default", "default_preserve_step"],
    )
    monkeypatch.setitem(profiles.PROFILES, "tiny_long", profile)
    monkeypatch.setattr(cli, "LR_GRID", (0.02, 0.2))
    out = tmp_path / "out"
    report = accuracy.main(["--profile", "tiny_long", "--out", str(out), "--cache", str(tmp_path / "cache")])
    selection, runs, choice = report["selection"], report["runs"], report["meta"]["lr_choice"]["digits"]
    assert sorted((r["method"], r["lr"]) for r in selection) == sorted(
        (m, lr) for m in profile["methods"] for lr in (0.02, 0.2)
    )
    assert {r["seed"] for r in selection} == {0}
    for method, lr in choice.items():
        vals = {r["lr"]: r["final_val_top1"] for r in selection if r["method"] == method}
        assert vals[lr] == max(vals.values())
        mine = [r for r in runs if r["method"] == method]
        assert sorted(r["seed"] for r in mine) == [0, 1] and {r["lr"] for r in mine} == {lr}
    assert all(len(r["test_top1"]) == 1 and r["best_top1"] == r["final_top1"] for r in runs)  # evaluated once
    md = (out / "accuracy.md").read_text()
    for heading in ("### Paired differences", "### Learning rates chosen on validation", "| KD − CE |", "| DKD − KD |"):
        assert heading in md
    (out / "accuracy.md").unlink()
    cli.main(["--render", str(out)])
    assert (out / "accuracy.md").read_text() == md


def test_data_held_on_the_device_gives_the_cpu_loaders_batches():
    """``--device cuda`` holds the data on the GPU (deepkd.data.device_loaders); the same path on the CPU gives the
    CPU loaders' batches for the same seed, indices included (the cached teacher logits are read by them)."""
    x = torch.randn(300, 1, 8, 8)
    train, test = TensorDataset(x, torch.arange(300) % 10), TensorDataset(x[:50], torch.arange(50) % 10)
    (cpu, cpu_test), (dev, dev_test) = (data.loaders(train, test, True, on_device=d) for d in (False, True))
    for loader in (cpu, dev):
        deepkd.data.seed_loader(loader, 3, 0)
    for a, b in zip(cpu, dev, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert torch.equal(next(iter(cpu_test))[0], next(iter(dev_test))[0])


def test_choose_lrs_takes_the_best_validation_and_never_a_diverged_run():
    runs = [
        {"dataset": "d", "method": "m", "lr": 0.1, "final_val_top1": 0.5},
        {"dataset": "d", "method": "m", "lr": 0.2, "final_val_top1": 0.6},
        {"dataset": "d", "method": "m", "lr": 0.4, "error": "NonFiniteLossError()"},
        {"dataset": "d", "method": "n", "lr": 0.1, "final_val_top1": 0.7},
        {"dataset": "d", "method": "n", "lr": 0.2, "final_val_top1": 0.7},
    ]
    assert cli.choose_lrs(runs) == {"d": {"m": 0.2, "n": 0.1}}  # a tie goes to the smaller rate


def test_validation_split_machinery_end_to_end_on_digits(tmp_path, monkeypatch):
    """A profile with a validation share of the training draw, one learning rate and per-epoch evaluation (the
    selection table, the dynamics plot) on digits: 2 epochs, 2 seeds, a handful of methods."""
    profile = dict(profiles.PROFILES["long"])
    candidate = methods.LONG_CANDIDATES[0]
    profile.update(
        datasets={"digits": {"train": 600, "test": 200}},
        epochs=2,
        seeds=2,
        teacher_epochs=1,
        workers=1,
        val_share=0.2,
        lr=None,
        evaluate="epoch",
        methods=["kd", "dkd", "deepkd_default", "default_no_mask", candidate],
    )
    monkeypatch.setitem(profiles.PROFILES, "tiny_long", profile)
    out = tmp_path / "out"
    argv = ["--profile", "tiny_long", "--out", str(out), "--cache", str(tmp_path / "cache")]
    report = accuracy.main(argv)
    runs = report["runs"]
    assert len(runs) == 10 and not [r for r in runs if "error" in r]
    assert all(len(r["val_top1"]) == len(r["test_top1"]) == 2 and r["lr"] == profiles.LR for r in runs)
    sizes = report["meta"]["datasets"]["digits"]
    assert sizes["val"] + sizes["train"] == 600 and abs(sizes["val"] - 120) <= 5  # 20 %, rounded per class
    md = (out / "accuracy.md").read_text()
    for column in ("final test − KD (pp)", "final test − DKD (pp)", "final val top-1 (%)", "best test top-1 (%)"):
        assert column in md
    assert "### Defaults chosen on validation" in md and f"`{candidate}`" in md
    selection = md.split("### Defaults chosen on validation")[1].split("Methods:")[0]
    rows = [line for line in selection.splitlines() if line.startswith("|")]
    assert "Δ val" in rows[0] and "test" not in rows[0]  # the selection table shows validation figures only
    assert [r for r in rows if r.startswith(f"| `{candidate}`")]
    saved = json.loads((out / "accuracy.json").read_text())
    assert saved["runs"][0]["recipe"] == runs[0]["recipe"]
    assert (out / "plots" / "dynamics.png").exists() and (out / "plots" / "validation.png").exists()
    # the report says where it comes from: commit, date, command line, machine and versions
    origin, machine = saved["meta"]["provenance"], saved["meta"]["machine"]
    assert {"git_commit", "git_dirty", "date", "command"} <= set(origin) and origin["arguments"] == argv
    assert machine["deepkd"] == deepkd.__version__ and machine["torch"] == torch.__version__
    assert machine["cpu_model"] and machine["cores"] >= 1 and machine["threads"] >= 1
    assert machine["torchvision"] and machine["numpy"] and machine["python"]


def test_accuracy_package_keeps_its_entry_points():
    """``from benchmarks import accuracy`` gives the command line and the profiles; ``python -m`` finds it."""
    import importlib.util

    from benchmarks.accuracy import cli

    assert accuracy.main is cli.main and accuracy.PROFILES is profiles.PROFILES
    assert accuracy.recipes is methods.recipes and accuracy.METHODS == methods.METHODS
    assert importlib.util.find_spec("benchmarks.accuracy.__main__") is not None


def test_report_header_names_commit_date_command_machine_and_versions(monkeypatch):
    from datetime import datetime

    from benchmarks import run

    origin, machine = provenance.provenance(), provenance.machine()
    assert datetime.fromisoformat(origin["date"]).tzinfo is not None and origin["command"]
    header = run.report_header("smoke", origin, machine, 90.0, {"speed": 30.0, "accuracy": 60.0})
    assert header.startswith("# deepkd benchmark report (smoke)")
    assert f"`{origin['command']}`" in header and "Wall time 1.5 min (speed 0.5 min, accuracy 1.0 min)" in header
    for key in ("cpu_model", "cores", "threads", "python", "torch", "torchvision", "numpy", "deepkd"):
        assert str(machine[key]) in header, key
    monkeypatch.setenv("DEEPKD_COMMIT", "0123abc")  # a copy without git history names its commit
    assert provenance.commit() == ("0123abc", None)
    header = run.report_header("smoke", provenance.provenance(), machine, 1.0, {})
    assert "Commit: 0123abc (uncommitted changes unknown)" in header


def test_runs_in_worker_processes_equal_runs_in_this_process():
    """Two spawned workers of one thread give exactly the runs one thread gives here (each run seeds itself)."""
    train, test, classes = data.load("digits", {"train": 300, "test": 100})
    train, val = data.split_validation(train, 0.2)
    torch.manual_seed(0)
    teacher = profiles.model("digits", "teacher", classes, train.tensors[0][:1]).eval()
    logits = teacher(train.tensors[0]).detach()
    book = methods.recipes(classes, 1, 3)
    schedule = profiles.schedule_for({"schedule": "step", "epochs": 1})
    jobs = [("digits", m, book[m], 0, 1, schedule) for m in ("kd", "deepkd_default")]
    contexts = {"digits": {"data": (train, test, classes), "val": val, "teacher": teacher, "logits": logits}}
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        here = pool.execute(jobs, contexts, workers=1, threads=1, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    there = pool.execute(jobs, contexts, workers=2, threads=1, log=lambda _: None)
    key = ("dataset", "method", "seed", "test_top1", "val_top1", "train_top1", "trace")
    assert [[r[k] for k in key] for r in here] == [[r[k] for k in key] for r in there]


def test_gpu_benchmark_references_compute_deepkds_losses():
    """The plain-PyTorch references of benchmarks.gpu do the maths of deepkd's KD and DKD (mdistiller's)."""
    from benchmarks import gpu

    torch.manual_seed(0)
    s, t, y = torch.randn(16, 100), torch.randn(16, 100), torch.randint(0, 100, (16,))
    dkd = gpu.RECIPES["deepkd"].loss.parts(s, t, y, epoch=gpu.EPOCH, keep=None)
    assert torch.allclose(torch.stack(gpu.dkd_parts(s, t, y)), torch.stack([dkd[k] for k in ("task", "tckd", "nckd")]))
    kd = gpu.RECIPES["kd"].loss.parts(s, t, y, epoch=gpu.EPOCH, keep=None)
    assert torch.allclose(gpu.kd_loss(s, t, y), sum(kd.values()))


def test_gpu_benchmark_quick_run_on_the_cpu(tmp_path):
    """benchmarks.gpu end to end at smoke sizes on the CPU: every eager variant timed, the CUDA-only ones recorded
    as errors (or, for deepkd's capture, as the reason it ran eagerly), the syncs skipped, both files written."""
    from benchmarks import gpu

    out = tmp_path / "gpu"
    args = ["--device", "cpu", "--quick", "--out", str(out), "--budget", "600", "--setups", "cifar64,imagenet"]
    report = gpu.main([*args, "--epoch-images", "128"])
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["machine"]["deepkd"] == deepkd.__version__ and saved["machine"]["command"].endswith("128")
    eager = {"plain KD", "floor-3", "kd", "dkd", "dot", "deepkd", "deepkd[batched]", "official"}
    assert [r["setup"] for r in report["steps"]] == ["cifar64", "imagenet"]
    for res in saved["steps"]:
        assert eager <= set(res["ms_per_step"]) and all(ms > 0 for ms in res["ms_per_step"].values())
        assert set(res["errors"]) == {"plain KD[captured]", "floor-3[captured]"}
        assert "CUDA" in res["capture"]["deepkd[captured]"]["reason"]
        assert res["ratios"]["deepkd / floor-3"] > 0 and res["ratios"]["plain KD captured / plain"] is None
    assert "skipped" in saved["syncs"]
    rows = saved["epochs"]["variants"]
    assert len(rows) == 12 and all(("epoch_s" in r) != ("error" in r) for r in rows)
    assert all(r["epoch_s"] > 0 and r["steps"] == 2 for r in rows if "[captured]" not in r["variant"])
    md = (out / "gpu.md").read_text()
    assert "## Step time" in md and "## Syncs per step" in md and "## Epoch time" in md


def test_the_operator_count_sees_what_a_step_dispatches_and_skips_views():
    from benchmarks.ops import count_ops

    w = torch.nn.Parameter(torch.randn(4, 3))

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = ((x @ w).t().reshape(-1) - y).square().mean()  # t and reshape are views: not counted
        loss.backward()

    total, top = count_ops(step, torch.randn(2, 4), torch.randn(6))
    assert total > 4 and "aten::t" not in top and "aten::reshape" not in top and "aten::mm" in top
