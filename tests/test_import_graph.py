"""The import graph of src/marginkit, drawn from the code with `ast`: no cycles, no upward imports, no
private names across packages, and losses/ and margins/ import nothing heavier than torch and numpy.

Every `import` and `from ... import` counts, at module level and inside functions alike (a lazy import is
still a dependency; it only hides a cycle until the function runs), `if TYPE_CHECKING:` blocks included.
Relative imports are resolved; `from marginkit.pkg import name` points at the submodule `pkg.name` when
there is one, else at `pkg`. Importing `a.b.c` runs the `__init__` of `a` and `a.b` first, so the edge
also reaches those package modules (except the importer's own packages).

The layers follow the pipeline (docs: README "Layout", style guide "Imports follow the pipeline"): a
module may import its own layer and the layers below it, never one above. The map is per package, with a
few modules placed on their own where a package has a pure low module or an orchestration module on top.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = "marginkit"

# Lowest first. A key names a module or a package (dotted, without "marginkit."); a module takes the layer
# of its longest matching key, so "evaluate.bon_run" overrides "evaluate". A package key also places that
# package's `__init__`, which must then import only what its layer may.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # Foundations: the package root (its version), the config parser, console switches, atomic writes, the
    # one-line errors of paths and the environment (errors.py), torch's thread count (threads.py: torch is
    # imported inside its functions); stdlib only at import.
    ("foundations", ("marginkit", "configlib", "console", "atomic", "errors", "threads")),
    # Data: schema, validation, format converters, tokenising and collating, the ledger, the gold world.
    ("data", ("data",)),
    # Components, each usable alone: models (reward models, policy log-probs, packing, the reference
    # log-prob cache), pure losses and margin strategies (torch only; see test_losses_and_margins_stay_light).
    ("components", ("models", "losses", "margins")),
    # Pure statistics and the plots drawn from them: numbers in, numbers or figures out (the one accuracy
    # rule, metrics with intervals, Student-t intervals; PNG plots of arrays). The evaluate and report
    # package `__init__`s re-export only these, so importing any evaluate/report module stays this cheap.
    # A new evaluate/ or report/ module lands here too until it is listed in a higher layer.
    ("statistics", ("evaluate", "evaluate.accuracy", "evaluate.metrics", "evaluate.stats",
                    "report", "report.plots")),
    # Diagnostics: pure checks over detached tensors and the monitor, preflight before training.
    ("diagnostics", ("diagnostics",)),
    # Evaluation of a trained model: the scorer, RM and DPO evaluation, Best-of-N maths, sampling; the
    # rewards of online RL (rewards.py: the gold world, an RM folder through the scorer, or a callable).
    ("evaluation", ("evaluate.scorer", "evaluate.rm_eval", "evaluate.dpo_eval", "evaluate.bon",
                    "evaluate.sampling", "rewards")),
    # Training: the engine, the steps, the trainers, and the run configs that compose them.
    ("training", ("train", "config")),
    # Workflows that run trainings and evaluations end to end and report them: Best-of-N runs and
    # the out-of-distribution sections, the HTML report (it reads Best-of-N runs), studies, the demo.
    ("workflows", ("evaluate.bon_run", "evaluate.offline_bon", "evaluate.sections", "report.html", "study",
                   "demo")),
    # The command line: parse, then dispatch.
    ("cli", ("cli",)),
]

# What losses/ and margins/ may import at module level, besides the standard library and themselves.
LIGHT = {"torch", "numpy"}


def module_files() -> dict[str, Path]:
    mods = {}
    for path in (SRC / PKG).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = module_files()


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def known(name: str) -> str | None:
    """The longest prefix of a dotted name that is one of our modules."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return None


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None) for each of our modules an import statement reads."""
    if isinstance(node, ast.Import):
        return [(m, None) for a in node.names if (m := known(a.name))]
    base = absolute(module, node)
    out = []
    for a in node.names:
        sub = f"{base}.{a.name}"
        if sub in MODULES:
            out.append((sub, None))
        elif (m := known(base)) is not None:
            out.append((m, a.name))
    return out


@cache
def tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def import_nodes(module: str) -> list[ast.Import | ast.ImportFrom]:
    return [n for n in ast.walk(tree(module)) if isinstance(n, ast.Import | ast.ImportFrom)]


def ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


@cache
def edges() -> dict[str, dict[str, int]]:
    """importer -> {imported module: line}, the implicit package `__init__`s included."""
    graph: dict[str, dict[str, int]] = {}
    for module in MODULES:
        out: dict[str, int] = {}
        own = set(ancestors(module))
        for node in import_nodes(module):
            for target, _ in imported(module, node):
                for m in [*ancestors(target), target]:
                    if m != module and m not in own:
                        out.setdefault(m, node.lineno)
        graph[module] = out
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def layer_of(module: str) -> int:
    rel = module.removeprefix(f"{PKG}.") if module != PKG else PKG
    matches = [(len(key), index) for index, (_, keys) in enumerate(LAYERS) for key in keys
               if rel == key or rel.startswith(key + ".")]
    assert matches, f"{module} has no layer: add it to LAYERS in {__file__}"
    return max(matches)[1]


def package_of(module: str) -> str:
    """The top-level package (marginkit.data, ...), or the module itself for a module at the root."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or is_package(module) else module


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_the_graph_is_drawn():
    graph = edges()
    assert len(MODULES) > 60
    assert "marginkit.margins.sinkhorn" in graph["marginkit.margins.ot"]
    assert "marginkit.margins" not in graph["marginkit.margins.ot"]  # its own package: not an edge
    assert {"marginkit.models", "marginkit.models.reward"} <= set(graph["marginkit.evaluate.scorer"])  # __init__ runs
    # relative imports resolved; `from pkg import submodule` read as the submodule (on written cases)
    rel, sub, name = ast.parse("from ..data import schema\nfrom marginkit.evaluate import metrics as M\n"
                               "from marginkit.data.schema import Pair").body
    assert absolute("marginkit.evaluate.bon_run", rel) == "marginkit.data"
    assert imported("marginkit.evaluate.bon_run", rel) == [("marginkit.data.schema", None)]
    assert imported("marginkit.evaluate.rm_eval", sub) == [("marginkit.evaluate.metrics", None)]
    assert imported("marginkit.evaluate.rm_eval", name) == [("marginkit.data.schema", "Pair")]


def test_no_import_cycle():
    graph = edges()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n  " + "\n  ".join(
        f"{a} -> {b}   ({MODULES[a].relative_to(SRC.parent)}:{graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_upward_import():
    upward = []
    for module, targets in sorted(edges().items()):
        mine = layer_of(module)
        for target, line in sorted(targets.items()):
            if layer_of(target) > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) -> {target} ({LAYERS[layer_of(target)][0]})   "
                              f"{MODULES[module].relative_to(SRC.parent)}:{line}")
    assert not upward, "imports of a higher layer:\n  " + "\n  ".join(upward)


def test_no_private_name_across_packages():
    crossing = []
    for module in sorted(MODULES):
        for node in import_nodes(module):
            for target, name in imported(module, node):
                if package_of(target) == package_of(module):
                    continue
                dotted = target.split(".") + ([name] if name else [])
                if any(is_private(part) for part in dotted):
                    crossing.append(f"{module} imports {'.'.join(dotted)}   "
                                    f"{MODULES[module].relative_to(SRC.parent)}:{node.lineno}")
    assert not crossing, "private names imported across packages:\n  " + "\n  ".join(crossing)


def module_level_imports(module: str) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not inside functions, not under `if TYPE_CHECKING`."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                found.append(stmt)
            elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            elif isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                visit(stmt.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(stmt, field, []) or [])

    visit(tree(module).body)
    return found


def test_losses_and_margins_stay_light():
    """At module level, losses/ and margins/ import torch, numpy, the standard library and each other only
    (no Accelerate, transformers, config parsing or the rest of marginkit), so importing any of them stays
    that light and a few small tensors test them. Anything heavier goes inside the function that needs it."""
    light = (f"{PKG}.losses", f"{PKG}.margins")
    heavy = []
    for module in sorted(m for m in MODULES if package_of(m) in light):
        for node in module_level_imports(module):
            ours = [target for target, _ in imported(module, node)]
            if isinstance(node, ast.Import):
                others = [a.name for a in node.names if not a.name.startswith(PKG)]
            else:
                others = [] if node.level or (node.module or "").startswith(PKG) else [node.module or ""]
            bad = [t for t in ours if package_of(t) not in light]
            bad += [name for name in others if name.split(".")[0] not in LIGHT | set(sys.stdlib_module_names)]
            heavy += [f"{module} imports {name}   {MODULES[module].relative_to(SRC.parent)}:{node.lineno}"
                      for name in bad]
    assert not heavy, "module-level imports heavier than torch and numpy in losses/ or margins/:\n  " + \
        "\n  ".join(heavy)
