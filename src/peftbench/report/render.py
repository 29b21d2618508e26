"""A report's blocks as Markdown and as one self-contained HTML page.

Usage:
    markdown(blocks, out_dir)   # blocks: ("h1"|"h2"|"h3", text), ("p", text), ("ul", lines),
    html_page(blocks)           #         ("table", header, rows), ("img", caption, path)
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path


def markdown(blocks: list[tuple], out_dir: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + b[1] + "\n")
        elif kind == "p":
            out.append(b[1] + "\n")
        elif kind == "ul":
            out.append("\n".join(f"- {line}" for line in b[1]) + "\n")
        elif kind == "table":
            header, rows = b[1], b[2]
            out.append("| " + " | ".join(header) + " |")
            out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
            out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{b[1]}]({b[2].relative_to(out_dir).as_posix()})\n")
    return "\n".join(out)


def inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def html_page(blocks: list[tuple]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>peftbench report</title><style>",
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}",
        "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}"
        "img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4;padding:0 3px}",
        "</style></head><body>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{inline(b[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{inline(b[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{inline(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in b[1]) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
            parts.append("</table>")
        elif kind == "img":
            data = base64.b64encode(Path(b[2]).read_bytes()).decode()
            parts.append(f"<img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
