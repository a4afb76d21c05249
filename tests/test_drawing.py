"""dagger's own pictures: the tidy layout's invariants, SVG, PNG and PDF, large trees, and no Graphviz anywhere."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paperdefs import listing2

import dagger as dg
from dagger.drawing import Drawing, open_file
from dagger.drawing.layout import FIT, H_GAP, PAD_X, STYLES, NodeSpec, layout, text_width
from dagger.drawing.render import png_dpi, to_svg

ROOT = Path(__file__).resolve().parents[1]
SVG = "{http://www.w3.org/2000/svg}"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORDS = ["lr=0.1", "nb_epochs=20", "pruning_technique=lowest_magnitude", "seed=3", "x", "accuracy=0.9812", "ß→λ"]


# ---- the layout, as a pure function ---------------------------------------------------------------------------


@st.composite
def trees(draw):
    """A random tree (or forest) of NodeSpecs: parents listed before their children, labels of any length."""
    n = draw(st.integers(1, 45))
    specs = []
    for i in range(n):
        parent = None if i == 0 or draw(st.integers(0, 30)) == 0 else f"n{draw(st.integers(0, i - 1))}"
        lines = tuple(
            (style, ", ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6))))
            for style in draw(st.lists(st.sampled_from(["props", "tags", "results"]), max_size=3))
        )
        specs.append(
            NodeSpec(
                id=f"n{i}",
                parent=parent,
                title=draw(st.sampled_from(["root", "TrainRecipe", "R", "PruneRecipe"])),
                short=f"{i:08x}",
                status=draw(st.sampled_from(["ok", "root", "failed", "function failed"])),
                lines=lines,
                marked=draw(st.booleans()),
            )
        )
    return specs


def _overlap(a, b) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


def _inside(x: float, y: float, box) -> bool:
    return box.x + 0.5 < x < box.x + box.width - 0.5 and box.y + 0.5 < y < box.y + box.height - 0.5


def check_layout(specs: list[NodeSpec], lay) -> None:
    """Every invariant the drawing promises, on one layout."""
    boxes = lay.boxes
    by_id = {b.id: b for b in boxes}
    # Every state is drawn, or summarised by a "+N states" box, exactly once.
    counts = Counter(s for b in boxes for s in b.states)
    assert counts == Counter(s.id for s in specs)
    assert lay.summarised == any(b.summary for b in boxes)
    # No two boxes overlap, and all lie inside the picture.
    for i, a in enumerate(boxes):
        assert 0 <= a.x and a.x + a.width <= lay.width + 0.01 and 0 <= a.y and a.y + a.height <= lay.height + 0.01
        for b in boxes[i + 1 :]:
            assert not _overlap(a, b), (a.id, b.id)
    kids: dict[str, list] = {}
    for b in boxes:
        if b.parent is not None:
            kids.setdefault(b.parent, []).append(b)
            parent = by_id[b.parent]
            assert parent.y + parent.height < b.y  # parent above its children
            assert b.depth == parent.depth + 1
    for pid, children in kids.items():  # parent centred over the span of its children
        centres = [c.centre for c in children]
        assert abs(by_id[pid].centre - (min(centres) + max(centres)) / 2) < 0.05
    # Text fits its box (estimated with the renderers' font metrics).
    for b in boxes:
        for s in b.spans:
            assert b.x + PAD_X - 0.02 <= s.x and s.x + text_width(s.text, s.style) <= b.x + b.width - PAD_X + 0.05
            assert b.y < s.y < b.y + b.height
    # One edge per drawn child: from its parent's bottom centre, the arrow's tip on the child, crossing no box.
    assert sorted((e.parent, e.child) for e in lay.edges) == sorted((b.parent, b.id) for b in boxes if b.parent)
    for e in lay.edges:
        p, c = by_id[e.parent], by_id[e.child]
        assert e.points[0] == (round(p.centre, 2), round(p.y + p.height, 2))
        tip = e.head[0]
        on_top = abs(tip[1] - c.y) < 0.02 and abs(tip[0] - c.centre) < 0.02
        on_left = abs(tip[0] - c.x) < 0.02 and c.y < tip[1] < c.y + c.height
        assert on_top or on_left
        path = [*e.points, tip]
        for (x1, y1), (x2, y2) in zip(path, path[1:], strict=False):
            for k in range(1, 20):
                x, y = x1 + (x2 - x1) * k / 20, y1 + (y2 - y1) * k / 20
                assert not any(_inside(x, y, b) for b in boxes), (e.parent, e.child, b.id)


@settings(max_examples=60, deadline=None)
@given(trees(), st.integers(1, 60), st.integers(1, 5), st.integers(2, 12))
def test_layout_invariants_on_random_trees(specs, max_states, max_children, grid_after):
    lay = layout(specs, max_states=max_states, max_children=max_children, grid_after=grid_after)
    check_layout(specs, lay)
    assert len(specs) > max_states or not lay.summarised  # summarised only past the threshold
    assert sum(not b.summary for b in lay.boxes) <= max(max_states, len([s for s in specs if s.parent is None]))
    # Deterministic, and plain data: the same input gives the same JSON.
    again = layout(list(specs), max_states=max_states, max_children=max_children, grid_after=grid_after)
    assert json.dumps(lay.to_dict()) == json.dumps(again.to_dict())


def test_layout_packs_subtrees_and_grids_sweeps():
    # Two chains side by side: as close as H_GAP allows, and the root centred between them.
    specs = [NodeSpec("r", None, "root")]
    for side in "ab":
        specs += [NodeSpec(f"{side}0", "r", "Step"), NodeSpec(f"{side}1", f"{side}0", "Step")]
    lay = layout(specs)
    a, b = lay.by_id["a1"], lay.by_id["b1"]
    assert abs((b.x - (a.x + a.width)) - H_GAP) < 0.05
    # A parent of many leaves shows them in rows (a grid), not one long row.
    sweep = [NodeSpec("r", None, "root")] + [
        NodeSpec(f"s{i}", "r", "Seed", lines=(("props", f"seed={i}"),)) for i in range(50)
    ]
    lay = layout(sweep)
    check_layout(sweep, lay)
    rows = {b.y for b in lay.boxes if b.parent}
    assert len(rows) >= 4 and lay.width < 3 * lay.height


def test_text_width_matches_matplotlib_rendering():
    """The layout's width table is the font the renderers use: estimates agree with matplotlib's own measure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=144)  # the PNG's resolution
    canvas = FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    for style in ("title", "props"):
        for text in [
            "TrainRecipe",
            "pruning_technique=lowest_magnitude,",
            "lr:0.1 · pruned · rewound",
            "WWW iii 0.9812",
        ]:
            spec = STYLES[style]
            t = fig.text(
                0,
                0,
                text,
                fontsize=spec["size"] * 72 / 96,
                family="DejaVu Sans",
                fontweight="bold" if spec["bold"] else "normal",
            )
            measured = t.get_window_extent(renderer).width * 96 / fig.dpi
            estimate = text_width(text, style)
            assert abs(estimate - measured) <= 0.05 * measured + 1, (style, text, measured)
            assert measured <= estimate * FIT + 1  # a box has room for the text as drawn


# ---- the real tree: SVG, PNG, PDF ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("paper") / "exp")
    listing2(directory)
    return dg.Experiment.restore(directory).graph


class Tagged(dg.ExperimentState):
    PROPERTIES = ["name"]


class Note(dg.Recipe):
    PROPERTIES = ["text"]

    def run(self, state):
        return state


def test_svg_is_well_formed_and_escapes_labels(tmp_path):
    directory = str(tmp_path / "exp")
    exp = dg.Experiment(directory, state_class=Tagged)
    root = exp.spawn_new_tree(name="a<b>&c")
    with exp.tag("<&>\"'"):
        leaf = Note(text="x < y & z > w")(root)
    exp.run()
    graph = dg.Experiment.restore(directory).graph
    path = tmp_path / "tree.svg"
    assert graph.draw(path) == str(path)
    svg = path.read_text(encoding="utf-8")
    tree = ElementTree.fromstring(svg.encode())  # raises on anything not well-formed
    texts = ["".join(t.itertext()) for t in tree.iter(f"{SVG}text")]
    assert "<&>\"'" in texts and "text=x < y & z > w" in texts and "name=a<b>&c" in texts
    assert root.sha()[:8] in texts and leaf.sha()[:8] in texts
    assert "&lt;&amp;&gt;" in svg  # escaped in the file, restored by the parser
    nodes = {g.get("data-sha"): g for g in tree.iter(f"{SVG}g") if g.get("class") == "node"}
    assert set(nodes) == {root.sha(), leaf.sha()}
    assert nodes[root.sha()].get("data-status") == "root" and nodes[leaf.sha()].get("data-status") == "ok"


def test_draw_png_pdf_are_valid_files(paper, tmp_path):
    import matplotlib.image

    png, pdf = tmp_path / "tree.png", tmp_path / "tree.pdf"
    paper.draw(str(png), result="accuracy", highlight=paper.nodes.filter("pruned"))
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    lay = paper.draw(result="accuracy").layout
    assert (width, height) == (round(lay.width * 1.5), round(lay.height * 1.5))  # 144 dpi over 96 px per inch
    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[:2] == (height, width) and pixels.std() > 0.05  # decodes, and is not blank
    paper.draw(str(pdf))
    body = pdf.read_bytes()
    assert body[:5] == b"%PDF-" and body.rstrip().endswith(b"%%EOF")
    out = tmp_path / "named.bin"
    assert paper.draw(str(out), format="pdf") == str(out) and out.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="svg, png or pdf"):
        paper.draw(str(tmp_path / "tree.gif"))
    assert not (tmp_path / "tree.gif").exists()


def test_highlight_result_and_jupyter(paper):
    pruned = paper.nodes.filter("pruned")
    drawing = paper.draw(result="accuracy", highlight=pruned)
    assert isinstance(drawing, Drawing) and drawing._repr_svg_() == drawing.svg
    tree = ElementTree.fromstring(drawing.svg)
    thick = {g.get("data-sha") for g in tree.iter(f"{SVG}g") if g.find(f"{SVG}rect[@stroke-width='3']") is not None}
    assert thick == {n.sha() for n in pruned}
    texts = ["".join(t.itertext()) for t in tree.iter(f"{SVG}text")]
    assert any(t.startswith("accuracy=") for t in texts)
    bundle = paper._repr_mimebundle_()
    assert bundle["image/svg+xml"] == paper.draw().svg and bundle["text/plain"] == paper.to_text()


def test_view_never_fails_without_a_viewer(paper, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert open_file(str(tmp_path / "x.svg")) is False
    out = tmp_path / "tree.svg"
    assert paper.draw(str(out), view=True) == str(out) and out.read_text().startswith("<?xml")
    temp = paper.draw(view=True)  # no filename: a temporary SVG, opened if a viewer exists
    try:
        assert os.path.exists(temp) and temp.endswith(".svg")
    finally:
        os.unlink(temp)


def test_large_tree_is_summarised(paper):
    full = paper.draw()
    assert not full.layout.summarised and len(full.layout.boxes) == len(paper)
    small = paper.draw(max_states=3)
    lay = small.layout
    assert lay.summarised and lay.total_states == len(paper)
    assert Counter(s for b in lay.boxes for s in b.states) == Counter(n.sha() for n in paper)
    hidden = sum(len(b.states) for b in lay.boxes if b.summary)
    assert hidden > 0 and any(f"+{len(b.states)} state" in small.svg for b in lay.boxes if b.summary)


def _sweep_specs(parents: int, leaves: int) -> list[NodeSpec]:
    specs = [NodeSpec("r", None, "root", "0" * 8, "root", (("props", "dataset_name=digits, model_name=mlp"),))]
    for i in range(parents):
        specs.append(
            NodeSpec(f"p{i}", "r", "TrainRecipe", f"{i:08x}", lines=(("props", f"nb_epochs=20, lr={i / 100}"),))
        )
        specs += [
            NodeSpec(
                f"p{i}.{j}",
                f"p{i}",
                "PruneRecipe",
                f"{i:04x}{j:04x}",
                lines=(
                    ("props", f"pruning_fraction={j / 100}"),
                    ("tags", f"lr:{i} · seed:{j}"),
                    ("results", "accuracy=0.9812"),
                ),
            )
            for j in range(leaves)
        ]
    return specs


class Sweep(dg.ExperimentState):
    PROPERTIES = ["name"]


class Train(dg.Recipe):
    PROPERTIES = ["lr"]

    def run(self, state):
        return state


class Seed(dg.Recipe):
    PROPERTIES = ["seed"]

    def run(self, state):
        return state


def test_a_500_state_sweep_stays_readable(tmp_path):
    """A real 500-state sweep: every state drawn at full text size, no overlaps, a picture of sensible size."""
    directory = str(tmp_path / "sweep")
    exp = dg.Experiment(directory, state_class=Sweep)
    root = exp.spawn_new_tree(name="sweep")
    for i in range(10):
        with exp.tag(f"lr:{i}"):
            parent = Train(lr=i / 100)(root)
            for j in range(49 - (i == 0)):  # 1 root + 10 + 489 = 500 states
                Seed(seed=j)(parent)
    exp.run(progress=False)
    graph = dg.Experiment.restore(directory).graph
    assert len(graph) == 500
    drawing = graph.draw()
    lay = drawing.layout
    specs = [NodeSpec(n.sha(), n.parent.sha() if n.parent is not None else None, "x") for n in graph]
    check_layout(specs, lay)
    assert not lay.summarised and len(lay.boxes) == 500
    assert lay.width <= 8000 and lay.height <= 2000 and lay.width / lay.height < 8  # laid out in grids, not a row
    assert png_dpi(lay) == 144  # the PNG is not scaled down: its text is as readable as the study's
    svg = drawing.svg
    assert all(n.sha()[:8] in svg for n in graph)
    assert {t.get("font-size") for t in ElementTree.fromstring(svg).iter(f"{SVG}text")} <= {"11", "12", "13"}
    png = tmp_path / "sweep.png"
    graph.draw(png)
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_a_10000_state_tree_is_summarised_readably():
    specs = _sweep_specs(100, 99)
    lay = layout(specs)
    check_layout(specs, lay)
    assert lay.summarised and lay.total_states == 10_001
    assert Counter(s for b in lay.boxes for s in b.states) == Counter(s.id for s in specs)
    assert len(lay.boxes) <= 2 * 500 and png_dpi(lay) == 144
    assert json.loads(json.dumps(lay.to_dict()))["total_states"] == 10_001
    assert "+" in to_svg(lay)


# ---- optional dependencies, and no Graphviz ------------------------------------------------------------------


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests"), full.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=300)


def test_png_without_matplotlib_names_the_extra_and_svg_still_works(paper, tmp_path):
    code = f"""
import sys
sys.modules["matplotlib"] = None  # as if the plot extra were not installed
import dagger as dg
from paperdefs import listing2
listing2({str(tmp_path / "exp")!r})
graph = dg.Experiment.restore({str(tmp_path / "exp")!r}).graph
graph.draw({str(tmp_path / "t.svg")!r})
try:
    graph.draw({str(tmp_path / "t.png")!r})
except ImportError as exc:
    print("ERROR:", exc)
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "ERROR: drawing to PNG or PDF needs matplotlib: pip install 'dagger-experiments[plot]'" in done.stdout
    assert (tmp_path / "t.svg").read_text().count('class="node"') == 5 and not (tmp_path / "t.png").exists()


def test_to_dot_needs_nothing_and_to_graphviz_names_its_extra(paper, tmp_path):
    import graphviz

    dot = paper.to_dot(result="accuracy")
    assert dot.count("->") == len(paper) - 1 and all(f'"{n.sha()[:12]}"' in dot for n in paper)
    assert isinstance(paper.to_graphviz(), graphviz.Digraph)
    assert paper.to_graphviz(result="accuracy").source.count("->") == len(paper) - 1
    code = f"""
import sys
sys.modules["graphviz"] = None
import dagger as dg
from paperdefs import listing2
listing2({str(tmp_path / "exp")!r})
graph = dg.Experiment.restore({str(tmp_path / "exp")!r}).graph
print("EDGES:", graph.to_dot().count("->"))
try:
    graph.to_graphviz()
except ImportError as exc:
    print("ERROR:", exc)
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert "EDGES: 4" in done.stdout.splitlines()
    assert (
        "ERROR: to_graphviz() needs the graphviz Python package: pip install 'dagger-experiments[graphviz]'"
        in done.stdout
    )


def _path_without_dot() -> str:
    """PATH for a subprocess: the interpreter's folder and the usual system folders, minus any with `dot`."""
    candidates = [os.path.dirname(sys.executable), "/usr/local/bin", "/usr/bin", "/bin"]
    return os.pathsep.join(d for d in candidates if os.path.isdir(d) and not os.path.exists(os.path.join(d, "dot")))


@pytest.mark.slow
def test_the_demo_draws_its_tree_with_no_dot_on_path(tmp_path):
    path = _path_without_dot()
    assert shutil.which("dot", path=path) is None
    out = tmp_path / "pruning"
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "pruning" / "study.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    svg = (out / "tree.svg").read_text(encoding="utf-8")
    boxes = [g for g in ElementTree.fromstring(svg).iter(f"{SVG}g") if g.get("class") == "node"]
    assert len(boxes) == 19
    graph = dg.Experiment.restore(str(out)).graph
    assert {g.get("data-sha") for g in boxes} == {n.sha() for n in graph}
    assert (out / "tree.png").read_bytes()[:8] == PNG_MAGIC and (out / "curve.png").exists()


def test_a_deep_chain_is_a_straight_column():
    """A chain deeper than Python's recursion limit: laid out (no recursion), one state per level, straight down."""
    specs = [NodeSpec("c0", None, "root")] + [NodeSpec(f"c{i}", f"c{i - 1}", "Step") for i in range(1, 3000)]
    lay = layout(specs, max_states=5000)
    assert not lay.summarised and [b.depth for b in lay.boxes] == list(range(3000))
    centres = [b.centre for b in lay.boxes]
    assert max(centres) - min(centres) < 0.02
    assert all(a.y + a.height < b.y for a, b in zip(lay.boxes, lay.boxes[1:], strict=False))
    summarised = layout(specs)  # past max_states: the tail becomes one box
    assert summarised.summarised and summarised.boxes[-1].summary and len(summarised.boxes[-1].states) == 2500
