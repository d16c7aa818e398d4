"""The layout is the architecture: rooms import only the rooms below them, and no module imports itself back.

method (tensor code) and utils import nothing of the package but themselves; model builds on method; the
product rooms (train, infer, eval, and later serve, convert) build on model and never on research or the
command line; research (recipe, tasks, demo, lab, bench) uses the product and is used by nobody but the CLI.
"""

import ast
from pathlib import Path

import deepstack

PACKAGE = Path(deepstack.__file__).parent
# a room may import its own modules and those of the rooms listed for it
ALLOWED = {
    "utils": set(),
    "method": set(),
    "model": {"method", "utils"},
    "infer": {"model", "method", "utils"},
    "train": {"model", "method", "utils"},
    "eval": {"infer", "model", "method", "utils"},
    "serve": {"infer", "model", "method", "utils"},
    "convert": {"model", "method", "utils"},
    "research": {"train", "infer", "eval", "model", "method", "utils"},
    "cli": {"train", "infer", "eval", "serve", "convert", "research", "model", "method", "utils"},
    "__init__": {"model", "method"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every deepstack module ``path`` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("deepstack")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("deepstack"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names if resolves(f"{target}.{alias.name}")}
    return {resolve(target) for target in found if resolve(target)}


def resolves(name: str) -> bool:
    relative = Path(*name.split("."))
    return (PACKAGE.parent / relative).with_suffix(".py").is_file() or (PACKAGE.parent / relative / "__init__.py").is_file()


def resolve(name: str) -> str | None:
    """The module a dotted import name refers to (a name inside a module resolves to that module)."""
    while name and not resolves(name):
        name = name.rpartition(".")[0]
    return name or None


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1].removesuffix(".py") if len(parts) > 1 else "__init__"


GRAPH = {module_name(path): imports(path) - {module_name(path)} for path in PACKAGE.rglob("*.py")}


def test_every_room_is_known():
    assert {room(module) for module in GRAPH} <= set(ALLOWED)


def test_rooms_import_only_the_rooms_below_them():
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if room(target) != room(module) and room(target) not in ALLOWED[room(module)]
    )
    assert not wrong, "\n".join(wrong)


def test_no_import_circles():
    state: dict[str, str] = {}
    circles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(GRAPH.get(module, ())):
            if target not in GRAPH:
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(circles)


def test_the_graph_sees_imports():
    # the walk must find real edges, or the two rules above would pass on an empty graph
    assert "deepstack.model.configuration" in GRAPH["deepstack.model.modeling"]
    assert "deepstack.method.injection" in GRAPH["deepstack.model.modeling"]
    assert "deepstack.infer.generate" in GRAPH["deepstack.eval.runner"]
    assert any(target.startswith("deepstack.research") for target in GRAPH["deepstack.cli"])


def test_method_imports_only_torch():
    for path in (PACKAGE / "method").glob("*.py"):
        tree = ast.parse(path.read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module and not node.level}
        assert roots <= {"torch", "__future__", "contextlib", "collections", "typing", "math"}, (path.name, roots)
