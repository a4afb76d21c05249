"""State lifecycle (DESIGN §3): isolation, caching, Functions, root reuse, shared references."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import paperdefs
import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn, listing2

import dagger as dg

HERE = os.path.dirname(__file__)
SCHEDULERS = ["single-threaded", "threads", "processes"]


class Box(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.items = []
        self.arr = np.zeros(4)
        self.big = np.zeros(20_000)  # above the blob threshold
        self.extra = kwargs.get("extra")


class Mutate(dg.Recipe):
    PROPERTIES = ["value"]

    def run(self, state):
        state.seen = (list(state.items), state.arr.copy(), float(state.big.sum()))
        state.items.append(self.value)
        state.arr[0] = self.value
        state.arr[self.value % 4] += 1
        state.big[:] = self.value
        return state


def _calls():
    if not paperdefs.CALLS_FILE or not os.path.exists(paperdefs.CALLS_FILE):
        return []
    with open(paperdefs.CALLS_FILE) as f:
        return f.read().split()


@pytest.fixture
def calls_file(tmp_path, monkeypatch):
    path = str(tmp_path / "calls.txt")
    monkeypatch.setattr(paperdefs, "CALLS_FILE", path)
    return path


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_branch_gets_its_own_copy(exp_dir, scheduler):
    exp = dg.Experiment(exp_dir, state_class=Box)
    root = exp.spawn_new_tree(name="box")
    a = Mutate(value=1)(root)
    b = Mutate(value=2)(root)
    aa = Mutate(value=3)(a)
    exp.run(scheduler=scheduler)
    g = exp.graph
    r, sa, sb, saa = (g.node(p.sha()).restore() for p in (root, a, b, aa))
    assert r.items == [] and (r.arr == 0).all() and (r.big == 0).all()
    assert sa.items == [1] and sb.items == [2] and saa.items == [1, 3]
    # each recipe saw its parent exactly as the parent was saved, whatever ran before it
    assert sa.seen[0] == [] and sb.seen[0] == [] and saa.seen[0] == [1]
    assert (sa.seen[1] == 0).all() and (sb.seen[1] == 0).all()
    assert sa.seen[2] == 0.0 and sb.seen[2] == 0.0 and saa.seen[2] == 20_000.0
    assert sa.arr.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert sb.arr.tolist() == [2.0, 0.0, 1.0, 0.0]
    assert saa.arr.tolist() == [3.0, 1.0, 0.0, 1.0]
    assert (sb.big == 2).all() and (saa.big == 3).all()


def test_restored_states_are_independent_objects(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Box)
    root = exp.spawn_new_tree(name="box")
    child = Mutate(value=1)(root)
    exp.run()
    first = exp.graph.node(child.sha()).restore()
    first.items.append("local edit")
    first.arr[:] = -1
    again = dg.Experiment.restore(exp_dir).graph.node(child.sha()).restore()
    assert again.items == [1] and again.arr[0] == 1.0


def test_cache_hits_across_processes(exp_dir, calls_file):
    exp, report = listing2(exp_dir)
    assert len(report.computed) == 5
    assert sorted(_calls()) == ["init", "prune", "prune", "train", "train"]
    code = (
        f"import sys; sys.path.insert(0, {HERE!r})\n"
        "import paperdefs\n"
        f"paperdefs.CALLS_FILE = {calls_file!r}\n"
        f"exp, report = paperdefs.listing2({exp_dir!r})\n"
        "print('computed', len(report.computed), 'cached', len(report.cached))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "computed 0 cached 5" in out.stdout
    assert sorted(_calls()) == ["init", "prune", "prune", "train", "train"]  # no recipe ran again
    assert out.stdout.count("Accuracy") == 2  # but Functions did


def test_identical_definitions_collapse_to_one_task(exp_dir, calls_file):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    with exp.tag("first"):
        a = TrainRecipe(nb_epochs=2, lr=0.1)(root)
    with exp.tag("second"):
        b = TrainRecipe(nb_epochs=2, lr=0.1)(root)
    assert a is b
    report = exp.run()
    assert len(report.computed) == 2
    assert _calls().count("train") == 1
    assert exp.graph.node(a.sha()).tags == ["first", "second"]


def test_functions_run_at_every_run_and_results_are_restored(exp_dir, calls_file):
    counted = []

    @dg.Function
    def norm(state):
        counted.append(state.sha())
        return {"norm": float(np.abs(state.model["w"]).sum()), "weights": state.model["w"]}

    def define():
        exp = dg.Experiment(exp_dir, state_class=State)
        root = exp.spawn_new_tree(dataset_name="d", model_name="m")
        s = TrainRecipe(nb_epochs=4, lr=0.5)(root)
        norm(s)
        eval_fn(s)
        return exp, s

    exp, s = define()
    exp.run()
    exp, s = define()
    report = exp.run()
    assert len(counted) == 2 and report.computed == []
    assert _calls().count("train") == 1
    restored = dg.Experiment.restore(exp_dir)
    node = restored.graph.node(s.sha())
    results = node.results
    assert results["norm"]["norm"] > 0
    assert len(results["norm"]["weights"]) == 6  # numpy arrays recorded as JSON lists
    assert 0.0 <= results["eval_fn"]["accuracy"] <= 1.0
    assert node.metadata["results"] == results


def test_function_errors_are_reported_and_other_results_kept(exp_dir):
    @dg.Function
    def broken(state):
        raise ValueError("no metric today")

    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    broken(s)
    eval_fn(s)
    with pytest.raises(dg.RunFailedError) as info:
        exp.run()
    assert "Function 'broken' raised ValueError: no metric today" in str(info.value)
    node = exp.graph.node(s.sha())
    assert "accuracy" in node.results["eval_fn"] and "broken" not in node.results
    assert node.metadata["function_errors"] == {"broken": "ValueError: no metric today"}

    # Once the function works again, its result is stored and the error is gone.
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    dg.Function(lambda state: 7, name="broken")(s)
    exp.run()
    node = exp.graph.node(s.sha())
    assert node.results["broken"] == 7 and "function_errors" not in node.metadata


def test_stored_root_is_not_initialized_again(exp_dir, calls_file):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    assert _calls() == ["init", "train"]
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(root)
    report = exp.run()
    assert _calls() == ["init", "train", "prune"]
    assert [r.recipe for r in report.computed] == ["PruneRecipe"]


def test_initialize_state_gets_extra_kwargs(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Box)
    root = exp.spawn_new_tree(name="box", extra={"note": 1})
    same = dg.Experiment(str(exp_dir) + "2", state_class=Box).spawn_new_tree(name="box", extra="other")
    assert root.sha() == same.sha()  # non-PROPERTIES kwargs never change identity
    assert root.get().extra == {"note": 1}


class NotAState(dg.Recipe):
    PROPERTIES = []

    def run(self, state):
        return {"model": state.model}


def test_run_returning_a_non_state_names_the_recipe(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    bad = NotAState()(root)
    with pytest.raises(dg.RunFailedError) as info:
        exp.run()
    (failure,) = info.value.failures
    assert failure.sha == bad.sha() and failure.recipe == "NotAState"
    assert failure.error.startswith("RecipeReturnError")
    assert "NotAState.run returned dict" in failure.error and "return state" in failure.error
    assert "RecipeReturnError" in failure.traceback


class Shared(dg.ExperimentState):
    PROPERTIES = []

    def initialize_state(self, **kwargs):
        self.config = {"layers": [1, 2]}
        self.alias = self.config
        self.big = np.arange(50_000, dtype=np.float64)
        self.view = self.big
        self.pair = (self.config, self.big)


class Touch(dg.Recipe):
    PROPERTIES = []

    def run(self, state):
        state.config["layers"].append(3)
        return state


def test_shared_references_survive_restore(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Shared)
    root = exp.spawn_new_tree()
    child = Touch()(root)
    exp.run()
    for promise in (root, child):
        s = dg.Experiment.restore(exp_dir).graph.node(promise.sha()).restore()
        assert s.alias is s.config and s.pair[0] is s.config
        assert s.view is s.big and s.pair[1] is s.big
    s = dg.Experiment.restore(exp_dir).graph.node(child.sha()).restore()
    assert s.alias["layers"] == [1, 2, 3]
    s.alias["layers"].append(4)
    assert s.config["layers"] == [1, 2, 3, 4]


class Fresh(dg.Recipe):
    """Returns a new state object of the right class rather than the one it was given."""

    PROPERTIES = []

    def run(self, state):
        child = copy.copy(state)
        child.items = state.items + ["fresh"]
        return child


def test_recipe_may_return_a_new_state_object(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Box)
    root = exp.spawn_new_tree(name="box")
    child = Fresh()(root)
    exp.run()
    s = dg.Experiment.restore(exp_dir).graph.node(child.sha()).restore()
    assert s.items == ["fresh"] and s.sha() == child.sha()


def test_copy_of_a_state_keeps_large_bytes_as_bytes():
    s = Box.__new__(Box)
    s.raw = b"x" * 100_000
    s.items = [1]
    for clone in (copy.copy(s), copy.deepcopy(s)):
        assert type(clone.raw) is bytes and clone.raw == s.raw and clone.items == [1]


def test_slim_states_do_not_pretend_to_have_dunder_attributes(exp_dir):
    listing2(exp_dir)
    node = dg.Experiment.restore(exp_dir).graph.root
    assert not hasattr(node, "__array__")  # AttributeError, not DeflatedStateError
    with pytest.raises(dg.DeflatedStateError):
        _ = node.train_data


def test_state_class_validation():
    with pytest.raises(dg.DefinitionError, match="list of attribute names"):

        class Bad(dg.ExperimentState):
            PROPERTIES = "name"

    with pytest.raises(dg.DefinitionError, match="tags"):

        class Reserved(dg.ExperimentState):
            PROPERTIES = ["tags"]

    with pytest.raises(dg.DefinitionError, match="once"):

        class Twice(dg.ExperimentState):
            PROPERTIES = ["model"]
            NONHASHED_ATTRIBUTES = ["model"]


def test_state_outside_an_experiment():
    s = Box.__new__(Box)
    assert "not in an experiment" in repr(s)
    with pytest.raises(dg.DefinitionError, match="not part of an experiment"):
        _ = s.tags
    with pytest.raises(AttributeError):
        _ = s.nothing_here


def test_seed_and_rng_follow_the_hash(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Box)
    root = exp.spawn_new_tree(name="box")
    s = root.get()
    assert s.dagger_seed == int(root.sha()[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF
    assert s.rng().integers(1 << 30) == np.random.default_rng(s.dagger_seed).integers(1 << 30)
