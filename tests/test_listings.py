"""The paper's Listings 1-3 run unchanged."""

from xml.etree import ElementTree

from paperdefs import listing2

import dagger as dg
from dagger import Experiment


def test_listings_1_to_3(exp_dir, tmp_path):
    exp, report = listing2(exp_dir)
    assert len(report.computed) == 5

    exp = Experiment.restore(exp_dir, slim=True)
    svg = tmp_path / "tree.svg"
    exp.graph.draw(str(svg))
    tree = ElementTree.fromstring(svg.read_text())  # dagger's own SVG: well-formed, one box per state
    boxes = {g.get("data-sha"): g for g in tree.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"}
    assert set(boxes) == {node.sha() for node in exp.graph.nodes}
    for sha, box in boxes.items():
        assert sha[:8] in ["".join(t.itertext()) for t in box]
    s = exp.graph.nodes.filter("pruned") & exp.graph.nodes.filter("lr:0.1")
    assert len(s) == 1
    state = s[0].restore()
    assert isinstance(state, dg.ExperimentState)
    assert state.model["w"].shape == (6,)
    assert (state.model["w"] == 0).sum() >= 1  # pruned
    assert state.tags == ["lr:0.1", "pruned"]
