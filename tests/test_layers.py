"""Imports flow one way: commands -> orchestration -> planners/trainers -> domain -> foundations.

The layers are the README's layer map (the table after the `layer-map` marker): each row names a layer, top
row highest, and the files and folders (relative to the checkout) that belong to it. The tests read that table,
so it stays complete (every module in exactly one row, every row's path exists) and true: every import, absolute
or relative, at module level or inside a function, is read from the source, so a lazy import that would dodge a
cycle or reach upward is caught as well as a top-level one.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# installed package -> source folder (pyproject.toml's package-dir)
PACKAGES = {"fomo_nnunet": ROOT / "fomo_nnunet", "fomo_nnunet.plans": ROOT / "plans",
            "fomo_nnunet.trainers": ROOT / "trainers"}
LAYER_MAP_MARKER = "<!-- layer-map"


def layer_map(readme: str | None = None) -> list[tuple[str, list[str]]]:
    """The README's layer map as [(layer name, [paths])], highest layer first."""
    text = (ROOT / "README.md").read_text() if readme is None else readme
    assert LAYER_MAP_MARKER in text, f"README.md has no layer map (a table after '{LAYER_MAP_MARKER}')"
    rows = []
    for line in text.split(LAYER_MAP_MARKER, 1)[1].splitlines()[1:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] in ("layer", "") or set(cells[0]) <= {"-"}:
            continue
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[1])))
    return rows


LAYERS = layer_map()
LAYER_NAMES = tuple(name for name, _ in reversed(LAYERS))  # index = rank, 0 = foundations


def row_of(path: Path) -> int | None:
    """The rank of the row that holds `path` (a file, or the longest folder above it)."""
    rel = path.relative_to(ROOT).as_posix()
    best = None
    for rank, (_, paths) in enumerate(reversed(LAYERS)):
        for entry in paths:
            if rel == entry or (entry.endswith("/") and rel.startswith(entry)):
                if best is None or len(entry) > best[0]:
                    best = (len(entry), rank)
    return None if best is None else best[1]


def layer(module: str) -> int:
    return row_of(modules()[module])


@functools.lru_cache(maxsize=None)
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
    return {module: found for module, path in mods.items()
            if (found := imports_of(module, path.name == "__init__.py", path.read_text()))}


def imports_of(module: str, is_package: bool, source: str) -> set[str]:
    """The modules of the tree that `source` (the text of `module`) imports, in any form: absolute, relative
    (`from . import x`, `from .x import y`, `from ..x import y`, `from .. import x`), at module level or inside a
    function. A name imported from a module resolves to the module itself unless it is a submodule."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:  # from . import x, from ..a import b
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            base = f"{base}.{node.module}" if node.module else base
            targets = [resolve(f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fomo_nnunet"):
            targets = [resolve(f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [resolve(a.name) for a in node.names if a.name.startswith("fomo_nnunet")]
        else:
            continue
        found.update(t for t in targets if t and t != module)
    return found


def test_the_source_tree_is_what_the_layer_map_describes():
    mods = modules()
    assert {"fomo_nnunet.tasks", "fomo_nnunet.benchmarks.fomo_synth", "fomo_nnunet.cli",
            "fomo_nnunet.plans.transfer_planner", "fomo_nnunet.trainers.nnUNetTrainerFomoSeg"} <= set(mods)
    assert sum(len(v) for v in import_edges().values()) > 50  # the parser sees the imports
    assert [name for name, _ in LAYERS] == ["commands", "orchestration", "planners and trainers", "domain",
                                            "foundations"]


def test_every_module_is_in_one_row_of_the_readme_layer_map():
    missing = sorted(str(p.relative_to(ROOT)) for p in modules().values() if row_of(p) is None)
    assert not missing, "add these to the README's layer map:\n" + "\n".join(missing)
    entries = [e for _, paths in LAYERS for e in paths]
    assert not [e for e in entries if entries.count(e) > 1], "a path in two rows of the layer map"
    gone = [e for e in entries if not (ROOT / e).exists() or (e.endswith("/") != (ROOT / e).is_dir())]
    assert not gone, f"the README's layer map names paths that do not exist: {gone}"


def test_the_layer_map_parser_sees_a_missing_module():
    readme = (ROOT / "README.md").read_text().replace("`fomo_nnunet/plots.py` ", "")
    rows = layer_map(readme)
    assert "fomo_nnunet/plots.py" not in [e for _, paths in rows for e in paths]
    assert "fomo_nnunet/plots.py" in [e for _, paths in LAYERS for e in paths]


def test_relative_imports_are_edges():
    edges = import_edges()
    assert "fomo_nnunet.data.synth.acquisition" in edges["fomo_nnunet.data.synth.layouts"]  # from .acquisition import


def test_every_form_of_relative_import_is_read():
    source = ("from . import acquisition\n"            # a sibling module
              "from .cases import draw_case_recipe\n"  # a name from a sibling
              "from .. import workers\n"               # a module of the parent package
              "from ..convert import save_nifti\n"     # a name from a module of the parent package
              "def f():\n    from ...io import grids\n")  # inside a function, two packages up
    assert imports_of("fomo_nnunet.data.synth.layouts", False, source) == {
        "fomo_nnunet.data.synth.acquisition", "fomo_nnunet.data.synth.cases", "fomo_nnunet.data.workers",
        "fomo_nnunet.data.convert", "fomo_nnunet.io.grids"}
    # in a package's __init__.py, `.` is the package itself
    assert imports_of("fomo_nnunet.data.synth", True, "from .corpus import generate\n") == {
        "fomo_nnunet.data.synth.corpus"}


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
