"""docs/choose-a-recipe.md: its figures are the long report's, copied exactly, so that a new report shows up here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "choose-a-recipe.md"
REPORT = ROOT / "docs" / "bench-report-long.md"
FIGURE = re.compile(r"[+-]?\d+\.\d+ ± \d+\.\d+")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _accuracy_tables() -> dict[str, dict[str, list[str]]]:
    """``{data set: {method: [final test, final test − KD, final test − DKD]}}`` from the report's accuracy tables."""
    tables: dict[str, dict[str, list[str]]] = {}
    dataset = None
    for line in REPORT.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"### (\w+): ", line)
        if heading:
            dataset = heading.group(1)
            tables[dataset] = {}
        elif dataset and line.startswith("| ") and not line.startswith("| method") and not line.startswith("| ---"):
            cells = _cells(line)
            if len(cells) == 9:  # method, lr, runs, best test, final test, final val, − KD, − DKD, s / epoch
                tables[dataset][cells[0]] = [cells[4], cells[6], cells[7]]
    return tables


def test_the_standing_table_copies_the_report():
    report = _accuracy_tables()
    assert set(report) == {"fashion_mnist", "fashion_mnist_pairs"}
    rows = [_cells(line) for line in PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    standing = [row for row in rows if len(row) == 8 and row[1].startswith("`")]
    assert len(standing) == 10
    for row in standing:
        method = row[1].strip("`")
        assert row[2:] == report["fashion_mnist"][method] + report["fashion_mnist_pairs"][method], method


def test_every_figure_of_the_page_is_in_the_report():
    report = REPORT.read_text(encoding="utf-8")
    figures = FIGURE.findall(PAGE.read_text(encoding="utf-8"))
    assert len(figures) > 60
    assert [f for f in figures if f not in report] == []
