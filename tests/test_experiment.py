"""Experiment: defining, tagging, promises, restoring, and analysis of single states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn, listing2

import dagger as dg

UNPICKLED: list[str] = []


class Watched(dg.ExperimentState):
    """Records every time a full state is unpickled."""

    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.data = np.arange(10)

    def __setstate__(self, state):
        UNPICKLED.append(self.__class__.__name__)
        super().__setstate__(state)


class Step(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.data = state.data + self.k
        return state


def test_promise_get_sha_tags_parent_children(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    with exp.tag("outer"):
        a = TrainRecipe(nb_epochs=2, lr=0.1)(root)
        with exp.tag("inner", "x"):
            b = PruneRecipe(pruning_technique="t", pruning_fraction=0.5)(a)
    c = TrainRecipe(nb_epochs=2, lr=0.2)(root)
    assert repr(b).startswith(f"<ExperimentStatePromise {b.sha()[:10]} PruneRecipe [outer, inner, x]")
    assert b.parent is a and a.depth == 1 and b.depth == 2

    state = b.get()
    assert state.sha() == b.sha()
    assert state.tags == ["outer", "inner", "x"]
    assert state.is_loaded and state.model["w"].shape == (6,)
    assert state.parent.sha() == a.sha()
    assert state.parent.parent.sha() == root.sha() and state.parent.parent.parent is None
    exp.run()
    g = dg.Experiment.restore(exp_dir).graph
    assert {n.sha() for n in g.node(root.sha()).children} == {a.sha(), c.sha()}
    assert g.node(b.sha()).children == []
    assert g.node(a.sha()).tags == ["outer"] and g.node(c.sha()).tags == []
    assert "slim" in repr(g.node(a.sha())) and "TrainRecipe" in repr(g.node(a.sha()))
    assert g.node(a.sha()).recipe["name"] == "TrainRecipe" and g.node(root.sha()).recipe is None


def test_tags_validation(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    with pytest.raises(dg.DefinitionError, match="non-empty strings"):
        with exp.tag(""):
            pass
    with pytest.raises(dg.DefinitionError):
        with exp.tag(3):
            pass
    with exp.tag("a"):
        pass
    assert exp._tags == []


def test_restore_deflate_and_lazy_load(exp_dir):
    exp, _ = listing2(exp_dir)
    node = dg.Experiment.restore(exp_dir).graph.nodes.filter("pruned", "lr:0.1")[0]
    assert not node.is_loaded
    assert node.dataset_name == "cifar-10"  # root PROPERTIES are in the slim state
    with pytest.raises(dg.DeflatedStateError, match="restore"):
        _ = node.model
    with pytest.raises(AttributeError):  # DeflatedStateError is an AttributeError
        _ = node.train_data
    assert node.restore() is node and node.is_loaded
    assert node.restore() is node  # restoring twice is harmless
    weights = node.model["w"].copy()
    assert node.deflate() is node and not node.is_loaded
    with pytest.raises(dg.DeflatedStateError):
        _ = node.model
    assert node.tags == ["lr:0.1", "pruned"] and node.sha()  # metadata survives deflate
    with node.lazy_load() as loaded:
        assert loaded is node and (loaded.model["w"] == weights).all()
    assert not node.is_loaded
    node.restore()
    with node.lazy_load():
        pass
    assert node.is_loaded  # lazy_load leaves an already-loaded state loaded
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = node.nope


def test_slim_restore_unpickles_nothing(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Watched)
    root = exp.spawn_new_tree(name="w")
    leaf = Step(k=2)(Step(k=1)(root))
    exp.run()
    UNPICKLED.clear()
    restored = dg.Experiment.restore(exp_dir, state_class=Watched)
    g = restored.graph
    assert len(g) == 3 and [n.sha() for n in g.nodes_at_distance(2)] == [leaf.sha()]
    g.draw(os.path.join(exp_dir, "tree.svg"))
    g.nodes.to_records()
    g.to_text()
    assert UNPICKLED == []
    assert (g.node(leaf.sha()).restore().data == np.arange(10) + 3).all()
    assert UNPICKLED == ["Watched"]
    UNPICKLED.clear()
    full = dg.Experiment.restore(exp_dir, state_class=Watched, slim=False)
    assert len(UNPICKLED) == 3 and all(n.is_loaded for n in full.graph.nodes)


def test_lineage_gives_the_path_with_recipes(exp_dir):
    listing2(exp_dir)
    node = dg.Experiment.restore(exp_dir).graph.nodes.filter("pruned", "lr:0.01")[0]
    path = node.lineage()
    assert [p.recipe["name"] if p.recipe else "root" for p in path] == ["root", "TrainRecipe", "PruneRecipe"]
    assert path[1].recipe["properties"] == {"nb_epochs": 100, "lr": 0.01}
    assert path[2].recipe["properties"] == {"pruning_technique": "lowest_magnitude", "pruning_fraction": 0.2}
    assert path[0].metadata["properties"] == {"dataset_name": "cifar-10", "model_name": "vgg-11"}
    assert path[-1] is node and path[0].parent is None


def test_experiment_without_state_class_cannot_define(exp_dir):
    exp = dg.Experiment(exp_dir)
    with pytest.raises(dg.DefinitionError, match="state_class"):
        exp.spawn_new_tree(dataset_name="d", model_name="m")
    with pytest.raises(dg.DefinitionError, match="subclass of dagger.ExperimentState"):
        dg.Experiment(exp_dir, state_class=dict)


def test_one_folder_holds_one_tree(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    exp.spawn_new_tree(dataset_name="d", model_name="m")
    again = dg.Experiment(exp_dir, state_class=State)
    again.spawn_new_tree(dataset_name="d", model_name="m")  # the same root is fine
    other = dg.Experiment(exp_dir, state_class=State)
    with pytest.raises(dg.DefinitionError, match="already holds a tree"):
        other.spawn_new_tree(dataset_name="other", model_name="m")
    info = json.loads(open(os.path.join(exp_dir, "experiment.json")).read())
    assert info["state_class"] == "paperdefs.State" and info["root_properties"]["dataset_name"] == "d"


def test_restore_without_state_class_uses_base_class(exp_dir):
    listing2(exp_dir)
    exp = dg.Experiment.restore(exp_dir)
    assert exp.state_class is None
    node = exp.graph.nodes.filter("pruned")[0]
    assert type(node) is dg.ExperimentState
    state = node.restore()
    assert type(state) is State and state.model["w"].shape == (6,)
    assert "Experiment(" in repr(exp)


SCRIPT = """
import sys
import numpy as np
import dagger as dg

MARK = {mark!r}


class State(dg.ExperimentState):
    PROPERTIES = ["size"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, **kwargs):
        self.weights = np.ones(self.size)

    def __setstate__(self, state):
        with open(MARK, "a") as f:
            f.write("unpickled\\n")
        super().__setstate__(state)


class Scale(dg.Recipe):
    PROPERTIES = ["factor"]

    def run(self, state):
        state.weights = state.weights * self.factor
        return state


@dg.Function
def total(state):
    return {{"total": float(state.weights.sum())}}


exp = dg.Experiment({directory!r}, state_class=State)
root = exp.spawn_new_tree(size=4)
for factor in [2.0, 3.0]:
    with exp.tag(f"factor:{{factor}}"):
        total(Scale(factor=factor)(root))
exp.run()
print("ran", len(exp.graph))
"""

BROWSE = """
import os, sys
import dagger as dg

exp = dg.Experiment.restore({directory!r}, slim=True)
assert "script" not in sys.modules
nodes = exp.graph.nodes.filter("factor:3.0")
print("tags", nodes[0].tags, "total", nodes[0].results["total"]["total"])
print("marked_before", os.path.exists({mark!r}))
state = nodes[0].restore()
print("class", type(state).__name__, "weights", state.weights.tolist())
print("marked_after", open({mark!r}).read().count("unpickled"))
"""


def test_restore_in_fresh_process_when_classes_lived_in_main(tmp_path):
    directory = str(tmp_path / "exp")
    mark = str(tmp_path / "unpickled.txt")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT.format(directory=directory, mark=mark))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ran 3" in out.stdout
    assert os.path.exists(mark)  # the script unpickled parents to compute children
    os.remove(mark)
    info = json.loads((tmp_path / "exp" / "experiment.json").read_text())
    assert info["state_class"] == "__main__.State"

    browse = textwrap.dedent(BROWSE.format(directory=directory, mark=mark))
    # a fresh process elsewhere, which cannot import the script
    out = subprocess.run([sys.executable, "-c", browse], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "tags ['factor:3.0'] total 12.0" in lines
    assert "marked_before False" in lines  # slim browsing unpickled nothing
    assert "class State weights [3.0, 3.0, 3.0, 3.0]" in lines
    assert "marked_after 1" in lines


def test_main_class_matches_recorded_main_class(tmp_path, monkeypatch):
    exp_dir = str(tmp_path / "exp")
    exp = dg.Experiment(exp_dir, state_class=Watched)
    exp.spawn_new_tree(name="n")
    info_path = os.path.join(exp_dir, "experiment.json")
    info = json.loads(open(info_path).read())
    info["state_class"] = "__main__.Watched"  # as if a script's __main__ had created it
    open(info_path, "w").write(json.dumps(info))
    dg.Experiment.restore(exp_dir, state_class=Watched)  # the same class: accepted
    with pytest.raises(dg.StateClassMismatchError):
        dg.Experiment.restore(exp_dir, state_class=State)


def test_function_results_on_cached_root_only(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    eval_fn(root)
    exp.run()
    assert 0 <= dg.Experiment.restore(exp_dir).graph.root.results["eval_fn"]["accuracy"] <= 1
