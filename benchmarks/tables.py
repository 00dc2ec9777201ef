"""README's and docs/benchmarks.md's benchmark tables, generated from the committed long-profile report.

The tables live between marker lines ``<!-- begin: benchmarks.tables NAME -->`` and ``<!-- end: benchmarks.tables
NAME -->``; everything between them is generated from ``docs/bench-report-long.json`` and nothing else, so a table
cannot drift from the report it quotes (``tests/test_doc_tables.py`` fails when they disagree)::

    python -m benchmarks.tables                  # check: exit status 1, naming each block that differs
    python -m benchmarks.tables --write          # rewrite every block from the committed report
    python -m benchmarks.tables --publish DIR    # commit a finished long (or default) run, DIR from `nox -s bench
                                                 # -- --profile long --out DIR`: its report.md, the plots it shows
                                                 # and (long) a slim accuracy.json into docs/, then rewrite the blocks
    python -m benchmarks.tables --plots          # redraw the long report's accuracy figures from its JSON
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from benchmarks.accuracy.report import markdown, paired, pm, questions_table
from benchmarks.accuracy.stats import summarise

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "bench-report-long.json"
REPORT_MD = ROOT / "docs" / "bench-report-long.md"
IMAGES = ROOT / "docs" / "img" / "long"

# the methods of README's headline table, in its order
HEADLINE = ("ce", "kd", "dkd", "dot", "deepkd_default", "deepkd_official", "deepkd_fixed")


def headline(report: Mapping[str, Any]) -> str:
    """Per data set: each headline method's learning rate, final test top-1 (mean ± std over seeds) and its paired
    difference from DKD (mean ± s.e.)."""
    summary = summarise(report["runs"])
    choice = report["meta"].get("lr_choice", {})
    lines = ["| method |" + "".join(f" {d}: lr | {d}: test top-1 (%) | {d}: − DKD (pp) |" for d in summary)]
    lines.append("| --- |" + " ---: | ---: | ---: |" * len(summary))
    rows = {d: {r["method"]: r for r in summary[d]} for d in summary}
    for method in HEADLINE:
        cells = []
        for d in summary:
            row = rows[d].get(method)
            if row is None:
                cells.append("– | – | –")
                continue
            lr = choice.get(d, {}).get(method, row.get("lr"))
            diff = "0" if method == "dkd" else pm(paired(rows[d], method, "dkd")[:2], sign=True)
            cells.append(f"{lr:g} | {pm(row['final'])} | {diff}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seeds = max(r["runs"] for d in summary for r in summary[d])
    return "\n".join(lines) + f"\n\n{seeds} seeds a method; the full tables are in docs/bench-report-long.md."


def questions(report: Mapping[str, Any]) -> str:
    """The report's paired differences (:func:`benchmarks.accuracy.report.questions_table`)."""
    return questions_table(summarise(report["runs"]))


def long(report: Mapping[str, Any]) -> str:
    """The whole accuracy report of the long profile, as ``accuracy.md`` has it."""
    return markdown(summarise(report["runs"]), report["meta"], report.get("selection", []))


GENERATORS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "headline": headline,
    "questions": questions,
    "long": long,
}
# which blocks each file holds
BLOCKS: dict[str, tuple[str, ...]] = {"README.md": ("headline", "questions"), "docs/benchmarks.md": ("long",)}


def _pattern(name: str, owner: str) -> re.Pattern[str]:
    tag = re.escape(f"{owner} {name}")
    return re.compile(rf"(<!-- begin: {tag} -->\n)(.*?)(<!-- end: {tag} -->)", re.S)


def block(text: str, name: str, owner: str = "benchmarks.tables") -> str | None:
    """The text between ``name``'s markers in ``text`` (None when the markers are absent). ``owner`` is the module
    that generates the block, the first word of its markers."""
    match = _pattern(name, owner).search(text)
    return None if match is None else match.group(2)


def replace(text: str, name: str, body: str, owner: str = "benchmarks.tables") -> str:
    """``text`` with ``name``'s block holding ``body``; a :class:`KeyError` when the markers are absent."""
    if block(text, name, owner) is None:
        raise KeyError(f"no '<!-- begin: {owner} {name} -->' ... '<!-- end: {owner} {name} -->' markers")
    return _pattern(name, owner).sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(3), text, count=1)


def load_report(path: Path = REPORT) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: publish a long run first (python -m benchmarks.tables --publish)")
    return json.loads(path.read_text())


def stale(root: Path = ROOT, report: Mapping[str, Any] | None = None) -> list[str]:
    """Every block whose text differs from what the report generates, as ``file: block`` (missing markers too)."""
    report = report if report is not None else load_report()
    out = []
    for file, names in BLOCKS.items():
        text = (root / file).read_text()
        for name in names:
            current = block(text, name)
            if current is None:
                out.append(f"{file}: {name} (no markers)")
            elif current.rstrip("\n") != GENERATORS[name](report).rstrip("\n"):
                out.append(f"{file}: {name}")
    return out


def write(root: Path = ROOT, report: Mapping[str, Any] | None = None) -> None:
    """Rewrite every block from the report."""
    report = report if report is not None else load_report()
    for file, names in BLOCKS.items():
        path = root / file
        text = path.read_text()
        for name in names:
            text = replace(text, name, GENERATORS[name](report))
        path.write_text(text)


def slim(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report without the runs' optimizer traces (the committed copy; everything the tables need stays)."""

    def strip(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "trace"} for r in runs]

    out = {k: v for k, v in report.items() if k not in ("runs", "selection", "plots")}
    out["runs"] = strip(report["runs"])
    if report.get("selection"):
        out["selection"] = strip(report["selection"])
    return out


def publish(run_dir: Path, root: Path = ROOT) -> None:
    """Commit a finished run of the long or the default profile: its ``report.md`` as
    ``docs/bench-report-PROFILE.md`` (image paths into ``docs/img/PROFILE/``) and the plots; for the long profile
    also a slim ``accuracy.json`` as ``docs/bench-report-long.json``, then the blocks rewritten from it."""
    report = json.loads((run_dir / "accuracy.json").read_text())
    profile = report["meta"].get("profile")
    if profile not in ("long", "default"):
        raise ValueError(f"{run_dir} holds a {profile!r} run; only the long and default profiles are published")
    images = root / "docs" / "img" / profile
    images.mkdir(parents=True, exist_ok=True)
    text = (run_dir / "report.md").read_text()
    # the figures the report shows, and the long profile's validation figure, which README shows
    shown = set(re.findall(r"\]\(plots/([\w.-]+\.png)\)", text)) | ({"validation.png"} if profile == "long" else set())
    for old in images.glob("*.png"):  # an earlier run's figures: none may stay beside this run's report
        old.unlink()
    for name in sorted(shown):
        if (run_dir / "plots" / name).is_file():
            shutil.copyfile(run_dir / "plots" / name, images / name)
    text = text.replace("](plots/", f"](img/{profile}/")
    (root / "docs" / f"bench-report-{profile}.md").write_text(text)
    if profile == "long":
        (root / "docs" / "bench-report-long.json").write_text(json.dumps(slim(report), indent=1, default=str) + "\n")
        write(root, slim(report))


def replot(root: Path = ROOT) -> list[Path]:
    """Redraw the long report's test and validation figures (``docs/img/long/accuracy.png``, ``validation.png``) from
    ``docs/bench-report-long.json``: they need only the runs' accuracies, which the committed JSON keeps."""
    from benchmarks.accuracy.plots import redraw_accuracy

    report = load_report(root / "docs" / "bench-report-long.json")
    return redraw_accuracy(report["runs"], root / "docs" / "img" / "long")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tables", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the blocks from the committed report")
    action.add_argument(
        "--publish", type=Path, metavar="DIR", help="commit a finished long or default run (then --write)"
    )
    action.add_argument(
        "--plots", action="store_true", help="redraw the long report's accuracy figures from its committed JSON"
    )
    args = parser.parse_args(argv)
    if args.publish:
        publish(args.publish)
        return 0
    if args.plots:
        for path in replot():
            print(path)
        return 0
    if args.write:
        write()
        return 0
    differ = stale()
    for what in differ:
        print(f"stale: {what} (python -m benchmarks.tables --write)", file=sys.stderr)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
