"""The floors of docs/architecture.md hold: no module imports one of a higher floor (at module level or inside a
function), read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import diffusionlab

SRC = Path(diffusionlab.__file__).parent

# module (or package) -> floor, as docs/architecture.md draws them; the longest matching prefix wins
FLOORS = {
    "limits": 0,
    "hardware": 0,
    "config": 1,  # plain typed data that every floor reads ("—" in the docs); it builds the processes (floor 1)
    "processes": 1,
    "networks": 1,
    "data": 1,
    "images": 1,
    "signal_outputs": 1,
    "io": 1,
    "discrete.processes": 1,
    "discrete": 1,
    "denoisers": 2,
    "losses": 3,
    "sampling": 3,
    "evaluation": 3,
    "discrete.losses": 3,
    "discrete.sampling": 3,
    "spaces": 4,
    "conditioning": 4,
    "families": 4,
    "pipeline": 4,
    "interop": 4,
    "training": 5,
    "tasks": 5,
    "cli": 6,
    "cli_options": 6,
    "server": 6,
    "__init__": 6,
}


def floor_of(module: str) -> int:
    """The floor of a dotted module path under diffusionlab ("training.trainer" -> 5)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in FLOORS:
            return FLOORS[key]
    raise KeyError(f"diffusionlab.{module} has no floor in tests/test_layers.py")


def imported(path: Path) -> list[tuple[str, int]]:
    """The diffusionlab modules a source file imports, with their line numbers (relative imports resolved)."""
    package = path.relative_to(SRC).with_suffix("").parts
    package = package[:-1] if path.name != "__init__.py" else package[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module and node.module.startswith("diffusionlab"):
                names = [node.module.removeprefix("diffusionlab").lstrip(".")]
            else:
                continue
            out += [(n, node.lineno) for n in names if n]
        elif isinstance(node, ast.Import):
            mods = [a.name.removeprefix("diffusionlab.") for a in node.names if a.name.startswith("diffusionlab.")]
            out += [(m, node.lineno) for m in mods]
    return out


def test_no_module_imports_a_higher_floor() -> None:
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        own = floor_of(module or "__init__")
        for target, line in imported(path):
            if floor_of(target) > own:
                wrong.append(
                    f"{path.relative_to(SRC)}:{line} (floor {own}) imports {target} (floor {floor_of(target)})"
                )
    assert not wrong, "\n".join(wrong)
