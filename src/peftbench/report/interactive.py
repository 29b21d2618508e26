"""The report's plots, interactive: each matplotlib figure also as a Plotly figure (JSON), drawn in report.html.

Usage:
    save(fig, path)           # path.png as before, and path.plotly.json beside it (plots, deploy, scaling)
    hover(name, xlabel, x, ylabel, y)     # a point's hover text: the run, both measures with their intervals
    figure_dict(fig)          # {"data": [...], "layout": {...}}: Plotly's figure format, read off the axes
    plotly_js()               # plotly.js itself (from the plotly package), inlined once into report.html

One drawing per plot: the figure the PNG shows is read back (lines, bars, scatter points, error bars, annotations,
axes, scales, tick labels) rather than drawn a second time in another library, so the two never disagree. A
scatter point's hover text is its artist's ``gid`` (plots.py sets it: the run and its intervals); a bar's is its
tick label and height. No network is needed: plotly.js is read from the installed package.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.text import Annotation  # noqa: E402

PX_PER_INCH = 100
DASHES = {"-": "solid", "--": "dash", ":": "dot", "-.": "dashdot"}
SYMBOLS = {"o": "circle", "X": "x", "x": "x-thin-open", "s": "square", "^": "triangle-up", "v": "triangle-down",
           "D": "diamond", "*": "star", "+": "cross-thin-open", "_": "line-ew-open", "|": "line-ns-open"}  # fmt: skip
PATTERNS = {"/": "/", "//": "/", "\\": "\\", "x": "x", "-": "-", "|": "|", "+": "+", ".": "."}


def sidecar(png: Path) -> Path:
    """Where a plot's Plotly figure lies: beside its PNG."""
    return Path(png).with_suffix(".plotly.json")


def save(fig, path: Path, **savefig) -> Path:
    """The PNG (as matplotlib draws it) and its interactive figure beside it; the figure is closed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **savefig)
    try:
        text = json.dumps(figure_dict(fig), separators=(",", ":"), default=_plain)
        sidecar(path).write_text(text)
    finally:
        plt.close(fig)
    return path


def _plain(v):
    """numpy's scalars and arrays (matplotlib hands them back) as JSON's numbers and lists."""
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serializable")


@lru_cache(maxsize=1)
def plotly_js() -> str | None:
    """plotly.js from the installed plotly package; None where it is not installed (the page shows PNGs)."""
    try:
        from importlib.resources import files

        return (files("plotly") / "package_data" / "plotly.min.js").read_text(encoding="utf-8")
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        return None


def hover(name: str, xlabel: str, x: str, ylabel: str, y: str, *, on_front: bool = False) -> str:
    """A point's hover text in report.html: the experiment, both measures with their 95 % intervals (written by
    ``metrics.spread``), and whether it is on the Pareto front."""
    return f"<b>{name}</b><br>{xlabel}: {x}<br>{ylabel}: {y}" + ("<br>on the Pareto front" if on_front else "")


def _tick(text: str) -> str:
    """matplotlib's mathtext tick labels ($\\mathdefault{10^{5}}$) as plain text with a superscript."""
    t = re.sub(r"\\mathdefault\{(.*)\}", r"\1", text.replace("$", ""))
    t = re.sub(r"\^\{([^}]*)\}", r"<sup>\1</sup>", t)
    return t.replace("\\times", "×").replace("\\minus", "−").replace("{", "").replace("}", "")


def _hex(c) -> str:
    return to_hex(c, keep_alpha=False)


def _legend(artist) -> dict:
    """A trace's legend entry: matplotlib's label, unless it is one of its private ``_child0``/``_nolegend_``."""
    label = artist.get_label() or ""
    named = not label.startswith("_")
    return {"name": label if named else "", "showlegend": bool(label) and named}


def figure_dict(fig) -> dict:
    fig.canvas.draw()  # tick labels are formatted at draw time
    data, annotations = [], []
    layout = {
        "width": min(1200, int(fig.get_figwidth() * PX_PER_INCH * 1.1)),
        "height": int(fig.get_figheight() * PX_PER_INCH * 1.25),
        "margin": {"l": 60, "r": 20, "t": 60, "b": 60},
        "hovermode": "closest",
        "template": "plotly_white",
        "legend": {"font": {"size": 10}},
    }
    sup = getattr(fig, "_suptitle", None)
    if sup is not None and sup.get_text():
        layout["title"] = {"text": sup.get_text().replace("\n", "<br>"), "font": {"size": 13}}
    for n, ax in enumerate(fig.get_axes(), start=1):
        xa, ya = ("x", "y") if n == 1 else (f"x{n}", f"y{n}")
        layout.update(_axes_layout(ax, n))
        for trace in _traces(ax):
            data.append({**trace, "xaxis": xa, "yaxis": ya})
        annotations += _texts(ax, xa, ya)
        if ax.get_title():
            box = ax.get_position()
            annotations.append(
                {"text": ax.get_title().replace("\n", "<br>"), "xref": "paper", "yref": "paper", "showarrow": False,
                 "x": (box.x0 + box.x1) / 2, "y": box.y1 + 0.02, "yanchor": "bottom", "font": {"size": 11}}
            )  # fmt: skip
    layout["annotations"] = annotations
    layout["showlegend"] = any(t.get("showlegend") for t in data)
    return {"data": data, "layout": layout}


def _axes_layout(ax, n: int) -> dict:
    box = ax.get_position()
    out = {}
    for axis, name, (lo, hi), other in (
        (ax.xaxis, "xaxis", (box.x0, box.x1), "y"),
        (ax.yaxis, "yaxis", (box.y0, box.y1), "x"),
    ):
        key = name if n == 1 else f"{name}{n}"
        log = axis.get_scale() == "log"
        spec = {
            "domain": [max(0.0, lo), min(1.0, hi)],
            "anchor": other if n == 1 else f"{other}{n}",
            "title": {"text": axis.get_label_text().replace("\n", "<br>"), "font": {"size": 11}},
            "type": "log" if log else "linear",
            "showgrid": any(line.get_visible() for line in axis.get_gridlines()),
        }
        ticks = [(v, t.get_text()) for v, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())]
        lim = ax.get_xlim() if name == "xaxis" else ax.get_ylim()
        ticks = [(v, t) for v, t in ticks if t and min(lim) <= v <= max(lim)]
        if ticks:
            spec |= {
                "tickmode": "array",
                "tickvals": [float(v) for v, _ in ticks],
                "ticktext": [_tick(t) for _, t in ticks],
            }
        if not log or min(lim) > 0:
            spec["range"] = [math.log10(v) for v in lim] if log else [float(v) for v in lim]
        out[key] = spec
    return out


def _traces(ax) -> list[dict]:
    return _bars(ax) + _collections(ax) + _lines(ax)


def _bars(ax) -> list[dict]:
    labels = {round(float(v), 6): t.get_text() for v, t in zip(ax.get_xticks(), ax.get_xticklabels())}
    out = []
    for c in ax.containers:
        if not isinstance(c, BarContainer) or not c.patches:
            continue
        rects = list(c.patches)
        xs = [r.get_x() + r.get_width() / 2 for r in rects]
        names = [labels.get(round(x, 6)) or labels.get(round(float(round(x)), 6)) or "" for x in xs]
        hatch = rects[0].get_hatch() or ""
        out.append({
            "type": "bar",
            "x": xs,
            "y": [r.get_height() for r in rects],
            "base": [r.get_y() for r in rects],
            "width": [r.get_width() for r in rects],
            "marker": {"color": [_hex(r.get_facecolor()) for r in rects], "line": {"color": "#000", "width": 0.5},
                       **({"pattern": {"shape": PATTERNS.get(hatch, "/")}} if hatch else {})},
            "hovertext": [f"{n}: {r.get_height():,.4g}" for n, r in zip(names, rects)],
            "hoverinfo": "text",
            **_legend(c),
        })  # fmt: skip
    return out


def _collections(ax) -> list[dict]:
    out = []
    for c in ax.collections:
        if isinstance(c, LineCollection):  # error bars and other segments
            xs, ys = [], []
            for seg in c.get_segments():
                xs += [float(p[0]) for p in seg] + [None]
                ys += [float(p[1]) for p in seg] + [None]
            color = _hex(c.get_colors()[0]) if len(c.get_colors()) else "#000"
            width = float(c.get_linewidths()[0]) if len(c.get_linewidths()) else 1.0
            line = {"color": color, "width": width}
            out.append({"type": "scatter", "mode": "lines", "x": xs, "y": ys, "line": line, "hoverinfo": "skip",
                        "showlegend": False})  # fmt: skip
        elif isinstance(c, PathCollection) and len(c.get_offsets()):
            out.append(_scatter(c))
    return out


def _symbol(c) -> str:
    """The scatter's marker, told by its path (matplotlib keeps no name): o, X, s, ^, v, D."""
    from matplotlib.markers import MarkerStyle

    paths = c.get_paths()
    if not len(paths):
        return "circle"
    v = paths[0].vertices
    for m in ("X", "s", "^", "v", "D", "o"):
        style = MarkerStyle(m)
        ref = style.get_path().transformed(style.get_transform()).vertices
        if v.shape == ref.shape and abs(v - ref).max() < 1e-6:
            return SYMBOLS[m]
    return "circle"


def _scatter(c) -> dict:
    pts = c.get_offsets()
    face, edge = c.get_facecolors(), c.get_edgecolors()
    sizes = c.get_sizes()
    n = len(pts)
    color = [
        _hex(face[i % len(face)]) if len(face) and face[i % len(face)][3] > 0 else "rgba(0,0,0,0)" for i in range(n)
    ]
    gid = c.get_gid()
    return {
        "type": "scatter",
        "mode": "markers",
        "x": [float(p[0]) for p in pts],
        "y": [float(p[1]) for p in pts],
        "marker": {
            "symbol": _symbol(c),
            "color": color,
            "size": [max(6.0, float(sizes[i % len(sizes)]) ** 0.5 * 1.2) for i in range(n)] if len(sizes) else 8,
            "line": {"color": _hex(edge[0]) if len(edge) else "#000", "width": 1.5 if len(edge) else 0},
        },
        "hovertext": [gid] * n if gid else None,
        "hoverinfo": "text" if gid else "x+y",
        **_legend(c),
    }


def _lines(ax) -> list[dict]:
    out = []
    for line in ax.get_lines():
        if not line.get_visible():
            continue
        xy = line.get_xydata()
        xs, ys = [float(p[0]) for p in xy], [float(p[1]) for p in xy]
        if line.get_transform() == ax.get_xaxis_transform():  # axvline: y in axes fraction
            ys = _axes_fraction_to_data(ax.get_ylim(), ax.get_yscale(), ys)
        elif line.get_transform() == ax.get_yaxis_transform():  # axhline: x in axes fraction
            xs = _axes_fraction_to_data(ax.get_xlim(), ax.get_xscale(), xs)
        elif line.get_transform() != ax.transData:
            continue
        ls, marker = line.get_linestyle(), line.get_marker()
        has_marker = marker not in (None, "", "None", " ")
        mode = "+".join(m for m, on in (("lines", ls in DASHES), ("markers", has_marker)) if on) or "markers"
        legend, gid = _legend(line), line.get_gid()
        quiet = marker in ("_", "|") or not (legend["showlegend"] or has_marker or gid)  # caps, a front's line
        hover = {"hoverinfo": "skip"} if quiet else {"hovertext": [gid] * len(xs), "hoverinfo": "text"} if gid else {}
        out.append({
            "type": "scatter", "mode": mode, "x": xs, "y": ys, **hover,
            "line": {"color": _hex(line.get_color()), "dash": DASHES.get(ls, "solid"), "width": line.get_linewidth()},
            "marker": _line_marker(line, marker) if has_marker else {"color": _hex(line.get_color())},
            **legend,
        })  # fmt: skip
    return out


def _line_marker(line, marker: str) -> dict:
    symbol = SYMBOLS.get(marker, "circle")
    open_ = symbol.endswith("-open")  # an error bar's cap: a stroke in the edge colour
    color = line.get_markeredgecolor() if open_ else line.get_markerfacecolor()
    return {"symbol": symbol, "color": _hex(color), "size": max(4.0, line.get_markersize() * (1.6 if open_ else 1.0)),
            "line": {"color": _hex(line.get_markeredgecolor()), "width": 1.5 if open_ else 0.5}}  # fmt: skip


def _axes_fraction_to_data(lim, scale: str, fracs: list[float]) -> list[float]:
    lo, hi = lim
    if scale == "log" and lo > 0 and hi > 0:
        return [lo * (hi / lo) ** f for f in fracs]
    return [lo + (hi - lo) * f for f in fracs]


def _placed(v: float, scale: str, in_data: bool) -> float:
    """An annotation's coordinate: plotly places one on a log axis by the exponent."""
    return math.log10(v) if in_data and scale == "log" and v > 0 else float(v)


def _texts(ax, xa: str, ya: str) -> list[dict]:
    out = []
    for t in ax.texts:
        text = t.get_text()
        if not text or not t.get_visible():
            continue
        if isinstance(t, Annotation):
            x, y = t.xy
            ref = {"xref": xa, "yref": ya}
        elif t.get_transform() == ax.transAxes:
            x, y = t.get_position()
            ref = {"xref": f"{xa} domain", "yref": f"{ya} domain"}
        else:
            x, y = t.get_position()
            ref = {"xref": xa, "yref": ya}
        x, y = _placed(x, ax.get_xscale(), ref["xref"] == xa), _placed(y, ax.get_yscale(), ref["yref"] == ya)
        out.append({"text": text, "x": x, "y": y, **ref, "showarrow": False, "font": {"size": 9},
                    "xanchor": "left", "yanchor": "bottom"})  # fmt: skip
    return out
