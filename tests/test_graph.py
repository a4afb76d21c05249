"""The stored tree for analysis: nodes, hash prefixes, filters, set algebra, tables and drawing."""

from __future__ import annotations

import re
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paperdefs import listing2

import dagger as dg
from dagger.graph import NodeSet, StaticExperimentTree

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("paper") / "exp")
    listing2(directory)
    return directory


@pytest.fixture
def graph(paper):
    return dg.Experiment.restore(paper).graph


def _shas(nodes):
    return {n.sha() for n in nodes}


def test_root_and_distances(graph):
    root = graph.root
    assert root.parent is None and root.recipe is None
    assert graph.nodes_at_distance(0) == NodeSet([root])
    d1, d2 = graph.nodes_at_distance(1), graph.nodes_at_distance(2)
    assert len(d1) == 2 and {n.recipe["name"] for n in d1} == {"TrainRecipe"}
    assert len(d2) == 2 and {n.recipe["name"] for n in d2} == {"PruneRecipe"}
    assert len(graph.nodes_at_distance(3)) == 0
    assert _shas(graph.leaves()) == _shas(d2)
    assert len(graph) == 5 and _shas(graph) == _shas(graph.nodes)
    assert repr(graph) == "<StaticExperimentTree 5 states>"


def test_node_by_hash_and_prefix(graph):
    for n in graph.nodes:
        sha = n.sha()
        assert graph.node(sha) is n
        assert graph.node(sha[:12]) is n
        assert graph.resolve(sha[:8]) == sha
        assert graph.resolve(sha) == sha
    with pytest.raises(dg.InvalidHashError, match="at least 4"):
        graph.node(graph.root.sha()[:3])
    with pytest.raises(dg.InvalidHashError, match="not a state hash"):
        graph.node("xyz!")
    with pytest.raises(dg.InvalidHashError):
        graph.node(None)
    missing = next(p for p in ("0000", "ffff", "1234", "abcd") if not any(s.startswith(p) for s in _shas(graph)))
    with pytest.raises(dg.StateNotFoundError, match=missing) as info:
        graph.node(missing)
    assert isinstance(info.value, KeyError)


def test_ambiguous_prefix(tmp_path):
    records = dg.Experiment(str(tmp_path)).records
    metas = {
        "abcd1" + "0" * 59: {"sha": "abcd1" + "0" * 59, "parent": None, "depth": 0},
        "abcd2" + "0" * 59: {"sha": "abcd2" + "0" * 59, "parent": None, "depth": 0},
    }
    tree = StaticExperimentTree(metas, records)
    with pytest.raises(dg.InvalidHashError, match="ambiguous"):
        tree.node("abcd")
    assert tree.node("abcd2").sha().startswith("abcd2")
    assert tree.root is not None  # no recorded root: the first parentless state


def test_filter_fnmatch_negation_and_any(graph):
    pruned = graph.nodes.filter("pruned")
    assert len(pruned) == 2 and {n.recipe["name"] for n in pruned} == {"PruneRecipe"}
    assert len(graph.nodes.filter("lr:*")) == 4
    assert len(graph.nodes.filter("lr:0.0?")) == 2
    assert len(graph.nodes.filter("lr:0.[0-9]")) == 2
    assert len(graph.nodes.filter("!pruned")) == 3
    assert len(graph.nodes.filter("lr:*", "!pruned")) == 2
    assert len(graph.nodes.filter("!lr:*")) == 1  # the untagged root
    assert len(graph.nodes.filter("lr:0.1", "pruned")) == 1
    assert len(graph.nodes.filter("lr:0.1", "pruned", any=True)) == 3
    assert len(graph.nodes.filter("nothing", "!pruned", any=True)) == 3
    assert len(graph.nodes.filter("LR:*")) == 0  # case-sensitive
    assert graph.nodes.filter() == graph.nodes
    with pytest.raises(TypeError):
        graph.nodes.filter(3)


def test_union_intersection_and_type_errors(graph):
    a = graph.nodes.filter("lr:0.1")
    b = graph.nodes.filter("pruned")
    both = a & b
    assert len(both) == 1 and both[0].tags == ["lr:0.1", "pruned"]
    either = a | b
    assert len(either) == 3 and _shas(either) == _shas(a) | _shas(b)
    assert (a | a) == a and (a & graph.nodes.filter("nothing")) == NodeSet([])
    for other in ([], set(), graph.nodes[0], "pruned", None):
        with pytest.raises(TypeError):
            a | other
        with pytest.raises(TypeError):
            a & other
    assert graph.nodes.__eq__([]) is NotImplemented


def test_nodeset_sequence_behaviour(graph):
    nodes = graph.nodes
    assert isinstance(nodes[1:3], NodeSet) and len(nodes[1:3]) == 2
    assert nodes[0] in nodes and "x" not in nodes
    assert nodes[0] in NodeSet([nodes[0], nodes[0]]) and len(NodeSet([nodes[0], nodes[0]])) == 1
    assert "... 0 more" not in repr(nodes) and repr(nodes).startswith("NodeSet([<ExperimentState")
    with pytest.raises(TypeError):
        hash(nodes)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c"]), max_size=4), st.lists(st.sampled_from(["a", "b", "c"]), max_size=4))
def test_set_algebra_matches_python_sets(paper, xs, ys):
    graph = dg.Experiment.restore(paper).graph
    nodes = list(graph.nodes)
    a = NodeSet(nodes[i] for i in range(len(nodes)) if "abc"[i % 3] in xs)
    b = NodeSet(nodes[i] for i in range(len(nodes)) if "abc"[i % 3] in ys)
    assert _shas(a | b) == _shas(a) | _shas(b)
    assert _shas(a & b) == _shas(a) & _shas(b)


def test_lineage_and_records(graph):
    leaf = graph.nodes.filter("lr:0.1", "pruned")[0]
    assert [n.sha() for n in leaf.lineage()] == [graph.root.sha(), leaf.parent.sha(), leaf.sha()]
    rows = graph.nodes.filter("lr:*").to_records()
    trained = [r for r in rows if r["recipe"] == "TrainRecipe"]
    assert {r["TrainRecipe.lr"] for r in trained} == {0.01, 0.1}
    assert all(0 <= r["accuracy"] <= 1 for r in trained)
    leaf_row = [r for r in rows if r["sha"] == leaf.sha()][0]
    assert leaf_row["PruneRecipe.pruning_fraction"] == 0.2 and leaf_row["TrainRecipe.lr"] == 0.1
    assert leaf_row["dataset_name"] == "cifar-10" and leaf_row["depth"] == 2
    df = graph.nodes.to_dataframe()
    assert len(df) == 5 and set(df["recipe"]) == {"root", "TrainRecipe", "PruneRecipe"}


def test_to_text(graph):
    text = graph.to_text()
    for n in graph.nodes:
        assert n.sha()[:8] in text
    assert "├── " in text and "└── " in text and "lr=0.01" in text and "[lr:0.1, pruned]" in text
    only = graph.to_text(result="eval_fn")
    assert "accuracy=" not in only


def test_draw_svg_has_every_short_hash(graph, tmp_path):
    path = tmp_path / "tree.svg"
    assert graph.draw(str(path)) == str(path)
    svg = path.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    shown = set(re.findall(r"\b[0-9a-f]{8}\b", svg))
    assert {n.sha()[:8] for n in graph.nodes} <= shown
    assert "TrainRecipe" in svg and "PruneRecipe" in svg and "accuracy" in svg
    tree = ElementTree.fromstring(svg)  # well-formed XML
    edges = {(e.get("data-parent"), e.get("data-child")) for e in tree.iter(f"{SVG}g") if e.get("class") == "edge"}
    assert edges == {(n.parent.sha(), n.sha()) for n in graph.nodes if n.parent is not None}
    assert {e.get("data-sha") for e in tree.iter(f"{SVG}g") if e.get("class") == "node"} == {n.sha() for n in graph}


def test_draw_png_pdf_and_errors(graph, tmp_path):
    png = tmp_path / "tree.png"
    graph.draw(str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pdf = tmp_path / "out.bin"
    graph.draw(str(pdf), format="pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="svg, png or pdf"):
        graph.draw(str(tmp_path / "tree.gif"))
    drawing = graph.draw()  # no filename: an object Jupyter displays
    assert drawing._repr_svg_() == graph._repr_svg_() and drawing.svg.count('class="edge"') == 4
    dot = graph.to_dot()
    assert dot.startswith("digraph experiment {") and dot.count("->") == 4
    assert all(f'"{n.sha()[:12]}" [label=<' in dot for n in graph)
    highlighted = graph.to_dot(result="accuracy", highlight=[graph.root])
    assert highlighted.count('BORDER="3"') == 1 and "accuracy=" in highlighted
    # The graphviz package (no binary) builds the same source, for users who export to Graphviz.
    exported = graph.to_graphviz(result="accuracy", highlight=[graph.root]).source
    assert exported.count("->") == 4 and exported.count('BORDER="3"') == 1


@dg.Function
def plain_score(state):
    return float(state.model["w"].sum())


def test_scalar_function_results_in_tables_text_and_pictures(exp_dir):
    from paperdefs import State, TrainRecipe

    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=3, lr=0.5)(root)
    plain_score(s)
    exp.run()
    g = dg.Experiment.restore(exp_dir).graph
    node = g.node(s.sha())
    value = node.results["plain_score"]
    assert isinstance(value, float)
    (row,) = [r for r in g.nodes.to_records() if r["sha"] == s.sha()]
    assert row["plain_score"] == value
    assert f"plain_score={value:.4g}" in g.to_text()
    assert f"plain_score={value:.4g}" in g.to_dot()
    assert f"plain_score={value:.4g}" in g.draw().svg


def test_a_recipe_applied_twice_keeps_both_steps_in_tables(exp_dir):
    from paperdefs import PruneRecipe, State, TrainRecipe

    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    s = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.2)(s)
    s = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(s)
    exp.run()
    (row,) = [r for r in dg.Experiment.restore(exp_dir).graph.nodes.to_records() if r["sha"] == s.sha()]
    assert row["PruneRecipe.pruning_fraction"] == 0.2
    assert row["PruneRecipe#2.pruning_fraction"] == 0.5
    assert row["PruneRecipe#2.pruning_technique"] == "random"
    assert row["TrainRecipe.lr"] == 0.1
