"""The package's layers hold: every import of src/revtal points down (or sideways inside the model layer), no two
modules import each other through any chain, revtal.reversible imports torch alone, and a function-local import is
an optional or heavy dependency with its reason beside it.

Layers, top to bottom (README, "Layout"):

    revtal.cli, revtal.__main__          the command line
    commands/                            one module per `revtal X`: arguments, then one call into the library
    experiments/                         the demo's setting, the study, reference comparisons
    bench/                               measurement
    engine/                              training modes, config, trainer, inference, run state
    reversible/ backbones/ localizers/   the model layer: peers may import each other, except that
    adapters/ data/ evaluation/          reversible/ imports nothing of revtal but itself;
    revtal (the package's __init__)      the public API facade, at this level (it imports reversible/ alone)
    utils/, revtal.errors                helpers every layer may use

The checker reads the source with ``ast`` (nothing is imported), so it also runs on a synthetic tree: the tests at
the bottom plant each kind of violation and check that it is reported.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

TOP, COMMANDS, EXPERIMENTS, BENCH, ENGINE, MODEL, UTILS = range(7)
PACKAGE_LAYERS = {
    "commands": COMMANDS, "experiments": EXPERIMENTS, "bench": BENCH, "engine": ENGINE,
    "reversible": MODEL, "backbones": MODEL, "localizers": MODEL, "adapters": MODEL, "data": MODEL,
    "evaluation": MODEL, "utils": UTILS,
}
MODULE_LAYERS = {"revtal": MODEL, "revtal.cli": TOP, "revtal.__main__": TOP, "revtal.errors": UTILS}
LAYER_NAMES = ["cli", "commands", "experiments", "bench", "engine", "model layer", "utils"]

# what revtal.reversible may import: torch and the standard library at module level; inside a function, also the
# libraries whose models it converts (a family is loaded only when a model of that library is converted)
REVERSIBLE_TOP_LEVEL = {"torch"}
REVERSIBLE_FAMILY_LIBRARIES = {"timm", "torchvision", "pytorchvideo", "transformers"}
# modules of a converter family's hand-written rules: they import their library at their top, and are themselves
# imported only inside the family's function (checked)
FAMILY_MODULES = {"revtal.reversible.swin"}
# imports that may sit inside a function: optional extras, plotting (loaded when a figure is drawn) and the lazy API
# facade; each with its reason in a comment on the line or the three lines above
LOCAL_IMPORTS_ALLOWED = (
    "actionformer", "matplotlib", "PIL", "pytorchvideo", "timm", "torch.utils.tensorboard", "torchvision",
    "transformers", "revtal.reversible",
)


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    target: str  # dotted name as written (resolved to a module for revtal targets)
    line: int
    local: bool  # inside a function
    type_checking: bool  # under `if TYPE_CHECKING:` (not executed)


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def collect_imports(root: Path, package: str = "revtal") -> tuple[dict[str, Path], list[Import]]:
    """Every module of ``package`` under ``root`` and every import statement in it (``from X import y`` resolved to
    the module ``X.y`` where that is a module of the package)."""
    modules = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    imports: list[Import] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"

        def visit(node: ast.AST, local: bool, type_checking: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.Import):
                    for alias in child.names:
                        imports.append(Import(name, alias.name, child.lineno, local, type_checking))
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:  # relative: resolved against this module's package
                        anchor = name.split(".") if is_package else name.split(".")[:-1]
                        anchor = anchor[: len(anchor) - (child.level - 1)]
                        base = ".".join(anchor + ([base] if base else []))
                    for alias in child.names:
                        candidate = f"{base}.{alias.name}"
                        imports.append(Import(name, candidate if candidate in modules else base, child.lineno, local,
                                              type_checking))
                else:
                    guarded = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
                    visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)),
                          guarded)

        visit(tree, False, False)
    return modules, imports


def layer_of(module: str) -> int:
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    return PACKAGE_LAYERS[module.split(".")[1]]


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def internal_target(target: str, modules: dict[str, Path]) -> str | None:
    """The module of the package an import loads (``revtal.x.y`` → itself, or its nearest module prefix)."""
    parts = target.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself), Tarjan's way."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            connect(node)
    return cycles


def has_reason(path: Path, line: int) -> bool:
    """A comment on the import's line, or in the run of import lines just above it, or on the line above that run
    (a group of deferred imports shares one reason)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    index = line - 1
    if "#" in lines[index]:
        return True
    index -= 1
    while index >= 0:
        text = lines[index].strip()
        if "#" in text:  # a comment line, or one on the line just above the group (``try:  # why``)
            return True
        if not (text.startswith(("from ", "import ", ")")) or text.endswith(",")):
            return False
        index -= 1
    return False


def violations(root: Path, package: str = "revtal") -> list[str]:
    """Every breach of the layer rules in ``root/package``, one line each (empty: the layers hold)."""
    modules, imports = collect_imports(root, package)
    problems: list[str] = []
    edges: dict[str, set[str]] = {name: set() for name in modules}
    stdlib = set(sys.stdlib_module_names)
    for imp in imports:
        where = f"{modules[imp.importer].relative_to(root)}:{imp.line}"
        target = internal_target(imp.target, modules) if imp.target.split(".")[0] == package else None
        top = imp.target.split(".")[0]
        if imp.local and not any(imp.target == a or imp.target.startswith(a + ".") for a in LOCAL_IMPORTS_ALLOWED):
            problems.append(f"{where}: function-local import of {imp.target} (only optional or heavy dependencies "
                            "may be imported inside a function)")
        elif imp.local and not has_reason(modules[imp.importer], imp.line):
            problems.append(f"{where}: function-local import of {imp.target} without its reason in a comment")
        if subpackage(imp.importer) == "reversible":
            if target is not None and subpackage(target) != "reversible":
                problems.append(f"{where}: revtal.reversible imports {target} (it imports torch alone)")
            elif target is None and top not in stdlib and top not in REVERSIBLE_TOP_LEVEL and not (
                    (imp.local or imp.importer in FAMILY_MODULES) and top in REVERSIBLE_FAMILY_LIBRARIES):
                problems.append(f"{where}: revtal.reversible imports {imp.target} (it imports torch alone"
                                + (")" if imp.local else "; a converter family's library only inside a function)"))
        if target is None or imp.type_checking:
            continue
        if target in FAMILY_MODULES and not imp.local:
            problems.append(f"{where}: {target} (a converter family's rules, importing its library) imported at "
                            "module level: only the family's function may load it")
        if target != imp.importer:
            edges[imp.importer].add(target)
        if imp.importer == package and subpackage(target) != "reversible":
            problems.append(f"{where}: the package facade imports {target} (it re-exports revtal.reversible alone)")
        if layer_of(target) < layer_of(imp.importer):
            problems.append(f"{where}: {imp.importer} ({LAYER_NAMES[layer_of(imp.importer)]}) imports {target} "
                            f"({LAYER_NAMES[layer_of(target)]}), a layer above it")
    for cycle in find_cycles(edges):
        problems.append("import cycle: " + " <-> ".join(cycle))
    return list(dict.fromkeys(problems))  # one line per breach (a statement importing several names reports once)


# ------------------------------------------------------------------------------------------------------- tests

def test_revtal_imports_follow_the_layers_without_cycles():
    assert violations(SRC) == []


def test_every_subpackage_has_a_layer():
    modules, _ = collect_imports(SRC)
    for name in modules:
        layer_of(name)  # KeyError: a new subpackage needs its place in PACKAGE_LAYERS


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in {"revtal/__init__.py": "", **files}.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in path.parents:  # every folder a package
            if parent == tmp_path:
                break
            (parent / "__init__.py").touch()
        path.write_text(text)
    return tmp_path


def test_the_checker_reports_an_upward_import(tmp_path):
    root = _tree(tmp_path, {"revtal/engine/trainer.py": "from revtal.commands.train import run\n",
                            "revtal/commands/train.py": "from revtal.engine import trainer\n"})
    found = violations(root)
    assert any("revtal.engine.trainer (engine) imports revtal.commands.train (commands), a layer above" in v
               for v in found), found
    assert any(v.startswith("import cycle: revtal.commands.train <-> revtal.engine.trainer") for v in found), found


def test_the_checker_reports_a_cycle_inside_a_layer_and_a_deferred_one(tmp_path):
    root = _tree(tmp_path, {"revtal/engine/a.py": "import revtal.engine.b\n",
                            "revtal/engine/b.py": "def f():\n    from revtal.engine import a\n",
                            "revtal/engine/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                  "    from revtal.engine import a\n"})
    found = violations(root)
    assert "import cycle: revtal.engine.a <-> revtal.engine.b" in found
    assert any("function-local import of revtal.engine" in v for v in found)
    assert not any("revtal.engine.c" in v for v in found)  # TYPE_CHECKING imports do not run


def test_the_checker_keeps_reversible_on_torch_alone(tmp_path):
    root = _tree(tmp_path, {
        "revtal/reversible/core.py": "import math\nimport torch\nimport numpy\nfrom revtal.utils import io\n"
                                     "def family():\n    import timm  # loaded with the timm family only\n",
        "revtal/reversible/top.py": "import timm\n",
        "revtal/utils/io.py": "",
    })
    found = violations(root)
    assert any("core.py:3: revtal.reversible imports numpy" in v for v in found), found
    assert any("core.py:4: revtal.reversible imports revtal.utils.io" in v for v in found), found
    assert any("top.py:1: revtal.reversible imports timm" in v for v in found), found
    assert not any("core.py:6" in v or "core.py:1:" in v or "core.py:2:" in v for v in found), found


def test_the_checker_wants_a_reason_for_a_deferred_optional_import(tmp_path):
    root = _tree(tmp_path, {"revtal/bench/plot.py": "def draw():\n    import matplotlib\n",
                            "revtal/bench/plot2.py": "def draw():\n    # loaded when a figure is drawn\n"
                                                     "    import matplotlib\n"})
    found = violations(root)
    assert found == ["revtal/bench/plot.py:2: function-local import of matplotlib without its reason in a comment"]
