"""A report's blocks as Markdown and as one self-contained HTML page.

Usage:
    markdown(blocks, out_dir)   # blocks: ("h1"|"h2"|"h3", text), ("p", text), ("ul", lines),
    html_page(blocks)           #         ("table", header, rows), ("img", caption, path)
                                # report.html: sortable, filterable tables; the plots interactive (Plotly)
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from peftbench.report.interactive import plotly_js, sidecar


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


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1240px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:0.3em 0 1em;font-size:0.9em}td,th{border:1px solid #ccc;padding:4px 8px;"
    "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4;cursor:pointer;"
    "user-select:none}th.asc::after{content:' \\25B2'}th.desc::after{content:' \\25BC'}"
    "img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4;padding:0 3px}"
    ".plot{margin:1em 0}.filter{margin:0.6em 0 0;font-size:0.85em;padding:2px 6px;width:22em}"
    "#verdicts{border:1px solid #bbb;background:#fafafa;padding:0.4em 1em;margin:1em 0}"
    "#toolbar{position:sticky;top:0;background:#fff;padding:0.4em 0;border-bottom:1px solid #ddd;z-index:10}"
)

# sort on a header click (numbers with their units: 1.2 MB > 900 kB; cells without a number last), filter rows by
# the words typed
SCRIPT = r"""
var UNITS={B:1,kB:1e3,KB:1e3,MB:1e6,GB:1e9,TB:1e12,KiB:1024,MiB:1048576,GiB:1073741824,ms:1,s:1e3,x:1,'%':1};
function num(t){t=t.replace(/,/g,'').replace(/\*\*/g,'').trim();
 var m=t.match(/^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i);if(!m)return null;
 var u=t.slice(m[0].length).trim().split(/[\s\[(]/)[0];return parseFloat(m[0])*(UNITS[u]||1);}
function sortBy(th){var table=th.closest('table'),i=Array.prototype.indexOf.call(th.parentNode.children,th);
 var body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows),asc=!th.classList.contains('asc');
 table.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc')});
 th.classList.add(asc?'asc':'desc');
 rows.sort(function(a,b){var x=a.cells[i]?a.cells[i].textContent:'',y=b.cells[i]?b.cells[i].textContent:'';
  var nx=num(x),ny=num(y);if((nx===null)!==(ny===null))return nx===null?1:-1;  // unmeasured cells last
  var c=(nx!==null)?nx-ny:x.localeCompare(y);return asc?c:-c;});
 rows.forEach(function(r){body.appendChild(r)});}
function words(el){return el?el.value.toLowerCase().split(/\s+/).filter(Boolean):[]}
function applyFilters(){var all=words(document.getElementById('filter-all'));
 document.querySelectorAll('table.sortable').forEach(function(t){var w=all.concat(words(t.previousElementSibling));
  Array.prototype.forEach.call(t.tBodies[0].rows,function(r){var text=r.textContent.toLowerCase();
   r.style.display=w.every(function(x){return text.indexOf(x)>=0})?'':'none';});});}
document.querySelectorAll('table.sortable th').forEach(function(th){
 th.addEventListener('click',function(){sortBy(th)})});
document.querySelectorAll('input.filter').forEach(function(el){el.addEventListener('input',applyFilters)});
if(window.Plotly){document.querySelectorAll('script.figure').forEach(function(s){var f=JSON.parse(s.textContent);
 Plotly.newPlot(s.dataset.target,f.data,f.layout,{displaylogo:false,responsive:true});});}
"""


def _ul(lines) -> str:
    return "<ul>" + "".join(f"<li>{inline(x)}</li>" for x in lines) + "</ul>"


def _table(b: tuple) -> list[str]:
    head = "".join(f"<th>{inline(h)}</th>" for h in b[1])
    rows = ["<tr>" + "".join(f"<td>{inline(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
    return [
        "<input class='filter' type='search' placeholder='filter these rows: method, model, task, target…'>",
        f"<table class='sortable'><thead><tr>{head}</tr></thead><tbody>",
        *rows,
        "</tbody></table>",
    ]


def _figure(b: tuple, n: int, interactive: bool) -> list[str]:
    """A plot: the Plotly figure saved beside its PNG where report.html can draw it, else the PNG itself."""
    fig = sidecar(b[2])
    if interactive and fig.is_file():
        data = fig.read_text().replace("</", "<\\/")
        return [
            f"<div class='plot' id='plot-{n}' title='{html.escape(b[1])}'></div>",
            f"<script type='application/json' class='figure' data-target='plot-{n}'>{data}</script>",
        ]
    data = base64.b64encode(Path(b[2]).read_bytes()).decode()
    return [f"<img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'>"]


def verdicts(blocks: list[tuple]) -> list[tuple]:
    """Every group's verdict list under its section's title: the page opens with them."""
    out, title = [], None
    for i, b in enumerate(blocks):
        if b[0] == "h2":
            title = b[1]
        elif b[:2] == ("h3", "Verdict") and i + 1 < len(blocks) and blocks[i + 1][0] == "ul":
            out.append((title, blocks[i + 1][1]))
    return out


def html_page(blocks: list[tuple]) -> str:
    """One page that opens from disk with no network: sortable, filterable tables, the plots interactive
    (plotly.js inlined where the plotly package is installed; else the PNGs), every verdict at the top."""
    js = plotly_js() if any(b[0] == "img" for b in blocks) else None
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>peftbench report</title>"]
    parts += [f"<style>{STYLE}</style>"] + ([f"<script>{js}</script>"] if js else []) + ["</head><body>"]
    body, n = [], 0
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{inline(b[1])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{inline(b[1])}</p>")
        elif kind == "ul":
            body.append(_ul(b[1]))
        elif kind == "table":
            body += _table(b)
        elif kind == "img":
            n += 1
            body += _figure(b, n, js is not None)
    found = verdicts(blocks)
    top = ["<div id='toolbar'><input id='filter-all' class='filter' type='search' "
           "placeholder='filter every table: method, model, task, target…'></div>"]  # fmt: skip
    if found:
        top.append("<div id='verdicts'><h2>Verdicts</h2>")
        top += [f"<h3>{inline(t or '')}</h3>" + _ul(ls) for t, ls in found]
        top.append("</div>")
    first = 1 if body and body[0].startswith("<h1>") else 0
    parts += body[:first] + top + body[first:]
    parts += [f"<script>{SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts)
