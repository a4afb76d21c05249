"""A tidy layout of an experiment tree, as plain data.

The layout is a pure function: it takes the states as :class:`NodeSpec` records
(identity, parent, status and the text of the label) and returns a :class:`Layout`
of boxes, text spans and edges in pixel coordinates (SVG user units, y pointing
down). It reads no store, imports no renderer, and ``Layout.to_dict()`` is
JSON-ready, so the static pictures and an interactive view can share it.

The tree is placed in the Reingold-Tilford manner: each subtree is laid out on
its own, sibling subtrees are packed side by side as close as their contours
(the leftmost and rightmost extent on every level) allow, and each parent is
centred over the span of its children. Packing from the left and from the right
and taking the mean spreads small subtrees evenly between large ones; both
packings keep every pair of siblings apart, so their mean does too. Each depth
is one level, its boxes aligned at the top. A state with many children that are
all leaves (a sweep) shows them as a grid under it, reached by a comb of edges,
so a sweep of hundreds of states stays about as wide as it is tall. No edge
crosses a box.

Boxes are sized to their text from the advance widths of DejaVu Sans (the font
matplotlib ships and the SVG asks for first), so text fits in every format.
Trees larger than ``max_states`` are summarised: states are kept breadth-first,
at most ``max_children`` children per state, and the rest of each state's
descendants become one ``+N states`` box.
"""

from __future__ import annotations

import math
import unicodedata
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# Advance widths of DejaVu Sans and DejaVu Sans Bold for ASCII 32..126, in 1/1000 em.
_REGULAR = (
    "318 401 460 838 636 950 780 275 390 390 500 838 318 361 318 337 636 636 636 636 636 636 636 636 636 636 "
    "337 337 838 838 838 531 1000 684 686 698 770 632 575 775 752 295 295 656 557 863 748 787 603 787 695 635 "
    "611 732 684 989 685 611 685 390 337 390 838 500 500 613 635 550 635 615 352 635 634 278 278 579 278 974 "
    "634 612 635 635 411 521 392 634 592 818 592 592 525 636 337 636 838"
)
_BOLD = (
    "348 456 521 838 696 1002 872 306 457 457 523 838 380 415 380 365 696 696 696 696 696 696 696 696 696 696 "
    "400 400 838 838 838 580 1000 774 762 734 830 683 683 821 837 372 372 775 637 995 837 850 733 850 770 720 "
    "682 812 774 1103 771 724 725 457 365 457 838 500 500 675 716 593 716 678 435 716 712 343 343 665 343 1042 "
    "712 687 716 716 493 595 478 712 652 924 645 652 582 712 365 712 838"
)
_WIDTHS = {
    False: {chr(32 + i): int(w) / 1000 for i, w in enumerate(_REGULAR.split())},
    True: {chr(32 + i): int(w) / 1000 for i, w in enumerate(_BOLD.split())},
}
_WIDTHS[False]["·"] = 0.318
_WIDTHS[True]["·"] = 0.380

#: The font every renderer uses (matplotlib ships it; the SVG names fallbacks with similar metrics).
FONT_FAMILY = "DejaVu Sans"

#: Text styles: font size (px), bold, colour. Renderers look spans up here by name.
STYLES: dict[str, dict[str, Any]] = {
    "title": {"size": 13.0, "bold": True, "colour": "#111111"},
    "hash": {"size": 12.0, "bold": False, "colour": "#777777"},
    "props": {"size": 11.0, "bold": False, "colour": "#111111"},
    "tags": {"size": 11.0, "bold": False, "colour": "#8e44ad"},
    "results": {"size": 11.0, "bold": False, "colour": "#1d6fa5"},
    "summary": {"size": 12.0, "bold": True, "colour": "#555555"},
}

#: Fill and border colour of each status.
STATUS_COLOURS: dict[str, tuple[str, str]] = {
    "ok": ("#e8f4ea", "#4a8f5a"),
    "root": ("#e6eef8", "#4a6f9f"),
    "failed": ("#fbe9e7", "#c0392b"),
    "function failed": ("#fdf2e0", "#d68910"),
    "summary": ("#f4f4f4", "#9a9a9a"),
}

PAD_X = 10.0  # text inset from a box's left and right edges
PAD_Y = 6.0  # text inset from a box's top and bottom edges
LINE_GAP = 4.0  # extra space between text lines
H_GAP = 18.0  # least horizontal space between boxes
V_GAP = 36.0  # vertical space between levels
MARGIN = 10.0  # space around the picture
WRAP = 300.0  # widest text line (px) before a line of comma-separated items wraps
RADIUS = 8.0  # corner radius of the boxes
FIT = 1.06  # room for text beyond its estimated width (renderers snap glyphs to pixels: a few % either way)
ROW_GAP = 12.0  # vertical space between the rows of a grid of leaves


def text_width(text: str, style: str = "props") -> float:
    """The estimated width in px of ``text`` in one of :data:`STYLES`."""
    spec = STYLES[style]
    table = _WIDTHS[bool(spec["bold"])]
    em = 0.0
    for ch in text:
        w = table.get(ch)
        if w is None:
            w = 1.0 if unicodedata.east_asian_width(ch) in ("W", "F") else 0.7
        em += w
    return em * float(spec["size"])


@dataclass(frozen=True)
class NodeSpec:
    """What the layout needs of one state: identity, parent, status and label text.

    ``lines`` are ``(style, text)`` rows under the title; a row whose text is a
    comma- or dot-separated list wraps when it is wider than :data:`WRAP`.
    """

    id: str
    parent: str | None
    title: str
    short: str = ""
    status: str = "ok"
    lines: tuple[tuple[str, str], ...] = ()
    marked: bool = False


@dataclass
class Span:
    """One run of text in one style; ``x`` and ``y`` (baseline) are absolute."""

    text: str
    style: str
    x: float
    y: float


@dataclass
class Box:
    """A drawn state (or a summary of several): its rectangle, colours and text.

    ``x``/``y`` are the top-left corner. ``states`` lists the ids the box stands
    for: one for a state, all summarised ones for a ``+N states`` box.
    """

    id: str
    parent: str | None
    x: float
    y: float
    width: float
    height: float
    status: str
    marked: bool
    depth: int
    spans: list[Span]
    states: list[str]
    summary: bool = False

    @property
    def centre(self) -> float:
        return self.x + self.width / 2


@dataclass
class Edge:
    """A line from a parent box to a child box: a polyline ending in an arrow head.

    ``points`` start at the parent's bottom centre and end at the base of the
    arrow head; ``head`` is the head's triangle, its tip (first point) on the
    child's edge: the top centre, or for a child in a grid of leaves, the left
    side of its title row.
    """

    parent: str
    child: str
    points: list[tuple[float, float]]
    head: list[tuple[float, float]]


@dataclass
class Layout:
    """A placed tree: boxes, edges and the picture's size in px."""

    width: float
    height: float
    boxes: list[Box]
    edges: list[Edge]
    total_states: int
    summarised: bool = False
    by_id: dict[str, Box] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The layout as JSON-ready data (lists, dicts, numbers and strings)."""
        return {
            "width": self.width,
            "height": self.height,
            "total_states": self.total_states,
            "summarised": self.summarised,
            # Built field by field: dataclasses.asdict's deep copies took most of the time at 10,000 states.
            "boxes": [
                {
                    "id": b.id,
                    "parent": b.parent,
                    "x": b.x,
                    "y": b.y,
                    "width": b.width,
                    "height": b.height,
                    "status": b.status,
                    "marked": b.marked,
                    "depth": b.depth,
                    "spans": [{"text": sp.text, "style": sp.style, "x": sp.x, "y": sp.y} for sp in b.spans],
                    "states": list(b.states),
                    "summary": b.summary,
                }
                for b in self.boxes
            ],
            "edges": [
                {"parent": e.parent, "child": e.child, "points": [list(p) for p in e.points], "head": [list(p) for p in e.head]}
                for e in self.edges
            ],
            "styles": STYLES,
            "status_colours": {k: list(v) for k, v in STATUS_COLOURS.items()},
            "font_family": FONT_FAMILY,
            "radius": RADIUS,
        }


def _wrap(text: str, style: str) -> list[str]:
    """Split a list-like line at its separators so no line is wider than WRAP (long items stay whole)."""
    if text_width(text, style) <= WRAP:
        return [text]
    sep = " · " if " · " in text else ", "
    parts = text.split(sep)
    out: list[str] = []
    line = ""
    for part in parts:
        candidate = f"{line}{sep}{part}" if line else part
        if line and text_width(candidate + sep.rstrip(), style) > WRAP:
            out.append(line + sep.rstrip())
            line = part
        else:
            line = candidate
    out.append(line)
    return out


def _line_height(style: str) -> float:
    return float(STYLES[style]["size"]) * 1.2 + LINE_GAP


def _measure(spec: NodeSpec) -> tuple[float, float, list[tuple[list[tuple[str, str, float]], float]]]:
    """A box's width and height, and its rows: [(spans as (text, style, dx)), baseline dy]."""
    rows: list[tuple[list[tuple[str, str, float]], float]] = []
    title_style = "summary" if spec.status == "summary" else "title"
    first: list[tuple[str, str, float]] = [(spec.title, title_style, 0.0)]
    width = text_width(spec.title, title_style)
    if spec.short:
        dx = width + text_width("  ", "hash")
        first.append((spec.short, "hash", dx))
        width = dx + text_width(spec.short, "hash")
    y = PAD_Y + float(STYLES[title_style]["size"])
    rows.append((first, y))
    y += _line_height(title_style) - float(STYLES[title_style]["size"])
    for style, text in spec.lines:
        for piece in _wrap(text, style):
            y += float(STYLES[style]["size"])
            rows.append(([(piece, style, 0.0)], y))
            width = max(width, text_width(piece, style))
            y += _line_height(style) - float(STYLES[style]["size"])
    height = y - LINE_GAP + PAD_Y + 3.0  # room for descenders under the last baseline
    return width * FIT + 2 * PAD_X, height, rows


def select(
    specs: Sequence[NodeSpec], max_states: int = 500, max_children: int = 8
) -> tuple[list[NodeSpec], dict[str, list[str]]]:
    """The states to draw, and ``+N states`` summaries for the rest.

    With at most ``max_states`` states, all are drawn. Otherwise states are kept
    breadth-first from the roots, at most ``max_children`` children of each and
    ``max_states`` boxes in all; the descendants a kept state loses are
    summarised by one box whose id is ``"+" + parent id``. Returns the specs to
    draw (summaries included, in tree order) and, for each summary box, the ids
    of the states it stands for.
    """
    if max_states < 1 or max_children < 1:
        raise ValueError("max_states and max_children must be at least 1")
    ids = {s.id for s in specs}
    children: dict[str | None, list[NodeSpec]] = {}
    for s in specs:
        parent = s.parent if s.parent in ids else None
        children.setdefault(parent, []).append(s)
    if len(specs) <= max_states:
        return list(specs), {}

    def subtree(root: NodeSpec) -> list[str]:
        out, stack = [], [root]
        while stack:
            n = stack.pop()
            out.append(n.id)
            stack.extend(children.get(n.id, ()))
        return out

    kept: list[NodeSpec] = []
    summaries: dict[str, list[str]] = {}
    extra: list[NodeSpec] = []
    queue: deque[NodeSpec] = deque(children.get(None, ()))
    budget = max_states - len(queue)
    while queue:
        node = queue.popleft()
        kept.append(node)
        kids = children.get(node.id, [])
        if not kids:
            continue
        room = max(0, min(len(kids), max_children, budget - 1 if len(kids) > 1 else budget))
        chosen = kids[:room] if room < len(kids) else kids
        rest = kids[len(chosen) :]
        budget -= len(chosen)
        queue.extend(chosen)
        if rest:
            hidden = [i for k in rest for i in subtree(k)]
            budget -= 1
            summaries["+" + node.id] = hidden
            noun = "state" if len(hidden) == 1 else "states"
            extra.append(NodeSpec(id="+" + node.id, parent=node.id, title=f"+{len(hidden)} {noun}", status="summary"))
    return kept + extra, summaries


def layout(specs: Iterable[NodeSpec], max_states: int = 500, max_children: int = 8, grid_after: int = 8) -> Layout:
    """Place the tree described by ``specs`` (parents may come after children; unknown parents make roots).

    A state with more than ``grid_after`` children, all of them leaves, shows
    them in a grid under it (a sweep stays about as wide as it is tall).
    """
    all_specs = list(specs)
    if len({s.id for s in all_specs}) != len(all_specs):
        raise ValueError("every NodeSpec needs a distinct id")
    drawn, summaries = select(all_specs, max_states, max_children)
    ids = {s.id for s in drawn}
    order = {s.id: i for i, s in enumerate(drawn)}
    children: dict[str | None, list[NodeSpec]] = {}
    for s in drawn:
        children.setdefault(s.parent if s.parent in ids else None, []).append(s)
    for kids in children.values():  # a summary box comes after its siblings
        kids.sort(key=lambda s: (s.status == "summary", order[s.id]))

    measured = {s.id: _measure(s) for s in drawn}
    # A state with many children that are all leaves (a sweep) shows them as a grid, so the
    # picture stays about as wide as it is tall; the grid is one block for the packing.
    grids: dict[str, tuple[int, float, float]] = {}  # parent -> columns, cell width, cell height
    for pid, kids in children.items():
        if pid is not None and len(kids) > grid_after and all(k.id not in children for k in kids):
            cols = max(2, math.ceil(math.sqrt(len(kids) / 2)))
            cell_w = max(measured[k.id][0] for k in kids)
            cell_h = max(measured[k.id][1] for k in kids)
            grids[pid] = (cols, cell_w, cell_h)

    def grid_size(pid: str) -> tuple[float, float]:
        cols, cell_w, cell_h = grids[pid]
        n = len(children[pid])
        used = min(cols, n)
        rows = math.ceil(n / cols)
        return used * cell_w + (used - 1) * H_GAP, rows * cell_h + (rows - 1) * ROW_GAP

    depth: dict[str, int] = {}
    level_height: list[float] = []

    def grow(d: int, h: float) -> None:
        while len(level_height) <= d:
            level_height.append(0.0)
        level_height[d] = max(level_height[d], h)

    stack = [(s, 0) for s in children.get(None, [])]
    while stack:
        s, d = stack.pop()
        depth[s.id] = d
        grow(d, measured[s.id][1])
        if s.id in grids:
            grow(d + 1, grid_size(s.id)[1])
            for k in children[s.id]:
                depth[k.id] = d + 1
        else:
            stack.extend((k, d + 1) for k in children.get(s.id, []))

    # Each node's centre relative to its parent's (or, in a grid, its cell's place), and subtree contours.
    offset: dict[str, float] = {}
    cell: dict[str, tuple[float, int]] = {}  # grid child -> (x offset of its cell centre from the parent, row)

    def place(root: NodeSpec) -> tuple[list[float], list[float]]:
        """The subtree's contour (leftmost and rightmost extent per level, top first), placing its nodes.

        Contours are kept bottom level first while they are built, so a state with one child
        extends its child's contour in place: a long chain costs linear time, not quadratic.
        """
        # Post-order without recursion (deep chains would exceed Python's recursion limit).
        contours: dict[str, tuple[list[float], list[float]]] = {}
        post: list[NodeSpec] = []
        work = [root]
        while work:
            n = work.pop()
            post.append(n)
            if n.id not in grids:
                work.extend(children.get(n.id, []))
        for n in reversed(post):
            half = measured[n.id][0] / 2
            kids = children.get(n.id, [])
            if n.id in grids:
                cols, cell_w, _ = grids[n.id]
                gw = grid_size(n.id)[0]
                for i, k in enumerate(kids):
                    col, row = i % cols, i // cols
                    cell[k.id] = (-gw / 2 + cell_w / 2 + col * (cell_w + H_GAP), row)
                contours[n.id] = ([-gw / 2 - H_GAP / 2, -half], [gw / 2, half])  # the comb runs left of the grid
                continue
            if not kids:
                contours[n.id] = ([-half], [half])
                continue
            if len(kids) == 1:  # centred over its only child: the child's contour, one level higher
                kl, kr = contours.pop(kids[0].id)
                offset[kids[0].id] = 0.0
                kl.append(-half)
                kr.append(half)
                contours[n.id] = (kl, kr)
                continue
            subs = [(kl[::-1], kr[::-1]) for kl, kr in (contours.pop(k.id) for k in kids)]
            centres = _pack(subs)
            mid = (centres[0] + centres[-1]) / 2
            left, right = [-half], [half]
            for k, c, (kl, kr) in zip(kids, centres, subs, strict=True):
                offset[k.id] = c - mid
                for i, (a, b) in enumerate(zip(kl, kr, strict=True), start=1):
                    if i < len(left):
                        left[i] = min(left[i], a + c - mid)
                        right[i] = max(right[i], b + c - mid)
                    else:
                        left.append(a + c - mid)
                        right.append(b + c - mid)
            contours[n.id] = (left[::-1], right[::-1])
        left, right = contours[root.id]
        return left[::-1], right[::-1]

    roots = children.get(None, [])
    root_contours = [place(r) for r in roots]
    root_centres = _pack(root_contours) if roots else []
    xs: dict[str, float] = {}
    rows_of: dict[str, int] = {}
    work2 = list(zip(roots, root_centres, strict=True))
    while work2:
        n, x = work2.pop()
        xs[n.id] = x
        if n.id in grids:
            for k in children[n.id]:
                dx, r = cell[k.id]
                xs[k.id] = x + dx
                rows_of[k.id] = r
        else:
            work2.extend((k, x + offset[k.id]) for k in children.get(n.id, []))
    min_x = min((xs[i] - measured[i][0] / 2 - (H_GAP / 2 if i in rows_of else 0.0) for i in xs), default=0.0)
    max_x = max((xs[i] + measured[i][0] / 2 for i in xs), default=0.0)
    shift = MARGIN - min_x

    tops = []
    y = MARGIN
    for h in level_height:
        tops.append(y)
        y += h + V_GAP
    height = (y - V_GAP + MARGIN) if level_height else 2 * MARGIN

    boxes: list[Box] = []
    by_id: dict[str, Box] = {}
    for s in drawn:
        w, h, rows = measured[s.id]
        d = depth[s.id]
        bx = xs[s.id] + shift - w / 2
        by = tops[d]
        if s.id in rows_of:  # a cell of a grid: rows of equal height under the level's top
            by += rows_of[s.id] * (grids[s.parent][2] + ROW_GAP)  # type: ignore[index]
        spans = [Span(t, st, round(bx + PAD_X + dx, 2), round(by + dy, 2)) for parts, dy in rows for t, st, dx in parts]
        box = Box(
            id=s.id,
            parent=s.parent if s.parent in ids else None,
            x=round(bx, 2),
            y=round(by, 2),
            width=round(w, 2),
            height=round(h, 2),
            status=s.status,
            marked=s.marked,
            depth=d,
            spans=spans,
            states=list(summaries.get(s.id, [s.id])),
            summary=s.id in summaries,
        )
        boxes.append(box)
        by_id[s.id] = box
    edges = []
    for b in boxes:
        if b.parent is not None:
            p = by_id[b.parent]
            bottom = tops[p.depth] + level_height[p.depth]  # below every box of the parent's level
            if b.id in rows_of:  # the comb runs in the gap left of the cell's column (cells may be narrower)
                slot_left = xs[b.id] + shift - grids[p.id][1] / 2
                edges.append(_comb(p, b, tops[b.depth], slot_left))
            else:
                edges.append(_edge(p, b, bottom))
    width = (max_x - min_x + 2 * MARGIN) if boxes else 2 * MARGIN
    return Layout(round(width, 2), round(height, 2), boxes, edges, len(all_specs), bool(summaries), by_id)


ARROW = 7.0  # length of an arrow head (px)


def _head(tx: float, ty: float, ux: float, uy: float) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    """An arrow head with its tip at (tx, ty) pointing along the unit vector (ux, uy): its base centre and triangle."""
    bx, by = tx - ux * ARROW, ty - uy * ARROW
    half = ARROW * 0.45
    head = [(round(tx, 2), round(ty, 2)), (round(bx - uy * half, 2), round(by + ux * half, 2))]
    head.append((round(bx + uy * half, 2), round(by - ux * half, 2)))
    return (round(bx, 2), round(by, 2)), head


def _edge(parent: Box, child: Box, level_bottom: float) -> Edge:
    """The edge from ``parent``'s bottom centre to ``child``'s top centre: straight down to the bottom of
    the parent's level (past taller neighbours), then straight across the gap between the levels."""
    x1, y0, y1, tx, ty = parent.centre, parent.y + parent.height, level_bottom, child.centre, child.y
    dx, dy = tx - x1, ty - y1
    norm = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    base, head = _head(tx, ty, dx / norm, dy / norm)
    points = [(round(x1, 2), round(y0, 2))]
    if y1 > y0 + 0.01:
        points.append((round(x1, 2), round(y1, 2)))
    return Edge(parent.id, child.id, [*points, base], head)


def _comb(parent: Box, child: Box, grid_top: float, slot_left: float) -> Edge:
    """The edge to a cell of a grid: down from the parent to a bus above the grid, along it to the
    gap left of the cell's column, down that gap, and right into the cell's title row."""
    x1, y1 = round(parent.centre, 2), round(parent.y + parent.height, 2)
    bus = round(grid_top - V_GAP / 2, 2)
    gap_x = round(slot_left - H_GAP / 2, 2)
    ty = round(child.y + min(12.0, child.height / 2), 2)
    base, head = _head(child.x, ty, 1.0, 0.0)
    return Edge(parent.id, child.id, [(x1, y1), (x1, bus), (gap_x, bus), (gap_x, ty), base], head)


def _pack(subs: Sequence[tuple[list[float], list[float]]]) -> list[float]:
    """Centres for sibling subtrees (given their contours) packed side by side, spread evenly.

    The mean of a left-to-right and a right-to-left packing: each keeps every
    pair of siblings at least :data:`H_GAP` apart on every shared level, and so
    does their mean (the constraints are linear).
    """
    forward = _pack_one(subs)
    mirrored = [([-r for r in right], [-lo for lo in left]) for left, right in reversed(subs)]
    backward = [-c for c in reversed(_pack_one(mirrored))]
    shift = forward[0] - backward[0]
    return [(f + b + shift) / 2 for f, b in zip(forward, backward, strict=True)]


def _pack_one(subs: Sequence[tuple[list[float], list[float]]]) -> list[float]:
    """Centres packing each subtree as far left as the union of those before it allows."""
    centres: list[float] = []
    right: list[float] = []  # right contour of everything placed so far (absolute)
    for left_c, right_c in subs:
        if not centres:
            c = 0.0
        else:
            c = max(r - lo + H_GAP for r, lo in zip(right, left_c, strict=False))
            c = max(c, centres[-1])
        centres.append(c)
        for i, r in enumerate(right_c):
            if i < len(right):
                right[i] = max(right[i], r + c)
            else:
                right.append(r + c)
    return centres
