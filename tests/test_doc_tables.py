"""README's and docs/benchmarks.md's benchmark tables are generated from the committed long report: they agree with
it, and a change of one figure in the report shows up as a stale block."""

from __future__ import annotations

import copy
import random

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


def _docs(root, report) -> None:
    (root / "docs").mkdir()
    for file, names in tables.BLOCKS.items():
        body = "".join(
            f"<!-- begin: benchmarks.tables {n} -->\nold\n<!-- end: benchmarks.tables {n} -->\n" for n in names
        )
        (root / file).write_text(f"# {file}\n\nprose before\n\n{body}\nprose after\n")
    tables.write(root, report)


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
