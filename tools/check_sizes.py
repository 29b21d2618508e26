"""House limits that ruff does not check (src/ only): functions at most 60 lines; modules over 400 lines
are named as a warning (split by concern, never to meet a size: a cohesive module may pass 400), over 600
an error.

python tools/check_sizes.py        # exit 1 naming every function over 60 lines or module over 600
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 60
WARN_MODULE_LINES = 400  # worth a look: is it one concern?
MAX_MODULE_LINES = 600


def warnings(root: Path) -> list[str]:
    lengths = ((p, len(p.read_text(encoding="utf-8").splitlines())) for p in sorted(root.rglob("*.py")))
    return [f"{p}: {n} lines (over {WARN_MODULE_LINES}: one concern?)" for p, n in lengths if WARN_MODULE_LINES < n]


def problems(root: Path) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{path}: {n} lines (modules at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{path}:{node.lineno}: {node.name} is {length} lines (at most {MAX_FUNCTION_LINES})")
    return out


if __name__ == "__main__":
    src = Path(__file__).resolve().parents[1] / "src"
    found = problems(src)
    for line in warnings(src):
        print(f"warning: {line}")
    print("\n".join(found) or "sizes ok")
    sys.exit(1 if found else 0)
