"""``restore(map_location=...)`` honours the location, also on a state already in memory."""

from __future__ import annotations

import pytest

import dagger as dg

torch = pytest.importorskip("torch")


class TensorState(dg.ExperimentState):
    PROPERTIES = ["size"]

    def initialize_state(self, **kwargs):
        self.weights = torch.arange(self.size, dtype=torch.float32)


class Double(dg.Recipe):
    PROPERTIES = ["times"]

    def run(self, state):
        state.weights = state.weights * 2**self.times
        return state


def test_map_location_is_applied_to_a_loaded_state(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=TensorState)
    Double(times=3)(exp.spawn_new_tree(size=4))
    exp.run()
    node = exp.graph.nodes_at_distance(1)[0]
    node.restore()
    assert node.is_loaded
    node.weights.add_(100)  # changed in memory only

    asked: list[str] = []

    def where(saved: str) -> str:
        asked.append(saved)
        return "cpu"

    same = node.restore(map_location=where)
    assert same is node
    assert asked == ["cpu"], "the location was not consulted for a state already in memory"
    assert node.weights.tolist() == [0.0, 8.0, 16.0, 24.0]  # loaded again: what is stored

    # Without a location, a loaded state stays as it is in memory.
    node.weights.add_(1)
    assert node.restore() is node
    assert node.weights.tolist() == [1.0, 9.0, 17.0, 25.0]


def test_lazy_load_with_a_location_on_a_loaded_state(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=TensorState)
    exp.spawn_new_tree(size=3)
    exp.run()
    root = exp.graph.root.restore()
    asked: list[str] = []
    with root.lazy_load(map_location=lambda saved: asked.append(saved) or "cpu") as state:
        assert state.weights.tolist() == [0.0, 1.0, 2.0]
    assert asked == ["cpu"]
    assert root.is_loaded  # it was loaded before the block: it stays loaded
