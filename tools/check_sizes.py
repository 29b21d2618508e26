"""House limits that ruff does not check: functions at most 60 lines, modules at most 400 (src/ only).

python tools/check_sizes.py        # exit 1 naming every function or module over its limit
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


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
    found = problems(Path(__file__).resolve().parents[1] / "src")
    print("\n".join(found) or "sizes ok")
    sys.exit(1 if found else 0)
