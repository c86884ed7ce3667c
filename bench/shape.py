"""Measure the code shape of src/diffusionlab and print it as a markdown table (issue 12)."""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LONG_FUNCTION_LINES = 60
MANY_PARAMS = 12
PARAMS_EXEMPT = {"cli.py"}
PARAMETERISATIONS = {"eps", "x0", "v", "edm", "velocity"}
MODEL_KINDS = {"mlp", "unet", "points", "image", "latent_image", "latent"}
WATCHED_STRINGS = PARAMETERISATIONS | MODEL_KINDS
COMPARE_OPS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
DEFAULT_SRC = Path(__file__).resolve().parent.parent / "src" / "diffusionlab"


@dataclass
class Function:
    """One function or method, with where it stands and its size."""

    file: str
    line: int
    name: str
    lines: int
    params: int


@dataclass
class Shape:
    """Everything measured over one source tree."""

    files: dict[str, int] = field(default_factory=dict)
    functions: list[Function] = field(default_factory=list)
    pipelines: list[tuple[str, int, int]] = field(default_factory=list)
    compares: list[tuple[str, int, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def count_params(args: ast.arguments) -> int:
    """Count positional-only, ordinary and keyword-only parameters, less self/cls and */** catch-alls."""
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    return sum(1 for name in names if name not in {"self", "cls"})


def is_watched(node: ast.expr) -> bool:
    """Whether a node is a watched string constant, or a tuple/list/set of string constants holding one."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in WATCHED_STRINGS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
        if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            return any(e.value in WATCHED_STRINGS for e in node.elts)
    return False


def is_watched_compare(node: ast.Compare) -> bool:
    """Whether any ==, !=, in or not in link of a comparison has a watched string on one side."""
    operands = [node.left, *node.comparators]
    for i, op in enumerate(node.ops):
        if isinstance(op, COMPARE_OPS) and (is_watched(operands[i]) or is_watched(operands[i + 1])):
            return True
    return False


def walk_file(rel: str, source: str, tree: ast.Module, shape: Shape) -> None:
    """Collect the functions, the Pipeline class and the watched comparisons of one parsed file."""

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                shape.functions.append(Function(rel, child.lineno, name, lines, count_params(child.args)))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                if child.name == "Pipeline" and prefix == "":
                    lines = (child.end_lineno or child.lineno) - child.lineno + 1
                    shape.pipelines.append((rel, child.lineno, lines))
                visit(child, f"{prefix}{child.name}.")
            else:
                if isinstance(child, ast.Compare) and is_watched_compare(child):
                    segment = ast.get_source_segment(source, child) or ast.unparse(child)
                    shape.compares.append((rel, child.lineno, " ".join(segment.split())))
                visit(child, prefix)

    visit(tree, "")


def measure(src: Path) -> Shape:
    """Parse every .py file below src and measure it."""
    shape = Shape()
    for path in sorted(src.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(src).as_posix()
        source = path.read_text(encoding="utf-8")
        shape.files[rel] = len(source.splitlines())
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as err:
            shape.errors.append(f"{rel}: {err}")
            continue
        walk_file(rel, source, tree, shape)
    shape.compares.sort()
    return shape


def run_duplicates(src: Path) -> tuple[str, list[str]]:
    """Run `duplicates` over the whole src tree; return its pair count and its raw lines."""
    exe = shutil.which("duplicates")
    if exe is None:
        return "n/a (no `duplicates` on the PATH)", []
    cmd = [exe, "--repo", str(src), "--most", "200", "--seconds", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    match = re.match(r"(\d+) pairs? of places", first)
    if match:
        count = match.group(1)
    elif first.startswith("no duplicates"):
        count = "0"
    else:
        count = f"n/a ({first or 'no output'})"
    if any(line.startswith("incomplete:") for line in lines):
        count += " (incomplete, see below)"
    return count, lines


def where(fn: Function) -> str:
    """Format a function as file:line name (N lines, P params)."""
    return f"{fn.file}:{fn.line} {fn.name} ({fn.lines} lines, {fn.params} params)"


def report(src: Path, shape: Shape, dup_count: str, dup_lines: list[str]) -> str:
    """Render the measures as a markdown table followed by the offending places."""
    long_fns = sorted((f for f in shape.functions if f.lines > LONG_FUNCTION_LINES), key=lambda f: -f.lines)
    many_params = sorted(
        (f for f in shape.functions if f.params > MANY_PARAMS and f.file not in PARAMS_EXEMPT),
        key=lambda f: -f.params,
    )
    largest = max(shape.files.items(), key=lambda kv: kv[1], default=("-", 0))
    top = long_fns[0] if long_fns else None
    longest = f"; longest `{top.file}:{top.line} {top.name}` ({top.lines})" if top else ""
    # class Pipeline in pipeline.py; should it have moved, the first top-level one elsewhere, marked by its file
    found = sorted(shape.pipelines, key=lambda p: p[0] != "pipeline.py")
    pipeline = f"{found[0][2]} (`{found[0][0]}:{found[0][1]}`)" if found else "absent"

    rows = [
        ("Total lines of src .py files", f"{sum(shape.files.values())} in {len(shape.files)} files"),
        ("Functions (incl. methods, nested)", str(len(shape.functions))),
        ("Largest file (lines)", f"`{largest[0]}` ({largest[1]})"),
        (f"Functions longer than {LONG_FUNCTION_LINES} lines", f"{len(long_fns)}{longest}"),
        (f"Functions with more than {MANY_PARAMS} params (outside cli.py)", str(len(many_params))),
        ("Length of `class Pipeline` (lines)", pipeline),
        ("String comparisons on parameterisation / model kind", str(len(shape.compares))),
        ("Duplicated pairs (`duplicates`)", dup_count),
    ]
    out = [f"Code shape of `{src}`", "", "| measure | value |", "| --- | --- |"]
    out += [f"| {name} | {value} |" for name, value in rows]

    out += ["", f"### Functions longer than {LONG_FUNCTION_LINES} lines", ""]
    out += [f"- {where(f)}" for f in long_fns] or ["- none"]
    out += ["", f"### Functions with more than {MANY_PARAMS} params (outside cli.py)", ""]
    out += [f"- {where(f)}" for f in many_params] or ["- none"]
    out += ["", "### String comparisons on parameterisation / model kind", ""]
    out += [f"- {rel}:{line} `{segment}`" for rel, line, segment in shape.compares] or ["- none"]
    out += ["", "### `duplicates` rows", "", "```", *dup_lines, "```"]
    if shape.errors:
        out += ["", "### Files that did not parse", ""] + [f"- {e}" for e in shape.errors]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, measure the tree and print the report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", nargs="?", type=Path, default=DEFAULT_SRC, help="source dir (default: src/diffusionlab)")
    args = parser.parse_args(argv)
    src = args.src.resolve()
    if not src.is_dir():
        parser.error(f"{src} is not a directory")
    shape = measure(src)
    dup_count, dup_lines = run_duplicates(src)
    print(report(src, shape, dup_count, dup_lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
