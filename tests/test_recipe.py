"""Recipes and Functions: properties, identity, and how they are applied."""

from __future__ import annotations

import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

import dagger as dg
from dagger import hashing


class OwnInitRecipe(dg.Recipe):
    """A recipe with its own __init__ that calls super().__init__() and sets its properties."""

    PROPERTIES = ["nb_epochs", "lr"]

    def __init__(self, lr):
        super().__init__()
        self.lr = lr
        self.nb_epochs = 2

    def run(self, state):
        state.model["w"] += self.lr * self.nb_epochs
        return state


class Versioned(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        return state


def _tree(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    return exp, exp.spawn_new_tree(dataset_name="d", model_name="m")


def test_properties_are_keyword_arguments():
    r = TrainRecipe(nb_epochs=3, lr=0.5)
    assert (r.nb_epochs, r.lr) == (3, 0.5)
    assert r.properties() == {"nb_epochs": 3, "lr": 0.5}
    assert repr(r) == "TrainRecipe(nb_epochs=3, lr=0.5)"


def test_unknown_property_is_an_error_naming_it():
    with pytest.raises(dg.UnknownPropertyError) as info:
        TrainRecipe(nb_epochs=3, lr=0.1, momentum=0.9)
    msg = str(info.value)
    assert "'momentum'" in msg and "nb_epochs" in msg and "lr" in msg
    with pytest.raises(dg.UnknownPropertyError, match="unknown properties 'a', 'b'"):
        TrainRecipe(a=1, b=2)


def test_missing_property_is_reported_when_applied(exp_dir):
    exp, root = _tree(exp_dir)
    recipe = TrainRecipe(nb_epochs=3)  # constructing it is fine
    with pytest.raises(dg.MissingPropertyError) as info:
        recipe(root)
    assert "'lr'" in str(info.value) and "TrainRecipe" in str(info.value)
    assert "'nb_epochs'" not in str(info.value)
    recipe.lr = 0.1
    assert recipe(root).sha() == TrainRecipe(nb_epochs=3, lr=0.1)(root).sha()


def test_recipe_with_its_own_init(exp_dir):
    exp, root = _tree(exp_dir)
    a = OwnInitRecipe(0.5)(root)
    b = OwnInitRecipe(0.25)(root)
    assert a.sha() != b.sha()
    expected = hashing.child_hash(
        root.sha(), hashing.recipe_hash(hashing.object_path(OwnInitRecipe), {"nb_epochs": 2, "lr": 0.5}, 0)
    )
    assert a.sha() == expected
    exp.run()
    state = exp.graph.node(a.sha())
    assert state.recipe["properties"] == {"nb_epochs": 2, "lr": 0.5}
    assert state.restore().model["w"][0] == pytest.approx(1.0)
    assert exp.graph.node(b.sha()).restore().model["w"][0] == pytest.approx(0.5)


def test_setting_a_property_before_applying_changes_identity(exp_dir):
    exp, root = _tree(exp_dir)
    recipe = TrainRecipe(nb_epochs=5, lr=0.1)
    first = recipe(root)
    recipe.lr = 0.2
    second = recipe(root)
    assert first.sha() != second.sha()
    assert second.sha() == TrainRecipe(nb_epochs=5, lr=0.2)(root).sha()
    recipe.lr = 0.3  # after applying: changes neither promise
    exp.run()
    graph = exp.graph
    assert graph.node(first.sha()).recipe["properties"]["lr"] == 0.1
    assert graph.node(second.sha()).recipe["properties"]["lr"] == 0.2
    w1 = graph.node(first.sha()).restore().model["w"]
    w2 = graph.node(second.sha()).restore().model["w"]
    assert not (w1 == w2).all()  # each ran with the lr it had when applied
    assert len(graph) == 3


def test_version_changes_identity(exp_dir, monkeypatch):
    exp, root = _tree(exp_dir)
    v0 = Versioned(k=1)(root).sha()
    monkeypatch.setattr(Versioned, "VERSION", 1)
    v1 = Versioned(k=1)(root).sha()
    monkeypatch.setattr(Versioned, "VERSION", "2024-06")
    v2 = Versioned(k=1)(root).sha()
    assert len({v0, v1, v2}) == 3
    exp.run()
    assert exp.graph.node(v2).recipe["version"] == "2024-06"


def test_recipe_class_and_properties_are_identity():
    a = TrainRecipe(nb_epochs=1, lr=0.1).identity()[1]
    assert a == TrainRecipe(nb_epochs=1, lr=0.1).identity()[1]
    assert a != TrainRecipe(nb_epochs=2, lr=0.1).identity()[1]
    assert a != PruneRecipe(pruning_technique=1, pruning_fraction=0.1).identity()[1]


def test_bad_properties_definition():
    with pytest.raises(dg.DefinitionError, match="list of attribute names"):

        class Bad(dg.Recipe):
            PROPERTIES = "lr"

    with pytest.raises(dg.DefinitionError):

        class Bad2(dg.Recipe):
            PROPERTIES = ["lr", 3]


def test_recipe_applied_to_something_else():
    with pytest.raises(dg.DefinitionError, match="not to a state of an experiment"):
        TrainRecipe(nb_epochs=1, lr=0.1)({"model": 1})


def test_recipe_applied_across_experiments(tmp_path):
    _, root_a = _tree(str(tmp_path / "a"))
    exp_b, _ = _tree(str(tmp_path / "b"))
    with pytest.raises(dg.DefinitionError, match="another Experiment"):
        exp_b._add_child(root_a, TrainRecipe(nb_epochs=1, lr=0.1), {}, "0" * 64)


def test_recipe_without_run_fails_its_state(exp_dir):
    class NoRun(dg.Recipe):
        PROPERTIES = []

    exp, root = _tree(exp_dir)
    NoRun()(root)
    with pytest.raises(dg.RunFailedError, match="NotImplementedError"):
        exp.run()


def test_function_wrapping_and_direct_call():
    def score(state):
        return state["x"] * 2

    fn = dg.Function(score)
    assert fn.name == "score" and fn.__name__ == "score"
    assert fn({"x": 3}) == 6  # not a promise: simply runs
    assert repr(fn) == "Function(score)"
    named = dg.Function(score, name="double")
    assert named.name == "double"
    with pytest.raises(dg.DefinitionError):
        dg.Function(42)


def test_function_call_get_and_dedup(exp_dir):
    exp, root = _tree(exp_dir)
    s = TrainRecipe(nb_epochs=3, lr=0.1)(root)
    call = eval_fn(s)
    eval_fn(s)  # registering the same function twice runs it once per run
    assert len(s.functions) == 1
    assert isinstance(call, dg.FunctionCall)
    assert repr(call).startswith("<eval_fn(")
    result = call.get()
    assert set(result) == {"accuracy"} and 0.0 <= result["accuracy"] <= 1.0
    assert exp.graph.node(s.sha()).results["eval_fn"] == result


def test_unhashable_version_is_reported(exp_dir, monkeypatch):
    exp, root = _tree(exp_dir)
    monkeypatch.setattr(Versioned, "VERSION", object())
    with pytest.raises(dg.UnhashableError, match="builtins.object"):
        Versioned(k=1)(root)


# ---- the copy each application gets (issue 20 item 3) ------------------------------------

import gc  # noqa: E402

from dagger.recipe import own_copy  # noqa: E402


def _dict_backed(obj, names):
    """Whether ``obj`` keeps its attributes in a materialised ``__dict__`` (checked without reading it)."""
    return any(type(r) is dict and set(names) <= set(r) for r in gc.get_referents(obj))


class LoopRecipe(dg.Recipe):
    PROPERTIES = ["i", "n"]

    def __init__(self, **kw):
        super().__init__(**kw)
        self.extra = ["not a property"]

    def run(self, state):
        seen = _dict_backed(self, ["i", "n", "extra"]), _dict_backed(state, ["model"])
        state.seen = seen
        return state


def test_each_application_gets_an_independent_copy_with_every_attribute(exp_dir):
    exp, root = _tree(exp_dir)
    recipe = LoopRecipe(i=1, n=2)
    a = recipe(root)
    recipe.i = 5
    b = recipe(root)
    assert a.recipe is not recipe and b.recipe is not recipe and a.recipe is not b.recipe
    assert type(a.recipe) is LoopRecipe
    assert (a.recipe.i, a.recipe.n, b.recipe.i) == (1, 2, 5)
    # Same attributes, same order, same (shared: shallow copy) values.
    assert list(vars(a.recipe)) == ["i", "n", "extra"] and a.recipe.extra is recipe.extra
    a.recipe.n = 99
    a.recipe.new = "x"
    assert recipe.n == 2 and b.recipe.n == 2 and not hasattr(recipe, "new") and not hasattr(b.recipe, "new")


def test_recipe_and_state_in_a_run_keep_attributes_out_of_a_dict(exp_dir):
    """copy.copy's __dict__.update left a dict-backed object, which CPython 3.11 reads ~1.5x slower."""
    exp, root = _tree(exp_dir)
    child = LoopRecipe(i=1, n=2)(root)
    exp.run(progress=False)
    state = exp.graph.node(child.sha()).restore()
    assert state.seen == (False, False)


class AsksForItsTree(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        asked = (state.experiment_object, state.root)  # None inside a run: the state is not browsed
        state.seen = (asked, _dict_backed(state, ["model"]))
        return state


def test_asking_a_state_in_a_run_for_its_tree_keeps_it_out_of_a_dict(exp_dir):
    exp, root = _tree(exp_dir)
    child = AsksForItsTree(k=1)(root)
    exp.run(progress=False)
    assert exp.graph.node(child.sha()).restore().seen == ((None, None), False)


class Slotted(dg.Recipe):
    __slots__ = ("hidden",)
    PROPERTIES = ["k"]


class WithCopy(dg.Recipe):
    PROPERTIES = ["k"]

    def __copy__(self):
        new = WithCopy(k=self.k)
        new.copied_by_hook = True
        return new


def test_own_copy_keeps_slots_and_copy_hooks():
    s = Slotted(k=1)
    s.hidden = "h"
    c = own_copy(s)
    assert c is not s and (c.k, c.hidden) == (1, "h")
    assert own_copy(WithCopy(k=2)).copied_by_hook is True


class WithProperty(dg.Recipe):
    PROPERTIES = ["k"]

    @property
    def label(self):
        return self.__dict__.get("label", "none")

    @label.setter
    def label(self, value):
        raise AssertionError("a copy never sets attributes through the class's descriptors")


def test_own_copy_puts_a_name_shadowed_by_a_descriptor_into_the_dict():
    r = WithProperty(k=1)
    r.__dict__["label"] = "kept"
    c = own_copy(r)
    assert c is not r and c.k == 1 and c.label == "kept" and c.__dict__["label"] == "kept"


def test_a_pickled_recipe_keeps_every_attribute_out_of_a_dict():
    """What a worker process gets (the recipe travels pickled): the same attributes, not dict-backed."""
    import pickle

    import cloudpickle

    r = LoopRecipe(i=3, n=4)
    for back in (pickle.loads(pickle.dumps(r)), cloudpickle.loads(cloudpickle.dumps(r))):
        assert type(back) is LoopRecipe and vars(back) == {"i": 3, "n": 4, "extra": ["not a property"]}
    back = pickle.loads(pickle.dumps(r))
    assert not _dict_backed(back, ["i", "n", "extra"])
    assert (back.i, back.n, back.extra) == (3, 4, ["not a property"])
    s = Slotted(k=1)
    s.hidden = "h"
    back = pickle.loads(pickle.dumps(s))
    assert (back.k, back.hidden) == (1, "h")
