"""The paper's Listings 1-3 run unchanged."""

from paperdefs import listing2

import dagger as dg
from dagger import Experiment


def test_listings_1_to_3(exp_dir, tmp_path):
    exp, report = listing2(exp_dir)
    assert len(report.computed) == 5

    exp = Experiment.restore(exp_dir, slim=True)
    svg = tmp_path / "tree.svg"
    exp.graph.draw(str(svg))
    text = svg.read_text()
    for node in exp.graph.nodes:
        assert node.sha()[:8] in text
    s = exp.graph.nodes.filter("pruned") & exp.graph.nodes.filter("lr:0.1")
    assert len(s) == 1
    state = s[0].restore()
    assert isinstance(state, dg.ExperimentState)
    assert state.model["w"].shape == (6,)
    assert (state.model["w"] == 0).sum() >= 1  # pruned
    assert state.tags == ["lr:0.1", "pruned"]
