"""Pictures of an experiment tree with no system binary: a tidy layout, SVG, PNG and PDF.

:mod:`dagger.drawing.layout` places the tree (a pure function returning plain
data); :mod:`dagger.drawing.render` writes it as SVG, or through matplotlib as
PNG or PDF. This module turns stored states into the layout's input and offers
:func:`draw`, which ``StaticExperimentTree.draw`` and ``dagger draw`` use.
Graphviz is only an export (:func:`to_dot`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from html import escape
from typing import TYPE_CHECKING, Any

from dagger.drawing.layout import STATUS_COLOURS, Layout, NodeSpec, layout
from dagger.drawing.render import to_file, to_svg
from dagger.graph import flat_results, fmt_value

if TYPE_CHECKING:
    from dagger.state import ExperimentState

__all__ = ["Drawing", "NodeSpec", "Layout", "layout", "node_specs", "draw", "to_dot", "FORMATS"]

FORMATS = ("svg", "png", "pdf")


def status_of(meta: dict[str, Any]) -> str:
    """``root``, ``ok``, ``failed`` or ``function failed``, from a state's metadata."""
    if meta.get("status") == "failed":
        return "failed"
    if meta.get("recipe") is None:
        return "root"
    return "function failed" if meta.get("function_errors") else "ok"


def label_parts(meta: dict[str, Any], result: str | None) -> tuple[str, list[tuple[str, str]]]:
    """A state's title (recipe name, or ``root``) and its label rows: properties, tags, results."""
    recipe = meta.get("recipe")
    if recipe is None:
        title, props = "root", meta.get("properties") or {}
    else:
        title, props = recipe.get("name", "?"), recipe.get("properties") or {}
    lines: list[tuple[str, str]] = []
    if props:
        lines.append(("props", ", ".join(f"{k}={fmt_value(v)}" for k, v in props.items())))
    tags = meta.get("tags") or []
    if tags:
        lines.append(("tags", " · ".join(str(t) for t in tags)))
    results = flat_results(meta.get("results") or {})
    if result is not None:
        results = {k: v for k, v in results.items() if k == result or k.endswith("." + result)}
    if results:
        lines.append(("results", ", ".join(f"{k}={fmt_value(v)}" for k, v in results.items())))
    return str(title), lines


def node_specs(
    states: Iterable[ExperimentState], result: str | None = None, highlight: Iterable[ExperimentState] = ()
) -> list[NodeSpec]:
    """The layout's input for stored states (reads their JSON metadata only)."""
    marked = {n.sha() for n in highlight}
    specs = []
    for node in states:
        meta = node._meta()
        sha = node.sha()
        title, lines = label_parts(meta, result)
        specs.append(
            NodeSpec(
                id=sha,
                parent=meta.get("parent"),
                title=title,
                short=sha[:8],
                status=status_of(meta),
                lines=tuple(lines),
                marked=sha in marked,
            )
        )
    return specs


class Drawing:
    """A laid-out tree: displays itself in Jupyter, and saves as SVG, PNG or PDF."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self._svg: str | None = None

    @property
    def svg(self) -> str:
        """The picture as SVG text."""
        if self._svg is None:
            self._svg = to_svg(self.layout)
        return self._svg

    def _repr_svg_(self) -> str:
        return self.svg

    def save(self, filename: str | os.PathLike[str], format: str | None = None) -> str:  # noqa: A002
        """Write the picture; the format comes from ``format`` or the file's suffix (svg by default)."""
        path = os.fspath(filename)
        fmt = resolve_format(path, format)
        if fmt == "svg":
            with open(path, "w", encoding="utf-8") as f:
                f.write(self.svg)
        else:
            to_file(self.layout, path, fmt)
        return path

    def __repr__(self) -> str:
        shown = sum(1 for b in self.layout.boxes if not b.summary)
        return f"<Drawing {shown} of {self.layout.total_states} states, {self.layout.width:.0f}x{self.layout.height:.0f}px>"


def resolve_format(filename: str, format: str | None) -> str:  # noqa: A002
    """The picture format: ``format`` if given, else the suffix; a clear error for anything else."""
    base = os.path.basename(filename)
    fmt = (format or (base.rsplit(".", 1)[-1] if "." in base else "svg")).lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"cannot draw to format {fmt!r}: use svg, png or pdf (from the file's suffix or format=)")
    return fmt


def draw(
    states: Iterable[ExperimentState],
    filename: str | os.PathLike[str] | None = None,
    format: str | None = None,  # noqa: A002
    result: str | None = None,
    highlight: Iterable[ExperimentState] = (),
    view: bool = False,
    max_states: int = 500,
) -> Drawing | str:
    """Lay out ``states`` and write the picture to ``filename``, or return a :class:`Drawing` without one.

    With ``view=True`` the file (a temporary SVG when no filename is given) is
    opened with the platform's viewer, if there is one; having none is not an error.
    """
    if filename is not None:
        resolve_format(os.fspath(filename), format)  # refuse a bad format before any work
    drawing = Drawing(layout(node_specs(states, result, highlight), max_states=max_states))
    if filename is None and not view:
        return drawing
    if filename is None:
        fd, tmp = tempfile.mkstemp(prefix="dagger-tree-", suffix="." + (format or "svg"))
        os.close(fd)
        filename = tmp
    path = drawing.save(filename, format)
    if view:
        open_file(path)
    return path


def open_file(path: str) -> bool:
    """Open ``path`` with the platform's viewer in the background; False when there is none (never raises)."""
    try:
        if sys.platform == "win32":
            os.startfile(path)  # type: ignore[attr-defined]  # noqa: S606
            return True
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        if shutil.which(opener) is None:
            return False
        subprocess.Popen(  # noqa: S603
            [opener, path], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return True
    except OSError:
        return False


def _dot_id(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def dot_label(spec: NodeSpec) -> str:
    """A Graphviz HTML-like label for one state, in the look of the built-in drawing."""
    fill, border = STATUS_COLOURS[spec.status]
    rows = [
        f'<TR><TD ALIGN="LEFT"><B>{escape(spec.title)}</B>  <FONT COLOR="#777777">{escape(spec.short)}</FONT></TD></TR>'
    ]
    colours = {"props": "#111111", "tags": "#8e44ad", "results": "#1d6fa5"}
    for style, text in spec.lines:
        rows.append(
            f'<TR><TD ALIGN="LEFT"><FONT POINT-SIZE="9" COLOR="{colours.get(style, "#111111")}">'
            f"{escape(text)}</FONT></TD></TR>"
        )
    width = "3" if spec.marked else "1"
    return (
        f'<<TABLE BORDER="{width}" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" STYLE="ROUNDED" '
        f'BGCOLOR="{fill}" COLOR="{border}">{"".join(rows)}</TABLE>>'
    )


GRAPH_ATTR = {"rankdir": "TB", "nodesep": "0.3", "ranksep": "0.45"}
NODE_ATTR = {"shape": "plain", "fontname": "Helvetica", "fontsize": "10"}
EDGE_ATTR = {"color": "#7a7a7a", "arrowsize": "0.7"}


def dot_items(specs: list[NodeSpec]) -> Iterator[tuple[str, str, str]]:
    """The DOT nodes ``("node", id, label)`` and edges ``("edge", parent, child)`` of a tree."""
    ids = {s.id for s in specs}
    for s in specs:
        yield ("node", s.id[:12], dot_label(s))
    for s in specs:
        if s.parent is not None and s.parent in ids:
            yield ("edge", s.parent[:12], s.id[:12])


def to_dot(specs: list[NodeSpec]) -> str:
    """Graphviz DOT source for a tree (plain text: needs neither Graphviz nor its Python package)."""

    def attrs(d: dict[str, str]) -> str:
        return " ".join(f"{k}={_dot_id(v)}" for k, v in d.items())

    out = ["digraph experiment {", f"\tgraph [{attrs(GRAPH_ATTR)}]", f"\tnode [{attrs(NODE_ATTR)}]"]
    out.append(f"\tedge [{attrs(EDGE_ATTR)}]")
    for item in dot_items(specs):
        if item[0] == "node":
            out.append(f"\t{_dot_id(item[1])} [label={item[2]}]")
        else:
            out.append(f"\t{_dot_id(item[1])} -> {_dot_id(item[2])}")
    out.append("}")
    return "\n".join(out) + "\n"
