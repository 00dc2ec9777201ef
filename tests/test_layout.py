"""The package's shape, held: no import circle (not even one through TYPE_CHECKING), the update kernels depend on
nothing else in deepkd, no strategy module talks to other ranks, the strategy contract lives in one file, and no
module grows past a size a reader can hold."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

import deepkd.types

_spec = importlib.util.find_spec("deepkd")
assert _spec is not None and _spec.origin is not None
ROOT = Path(_spec.origin).parent
MODULES = {
    ".".join(("deepkd", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__"): p
    for p in ROOT.rglob("*.py")
}
STRATEGY_MODULES = ("deepkd.losses", "deepkd.momentum", "deepkd.masks", "deepkd.schedules")


def _module_of(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every deepkd module ``module`` imports, wherever the import is (top level, function, TYPE_CHECKING)."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            target = _module_of(name) if name.startswith("deepkd") else None
            if target is not None and target != module and target != "deepkd":
                out.add(target)
    return out


GRAPH = {module: _imports(module) for module in MODULES}


def test_the_import_graph_has_no_circle():
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join((*path[path.index(module) :], module)))
        if module in done:
            return
        for target in sorted(GRAPH[module]):
            visit(target, (*path, module))
        done.add(module)

    for module in sorted(GRAPH):
        visit(module, ())


def test_the_update_kernels_import_nothing_else_from_deepkd():
    assert GRAPH["deepkd.kernels"] == set()


@pytest.mark.parametrize("module", STRATEGY_MODULES)
def test_no_strategy_module_talks_to_other_ranks(module):
    assert "deepkd.distributed" not in GRAPH[module]  # the optimizer reduces what a strategy needs and hands it over
    assert not {"deepkd.launch", "deepkd.preemption"} & GRAPH[module]


def test_ranks_and_collectives_have_one_home():
    users = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
                users.add(module)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
                users.add(module)
    assert users == {"deepkd.distributed", "deepkd.launch"}  # launch starts and ends the process group


def test_the_strategy_contract_is_in_one_file():
    contract = ["LossStrategy", "MomentumStrategy", "MaskStrategy", "ScheduleStrategy", "StepOutput", "Plan",
                "OffsetRule", "StepContext", "NoState", "MaskState", "Keep", "MaskForm", "PartsAndGrads"]  # fmt: skip
    defined = {node.name for node in ast.parse(MODULES["deepkd.types"].read_text()).body if hasattr(node, "name")}
    defined |= {t.id for node in ast.parse(MODULES["deepkd.types"].read_text()).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}  # fmt: skip
    assert set(contract) <= defined and set(contract) <= set(deepkd.types.__all__)
    page = (ROOT.parent / "docs" / "extending.md").read_text(encoding="utf-8")
    assert "**The whole contract is in one file, `deepkd/types.py`**" in page
    imports = set(re.findall(r"^from (deepkd[\w.]*) import (.+)$", page, flags=re.MULTILINE))
    # The strategies in the worked examples need nothing but the contract; the mask example's closing check also uses
    # the helper the optimizer's default `keep` calls, to show which classes NCKD really saw.
    assert {module for module, _ in imports} == {"deepkd.types", "deepkd.masks"}
    assert {names for module, names in imports if module == "deepkd.masks"} == {"rank_keep_mask"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_fits_on_a_few_screens(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= (400 if module == "deepkd.momentum" else 450), f"{module} has {lines} lines"
