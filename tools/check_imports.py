"""The import rules of src/peftbench: no import circle, no upward import, torch-free parts stay torch-free.

python tools/check_imports.py      # exit 1 naming every import that breaks a rule

Layers, lowest first; a module imports its own layer or lower ones (lazy imports inside functions
count too). The suite's process builds the report after its runs, so ``run`` sits above ``report``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LAYERS = [
    {"peftbench", "errors", "fs", "stats"},  # words and numbers everything uses
    {"spec"},  # what the user declares
    {"results"},  # records, strict JSON, the folder lock
    {"catalog"},  # what can be run
    {"deploy"},  # the forms a model ships in (ONNX, quantised), built from the catalog's models
    {"measure"},  # clocks and memory counters
    {"report"},  # reads results only
    {"run"},  # how a run happens
    {"cli", "__main__"},
]
# read by the report (and the plan's torch-free paths): these and what they import must not need torch
TORCH_FREE = {"errors", "fs", "stats", "results", "spec", "report", "catalog.methodspecs", "catalog.taskspecs"}
TORCH_FREE |= {"catalog.shapes", "catalog", "deploy", "deploy.targets"}


def rank(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def imports(root: Path) -> dict[str, set[str]]:
    """Module (dotted, without ``peftbench.``) -> the peftbench modules it imports."""
    out: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "peftbench"
        found: set[str] = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(_torch(node) for node in _module_level(tree)):  # lazy imports in functions are a choice
            found.add("torch")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "peftbench":
                base = node.module.removeprefix("peftbench").lstrip(".")
                for alias in node.names:  # `from peftbench.catalog import models` names a module
                    sub = f"{base}.{alias.name}" if base else alias.name
                    found.add(sub if (root / Path(*sub.split("."))).with_suffix(".py").exists() else base)
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix("peftbench.") for a in node.names if a.name.startswith("peftbench.")}
        out[name] = {m or "peftbench" for m in found} - {name}
    return out


def _module_level(tree) -> list:
    """The statements run at import: the module's body, into if/try blocks, not into functions or classes."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            todo += (
                node.body
                + node.orelse
                + getattr(node, "finalbody", [])
                + [s for h in getattr(node, "handlers", []) for s in h.body]
            )
    return out


def _torch(node) -> bool:
    if not isinstance(node, (ast.Import, ast.ImportFrom)):
        return False
    names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
    return any(n and n.split(".")[0] in ("torch", "transformers", "peft", "accelerate") for n in names)


def problems(root: Path) -> list[str]:
    graph = imports(root)
    out = []
    for mod, deps in sorted(graph.items()):
        for dep in sorted(deps - {"torch", "peftbench"}):
            if rank(dep) > rank(mod):
                out.append(
                    f"{mod} imports {dep}: an upward import ({dep.split('.')[0]} sits above {mod.split('.')[0]})"
                )
    for mod in sorted(m for m in graph if m in TORCH_FREE or m.split(".")[0] in TORCH_FREE - {"catalog", "deploy"}):
        reached, todo = set(), [mod]
        while todo:
            m = todo.pop()
            if m in reached or m not in graph and m != "torch":
                continue
            reached.add(m)
            todo += sorted(graph.get(m, ()))
        if "torch" in reached:
            out.append(f"{mod} must be torch-free, yet reaches torch (through {sorted(reached - {'torch', mod})})")
    out += [f"import circle: {' -> '.join(c)}" for c in _cycles(graph)]
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(graph.get(m, ())):
            if d not in graph or d == "peftbench":
                continue
            if state.get(d) == "open":
                found.append(path[path.index(d) :] + [d] if d in path else [m, d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


if __name__ == "__main__":
    found = problems(Path(__file__).resolve().parents[1] / "src" / "peftbench")
    print("\n".join(found) or "imports ok")
    sys.exit(1 if found else 0)
