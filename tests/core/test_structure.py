"""The core's shape: modules import each other without a circle, blinker only in public."""

from __future__ import annotations

import ast
from pathlib import Path

import eventhooks

CORE = Path(eventhooks.__file__).resolve().parent


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every eventhooks module ``path`` imports, ``TYPE_CHECKING`` blocks included."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("eventhooks"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("eventhooks"):
                continue
            for alias in node.names:  # `from . import events` imports a module
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return found - {name}


MODULES = {module_name(p): p for p in CORE.rglob("*.py")}


def test_no_import_circle_in_the_core() -> None:
    graph = {name: imports_of(path) & set(MODULES) for name, path in MODULES.items()}
    # eventhooks/__init__ re-exports everything; subpackages import from their siblings.
    graph = {n: {d for d in deps if "." in d or d == "eventhooks"} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep == "eventhooks" or (node.startswith(dep + ".") and dep != node):
                continue  # a module importing its own package's __init__ is not a circle
            assert state.get(dep) != 1, "import circle: " + " -> ".join([*path, node, dep])
            if dep not in state:
                visit(dep, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_bus_and_subscription_modules_import_each_other_in_one_direction() -> None:
    assert "eventhooks.bus" not in imports_of(CORE / "_subscription.py")
    assert "eventhooks.callback" not in imports_of(CORE / "bus.py")
    assert "eventhooks.bus" in imports_of(CORE / "callback.py")


def test_blinker_is_used_through_its_public_api_only() -> None:
    for path in MODULES.values():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("blinker"):
                assert node.module == "blinker", f"{path.name} imports {node.module}"
                assert all(not a.name.startswith("_") for a in node.names), path.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "blinker":
                    assert not node.attr.startswith("_"), f"{path.name}: blinker.{node.attr}"
        for private in ("_by_receiver", "_by_sender", "ANY_ID", "make_id", "_disconnect"):
            assert private not in path.read_text(), f"{path.name} uses blinker's {private}"
