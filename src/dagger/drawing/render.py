"""Renderers of a :class:`~dagger.drawing.layout.Layout`: SVG written directly, PNG and PDF through matplotlib.

Both read the same boxes, spans, edges, styles and colours, so a tree looks the
same in every format. SVG needs nothing beyond the standard library; matplotlib
(the ``plot`` extra) is imported only when a PNG or PDF is asked for.
"""

from __future__ import annotations

from html import escape
from typing import Any

from dagger.drawing.layout import FONT_FAMILY, RADIUS, STATUS_COLOURS, STYLES, Layout

EDGE_COLOUR = "#7a7a7a"
EDGE_WIDTH = 1.2
BORDER = 1.0
MARKED_BORDER = 3.0
_SVG_FONTS = f"'{FONT_FAMILY}', 'Bitstream Vera Sans', Verdana, Helvetica, Arial, sans-serif"
MATPLOTLIB_HINT = "pip install 'dagger-experiments[plot]'"


def _n(v: float) -> str:
    """A number for SVG: short, no trailing zeros."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def to_svg(lay: Layout) -> str:
    """The layout as a standalone SVG document (UTF-8 text)."""
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(lay.width)}" height="{_n(lay.height)}" '
        f'viewBox="0 0 {_n(lay.width)} {_n(lay.height)}" font-family="{escape(_SVG_FONTS)}">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        '<g class="edges">',
    ]
    for e in lay.edges:
        head = " ".join(f"{_n(x)},{_n(y)}" for x, y in e.head)
        line = " ".join(f"{_n(x)},{_n(y)}" for x, y in e.points)
        out.append(
            f'<g class="edge" data-parent="{escape(e.parent)}" data-child="{escape(e.child)}">'
            f'<polyline points="{line}" fill="none" stroke="{EDGE_COLOUR}" '
            f'stroke-width="{_n(EDGE_WIDTH)}"/><polygon points="{head}" fill="{EDGE_COLOUR}"/></g>'
        )
    out.append("</g>")
    out.append('<g class="nodes">')
    for b in lay.boxes:
        fill, border = STATUS_COLOURS[b.status]
        width = MARKED_BORDER if b.marked else BORDER
        kind = "summary" if b.summary else "node"
        tip = f"{len(b.states)} states not drawn" if b.summary else b.id
        out.append(f'<g class="{kind}" data-sha="{escape(b.id)}" data-status="{escape(b.status)}">')
        out.append(f"<title>{escape(tip)}</title>")
        out.append(
            f'<rect x="{_n(b.x)}" y="{_n(b.y)}" width="{_n(b.width)}" height="{_n(b.height)}" rx="{_n(RADIUS)}" '
            f'fill="{fill}" stroke="{border}" stroke-width="{_n(width)}"/>'
        )
        for s in b.spans:
            st = STYLES[s.style]
            weight = ' font-weight="bold"' if st["bold"] else ""
            out.append(
                f'<text x="{_n(s.x)}" y="{_n(s.y)}" font-size="{_n(st["size"])}"{weight} fill="{st["colour"]}" '
                f'xml:space="preserve">{escape(s.text, quote=False)}</text>'
            )
        out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _matplotlib() -> Any:
    try:
        import matplotlib  # noqa: F401
        from matplotlib.figure import Figure
        from matplotlib.patches import FancyBboxPatch, Polygon
    except ImportError:
        raise ImportError(
            f"drawing to PNG or PDF needs matplotlib: {MATPLOTLIB_HINT} (SVG needs nothing; draw to a .svg file)"
        ) from None
    return Figure, FancyBboxPatch, Polygon


#: Layout units are CSS pixels (96 per inch); matplotlib sizes text and lines in points (72 per inch).
_PT = 72 / 96
#: Most pixels a PNG may have along one side, and in all (Agg's limit is 2**16 per side).
MAX_SIDE = 30_000
MAX_PIXELS = 120_000_000


def png_dpi(lay: Layout, dpi: float = 144.0) -> float:
    """The resolution a PNG of this layout is written at: ``dpi``, lowered for very large trees."""
    w_in, h_in = lay.width / 96, lay.height / 96
    dpi = min(dpi, MAX_SIDE / max(w_in, h_in, 1e-9))
    return min(dpi, (MAX_PIXELS / max(w_in * h_in, 1e-9)) ** 0.5)


def to_file(lay: Layout, path: str, fmt: str, dpi: float = 144.0) -> None:
    """Write the layout as ``png`` or ``pdf`` through matplotlib (no pyplot: no global state, no GUI)."""
    Figure, FancyBboxPatch, Polygon = _matplotlib()
    fig = Figure(figsize=(max(lay.width, 1) / 96, max(lay.height, 1) / 96))
    fig.patch.set_facecolor("#ffffff")
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, max(lay.width, 1))
    ax.set_ylim(max(lay.height, 1), 0)
    ax.set_axis_off()
    for e in lay.edges:
        xs, ys = zip(*e.points, strict=True)
        ax.plot(xs, ys, color=EDGE_COLOUR, linewidth=EDGE_WIDTH * _PT, solid_capstyle="butt", solid_joinstyle="miter")
        ax.add_patch(Polygon(e.head, closed=True, facecolor=EDGE_COLOUR, edgecolor="none"))
    for b in lay.boxes:
        fill, border = STATUS_COLOURS[b.status]
        ax.add_patch(
            FancyBboxPatch(
                (b.x, b.y),
                b.width,
                b.height,
                boxstyle=f"round,pad=0,rounding_size={RADIUS}",
                facecolor=fill,
                edgecolor=border,
                linewidth=(MARKED_BORDER if b.marked else BORDER) * _PT,
            )
        )
        for s in b.spans:
            st = STYLES[s.style]
            ax.text(
                s.x,
                s.y,
                s.text,
                fontsize=float(st["size"]) * _PT,
                fontweight="bold" if st["bold"] else "normal",
                color=st["colour"],
                family=FONT_FAMILY,
                ha="left",
                va="baseline",
            )
    if fmt == "png":
        fig.savefig(path, format="png", dpi=png_dpi(lay, dpi))
    else:
        fig.savefig(path, format=fmt)
