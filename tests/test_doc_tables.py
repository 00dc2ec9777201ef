"""README's and docs/benchmarks.md's benchmark tables are generated from the committed long report: they agree with
it, and a change of one figure in the report shows up as a stale block."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import pytest

from benchmarks import tables


def _report() -> dict:
    rng = random.Random(0)
    runs, selection = [], []
    for dataset in ("a", "b"):
        for method in ("ce", "kd", "dkd", "dot", "deepkd_default"):
            for seed in range(3):
                top1 = 0.5 + 0.01 * len(method) + rng.uniform(-0.01, 0.01)
                run = {"dataset": dataset, "method": method, "seed": seed, "lr": 0.1, "best_top1": top1}
                run.update(final_top1=top1, final_val_top1=top1 - 0.01, epoch_time=[1.0], trace=[{"step": 1}])
                runs.append(run)
            selection.append({**runs[-3], "lr": 0.2, "final_val_top1": 0.3})
            selection.append(runs[-3])
    choice = {d: {m: 0.1 for m in ("ce", "kd", "dkd", "dot", "deepkd_default")} for d in ("a", "b")}
    meta = {"profile": "long", "datasets": {}, "lr_grid": [0.1, 0.2], "lr_choice": choice}
    return {"meta": meta, "runs": runs, "selection": selection}


def _docs(root, report, module=tables, owner="benchmarks.tables") -> None:
    """Pages under ``root`` holding ``module``'s marked blocks (stale), then ``module.write`` from ``report``."""
    (root / "docs").mkdir()
    for file, names in module.BLOCKS.items():
        body = "".join(f"<!-- begin: {owner} {n} -->\nold\n<!-- end: {owner} {n} -->\n" for n in names)
        (root / file).write_text(f"# {file}\n\nprose before\n\n{body}\nprose after\n")
    module.write(root, report)


def test_the_committed_tables_agree_with_the_committed_report():
    assert tables.REPORT.exists(), "docs/bench-report-long.json is missing: python -m benchmarks.tables --publish DIR"
    assert tables.stale() == []


def test_a_changed_figure_makes_its_blocks_stale(tmp_path):
    report = _report()
    _docs(tmp_path, report)
    text = (tmp_path / "README.md").read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| KD − CE |" in text and "| kd | 0.1 |" in text
    assert tables.stale(tmp_path, report) == []
    changed = copy.deepcopy(report)
    changed["runs"][3]["final_top1"] += 0.05  # one seed of KD on set a
    assert set(tables.stale(tmp_path, changed)) == {
        "README.md: headline",
        "README.md: questions",
        "docs/benchmarks.md: long",
    }


def test_missing_markers_are_reported_not_ignored(tmp_path):
    report = _report()
    _docs(tmp_path, report)
    (tmp_path / "README.md").write_text("no tables here\n")
    assert "README.md: headline (no markers)" in tables.stale(tmp_path, report)
    with pytest.raises(KeyError, match="headline"):
        tables.replace("no tables here\n", "headline", "x")


def test_the_committed_copy_drops_only_the_traces():
    report = _report()
    small = tables.slim(report)
    assert all("trace" not in r for r in small["runs"] + small["selection"])
    assert [r["final_top1"] for r in small["runs"]] == [r["final_top1"] for r in report["runs"]]
    assert tables.long(small) == tables.long(report)


# docs/training.md's first-run output and table, README's time sentence: generated from docs/first-run.json


def _first_run_record() -> dict:
    from benchmarks import first_run

    runs = []
    for i, (label, name, args) in enumerate(first_run.RUNS):
        stderr = (
            "deepkd: reading the fashion_mnist data set\nepoch 1/3  loss 1.0\n" if name == first_run.SHOWN else None
        )
        runs.append(
            {"label": label, "name": name, "command": "deepkd " + " ".join(args), "wall_s": 60.0 + i,
             "epoch_time": [10.0, 10.04, 11.0], "test_top1": [0.8, 0.85, 0.87 + i / 1000], "stderr": stderr}
        )  # fmt: skip
    machine = {"deepkd": "0.3.0", "torch": "2.14.1", "cores": 2, "cpu_model": "a CPU"}
    return {"git_commit": "abcdef0123", "git_dirty": False, "date": "2026-12-05T12:00:00+00:00", "machine": machine,
            "load_at_start": 0.4, "load_at_end": 1.9, "runs": runs,
            "eval": {"command": "deepkd eval x/best.pt", "stdout": "student tiny_cnn: top-1 87.00%\n"}}  # fmt: skip


def test_the_committed_first_run_blocks_agree_with_the_committed_record():
    from benchmarks import first_run

    assert first_run.RECORD.exists(), "docs/first-run.json is missing: python -m benchmarks.first_run --run"
    assert first_run.stale() == []
    record = first_run.load()
    assert [r["name"] for r in record["runs"]] == [name for _, name, _ in first_run.RUNS]
    assert all(len(r["test_top1"]) == 3 for r in record["runs"])  # the configs' 3 epochs, each one recorded


def test_the_first_run_blocks_show_the_record_and_go_stale_when_it_changes(tmp_path):
    from benchmarks import first_run

    record = _first_run_record()
    _docs(tmp_path, record, first_run, first_run.OWNER)
    page = (tmp_path / "docs" / "training.md").read_text()
    assert "| student `tiny_cnn`, DeepKD | 10.0–11.0 s | 87.10% | 61 s |" in page
    assert "epoch 1/3  loss 1.0" in page and "$ deepkd eval x/best.pt\nstudent tiny_cnn: top-1 87.00%" in page
    assert "commit abcdef0" in page and "load 0.4 at the start and 1.9 at the end" in page
    assert "the teacher took 1.0 minutes and a student 1.0–1.1 minutes" in (tmp_path / "README.md").read_text()
    assert first_run.stale(tmp_path, record) == []
    record["runs"][2]["test_top1"][-1] = 0.5  # KD's last epoch
    assert first_run.stale(tmp_path, record) == ["docs/training.md: table"]
    record["eval"]["stdout"] = "other\n"
    record["runs"][0]["wall_s"] = 300.0
    assert set(first_run.stale(tmp_path, record)) == {
        "docs/training.md: table",
        "docs/training.md: eval",
        "README.md: times",
    }


def test_the_first_run_commands_name_configs_that_exist():
    from benchmarks import first_run

    for _, _, args in first_run.RUNS:
        assert (first_run.ROOT / args[1]).is_file(), args


# docs/benchmarks.md's CPU speed table: quoted by hand from docs/bench-report-default.md, checked against it here

DOCS = Path(__file__).resolve().parents[1] / "docs"
THREE_DECIMALS = re.compile(r"(?<![\d.])\d+\.\d{3}(?![\d.])")
# the table's rows and the report's setups (its "### small (cpu): ..." headings)
SPEED_SETUPS = {"small CNN": "small", "CIFAR pair": "cifar", "ResNet18": "resnet18"}


def _cpu_speed_table() -> list[list[str]]:
    page = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    section = page.split("\n## Speed\n", 1)[1].split("\n## Speed on a GPU", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def _ms_per_step(report: str, setup: str) -> dict[str, float]:
    block = report.split(f"\n### {setup} (cpu):", 1)[1].split("\n### ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| \d* \| ([\d.]+) \| [\d.]+ \|$", block, flags=re.M)
    return {name: float(ms) for name, ms in rows}


def test_the_cpu_speed_table_quotes_the_committed_default_report():
    report = (DOCS / "bench-report-default.md").read_text(encoding="utf-8")
    header, _, *rows = _cpu_speed_table()
    assert [row[0] for row in rows] == list(SPEED_SETUPS)
    quoted = [n for row in rows for cell in row[1:] for n in THREE_DECIMALS.findall(cell)]
    assert len(quoted) == 3 * 7  # the report's own ratios: seven a setup (two columns hold two)
    assert [n for n in quoted if n not in set(THREE_DECIMALS.findall(report))] == []
    # the one derived column: deepkd_fixed / official pattern from the report's ms / step rows
    derived = header.index("fixed (2 products) / official pattern")
    for row in rows:
        ms = _ms_per_step(report, SPEED_SETUPS[row[0]])
        assert row[derived] == f"{ms['deepkd_fixed'] / ms['official pattern']:.2f}", row[0]


# ------------------------------------------------------------------ the figures


def test_runs_evaluated_once_are_drawn_per_method_not_as_one_point_curves(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.accuracy import plots

    drawn: list[tuple[str, str]] = []
    real = plots.final_plot
    monkeypatch.setattr(
        plots, "final_plot", lambda c, key, what, name: drawn.append((key, what)) or real(c, key, what, name)
    )
    final = [
        {"dataset": "d", "method": m, "seed": s, "test_top1": [0.5 + s / 100]} for m in ("kd", "dkd") for s in (0, 1)
    ]
    path = plots.curves_plot(plots.Canvas(final, tmp_path, plt), "test_top1", "t", "test top-1 (%)", "accuracy.png")
    assert path.is_file() and drawn == [("test_top1", "test top-1 after the last epoch")]
    per_epoch = [dict(r, test_top1=[0.4, 0.5]) for r in final]
    plots.curves_plot(plots.Canvas(per_epoch, tmp_path, plt), "test_top1", "t", "test top-1 (%)", "accuracy.png")
    assert len(drawn) == 1  # curves per epoch stay curves
    plt.close("all")


def test_every_committed_figure_is_shown_by_a_page():
    # every figure under docs/img/ is shown by a page; nothing orphaned from an earlier run stays
    docs = tables.ROOT / "docs"
    shown = set(re.findall(r"img/(?:long|default)/[\w.-]+\.png", (tables.ROOT / "README.md").read_text()))
    for page in docs.glob("*.md"):
        shown |= set(re.findall(r"img/(?:long|default)/[\w.-]+\.png", page.read_text(encoding="utf-8")))
    committed = {p.relative_to(docs).as_posix() for p in (docs / "img").rglob("*.png")}
    assert committed == {s.removeprefix("docs/") for s in shown}


def test_publish_copies_the_figures_its_report_shows_and_drops_earlier_ones(tmp_path):
    run = tmp_path / "run"
    (run / "plots").mkdir(parents=True)
    for name in ("accuracy.png", "dynamics.png", "gsnr.png", "validation.png"):
        (run / "plots" / name).write_bytes(name.encode())
    (run / "report.md").write_text("# report\n\n![a](plots/accuracy.png)\n\n![d](plots/dynamics.png)\n")
    (run / "accuracy.json").write_text('{"meta": {"profile": "default"}, "runs": []}')
    old = tmp_path / "root" / "docs" / "img" / "default"
    old.mkdir(parents=True)
    (old / "mask.png").write_bytes(b"from an earlier run")
    tables.publish(run, tmp_path / "root")
    assert sorted(p.name for p in old.iterdir()) == ["accuracy.png", "dynamics.png"]
    text = (tmp_path / "root" / "docs" / "bench-report-default.md").read_text()
    assert "](img/default/accuracy.png)" in text and "plots/" not in text
