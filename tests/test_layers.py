"""Imports flow one way: commands -> orchestration -> planners/trainers -> domain -> foundations.

Read from the source (every `import`, at module level or inside a function), so a lazy import that
would dodge a cycle or reach upward is caught as well as a top-level one.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# installed package -> source folder (pyproject.toml's package-dir)
PACKAGES = {"fomo_nnunet": ROOT / "fomo_nnunet", "fomo_nnunet.plans": ROOT / "plans",
            "fomo_nnunet.trainers": ROOT / "trainers"}

FOUNDATIONS = {"fomo_nnunet", "fomo_nnunet.tasks", "fomo_nnunet.paths", "fomo_nnunet.exit_codes",
               "fomo_nnunet.plans", "fomo_nnunet.plans.presets"}
ORCHESTRATION = {"fomo_nnunet.benchmark", "fomo_nnunet.pipeline", "fomo_nnunet.report", "fomo_nnunet.bench",
                 "fomo_nnunet.features"}
PLANNERS = {"fomo_nnunet.plans.pretrain_planner", "fomo_nnunet.plans.transfer_planner", "fomo_nnunet.plans.fixed_network"}


def layer(module: str) -> int:
    if module in FOUNDATIONS:
        return 0
    if module == "fomo_nnunet.cli" or module.startswith("fomo_nnunet.commands"):
        return 4
    if module in ORCHESTRATION:
        return 3
    if module in PLANNERS or module.startswith("fomo_nnunet.trainers"):
        return 2
    return 1  # the domain: data, transfer, inference, metrics, training toolkit, ...


LAYER_NAMES = ("foundations", "domain", "planners/trainers", "orchestration", "commands")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for f in folder.rglob("*.py"):
            parts = [p for p in f.relative_to(folder).with_suffix("").parts if p != "__init__"]
            if package == "fomo_nnunet" and parts and parts[0] in ("plans", "trainers"):
                continue
            found[".".join([package, *parts])] = f
    return found


def import_edges() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {}
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fomo_nnunet"):
                targets = [resolve(f"{node.module}.{a.name}") for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [resolve(a.name) for a in node.names if a.name.startswith("fomo_nnunet")]
            else:
                continue
            edges.setdefault(module, set()).update(t for t in targets if t and t != module)
    return edges


def test_the_source_tree_is_what_the_layer_map_describes():
    mods = modules()
    assert {"fomo_nnunet.tasks", "fomo_nnunet.benchmark", "fomo_nnunet.cli",
            "fomo_nnunet.plans.transfer_planner", "fomo_nnunet.trainers.nnUNetTrainerFomoSeg"} <= set(mods)
    assert sum(len(v) for v in import_edges().values()) > 50  # the parser sees the imports


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} ({LAYER_NAMES[layer(m)]}) imports {t} ({LAYER_NAMES[layer(t)]})"
              for m, targets in sorted(import_edges().items()) for t in sorted(targets) if layer(t) > layer(m)]
    assert not upward, "imports against the layer order:\n" + "\n".join(upward)


def test_trainers_and_planners_do_not_import_each_other():
    crossing = [f"{m} imports {t}" for m, targets in import_edges().items() for t in targets
                if layer(m) == layer(t) == 2 and m.split(".")[1] != t.split(".")[1]]
    assert not crossing, crossing


def test_there_is_no_import_cycle():
    edges = import_edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in sorted(modules()):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_module_but_the_task_table_compares_task_numbers_or_kind_literals():
    kinds = {"segmentation", "classification", "regression", "embedding"}
    found = []
    for module, path in modules().items():
        if module == "fomo_nnunet.tasks":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            names = {ast.unparse(s) for s in sides}
            literals = [s.value for s in ast.walk(node) if isinstance(s, ast.Constant)]
            task_side = any(n == "task" or n.endswith((".number", "task_number", ".task")) for n in names)
            kind_side = any(n == "kind" or n.endswith(".kind") for n in names)
            if (task_side and any(isinstance(v, int) and not isinstance(v, bool) for v in literals)) or \
                    (kind_side and any(isinstance(v, str) and v in kinds for v in literals)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "compare against the task table (fomo_nnunet.tasks) instead:\n" + "\n".join(found)
