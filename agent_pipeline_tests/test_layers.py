"""The package's layers, as docs/layout.md draws them: every import of a project module
points to its own layer or one below, never up."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agent_pipeline"

# Top to bottom, as in docs/layout.md.
LAYERS = [
    ["definitions"],
    ["jobs", "ops", "schedules", "sensors", "engine"],
    ["settings", "delivery", "alerts", "retention", "run_failures"],
    ["resources", "agents", "ranking", "emails", "logs", "partitions", "dates", "caching",
     "retries"],
    ["text", "errors", "schema"],
]
LAYER_OF = {name: depth for depth, names in enumerate(LAYERS) for name in names}
# Within the resources, agents and plain logic, what may be used from a neighbour.
ALLOWED_SIDEWAYS = {
    ("resources", "agents"),  # AgentResource loads the agent
    ("resources", "retries"), ("agents", "retries"),
    ("resources", "emails"),  # DigestSettings checks its addresses
    ("resources", "caching"), ("agents", "caching"), ("agents", "dates"),
    ("emails", "dates"), ("emails", "partitions"), ("ranking", "dates"),
}


def top_level(module: str) -> str | None:
    """agent_pipeline.resources.smtp -> resources; None for other packages."""
    parts = module.split(".")
    return parts[1] if parts[0] == "agent_pipeline" and len(parts) > 1 else None


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for module in found if (name := top_level(module))}


def test_every_module_is_in_a_layer():
    modules = {
        path.stem if path.parent == PACKAGE else path.relative_to(PACKAGE).parts[0]
        for path in PACKAGE.rglob("*.py")
        if path.stem != "__init__" or path.parent != PACKAGE
    } - {"alembic"}
    assert modules - set(LAYER_OF) == set()


def test_imports_point_down():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).parts
        if relative[0] == "alembic" or relative == ("__init__.py",):
            continue
        own = path.stem if len(relative) == 1 else relative[0]
        for imported in imports_of(path) - {own}:
            if LAYER_OF[imported] < LAYER_OF[own]:
                upward.append(f"{'/'.join(relative)} imports {imported} (a layer up)")
            elif LAYER_OF[imported] == LAYER_OF[own] and (own, imported) not in ALLOWED_SIDEWAYS:
                if LAYER_OF[own] == 3:
                    upward.append(f"{'/'.join(relative)} imports {imported} (sideways)")
    assert upward == []
