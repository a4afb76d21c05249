"""Names belong to the user: every attribute name works, except a small reserved set refused up front."""

from __future__ import annotations

import itertools
import keyword
import os
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import dagger as dg
from dagger import hashing
from dagger.errors import DefinitionError, RunFailedError
from dagger.recipe import RESERVED_RECIPE_NAMES, seeds_global_rngs
from dagger.state import RESERVED_STATE_NAMES

MODULE = sys.modules[__name__]
_counter = itertools.count()

# Names users reach for first, and names dagger used to overwrite or break, besides random identifiers.
COMMON = [
    "seed", "name", "model", "SEED", "id", "type", "data", "state", "config", "optimizer", "epoch",
    "results_table", "tags_count", "recipe_name", "metadata_", "meta", "tree", "loaded", "class", "lambda_",
    "properties", "identity", "run", "children_", "parent_", "depth", "functions", "init_kwargs",
]  # fmt: skip
IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,14}", fullmatch=True)


def usable_by_states(name: str) -> bool:
    return (
        name.isidentifier()
        and name not in RESERVED_STATE_NAMES
        and name not in ("_meta", "_tree")
        and not name.startswith("_dg_")
        and not (name.startswith("__") and name.endswith("__"))
    )


def usable_by_recipes(name: str) -> bool:
    return name.isidentifier() and name not in RESERVED_RECIPE_NAMES and not (name.startswith("__") and name.endswith("__"))


def _register(cls: type) -> type:
    """Make a class built in a test importable by reference (pickle finds it in this module)."""
    cls.__module__ = __name__
    setattr(MODULE, cls.__name__, cls)
    return cls


def make_classes(prop: str, nonhashed: str, rprop: str) -> tuple[type, type]:
    n = next(_counter)

    def initialize_state(self, **kwargs):
        setattr(self, nonhashed, ("built from", getattr(self, prop)))

    state_cls = _register(
        type(
            f"NamedState{n}",
            (dg.ExperimentState,),
            {"PROPERTIES": [prop], "NONHASHED_ATTRIBUTES": [nonhashed], "initialize_state": initialize_state},
        )
    )

    def run(self, state):
        state.__dict__["recipe_saw"] = getattr(self, rprop)  # not via setattr: the name may be anything
        return state

    recipe_cls = _register(type(f"NamedRecipe{n}", (dg.Recipe,), {"PROPERTIES": [rprop], "run": run}))
    return state_cls, recipe_cls


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prop=st.one_of(st.sampled_from(COMMON), IDENT).filter(usable_by_states),
    nonhashed=st.one_of(st.sampled_from(COMMON), IDENT).filter(usable_by_states),
    rprop=st.one_of(st.sampled_from(COMMON), IDENT).filter(usable_by_recipes),
    value=st.one_of(st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3)),
)
@example(prop="__0", nonhashed="seed", rprop="seed", value=0)  # a leading double underscore, not a dunder
def test_every_unreserved_name_round_trips(prop, nonhashed, rprop, value):
    if prop == nonhashed or "recipe_saw" in (prop, nonhashed):
        return
    state_cls, recipe_cls = make_classes(prop, nonhashed, rprop)
    with tempfile.TemporaryDirectory() as directory:
        exp = dg.Experiment(directory, state_class=state_cls)
        root = exp.spawn_new_tree(**{prop: value})
        child = recipe_cls(**{rprop: value})(root)
        assert child.properties[prop] == value  # the promise knows the root's properties ...
        if not hasattr(type(child), prop) and prop not in type(child).__slots__:
            assert getattr(child, prop) == value  # ... as attributes too, where no promise attribute has the name
        exp.run(progress=False)

        again = dg.Experiment.restore(directory, state_class=state_cls)
        slim_root = again.graph.node(root.sha())
        assert getattr(slim_root, prop) == hashing_json(value)  # slim: the JSON form of the property
        full_root = slim_root.restore()
        assert getattr(full_root, prop) == value
        assert getattr(full_root, nonhashed) == ("built from", value)
        full_child = again.graph.node(child.sha()).restore()
        assert full_child.recipe_saw == value
        assert getattr(full_child, prop) == value
        assert getattr(full_child, nonhashed) == ("built from", value)
        assert full_child.recipe["properties"] == {rprop: hashing_json(value)}
        # dagger's own API is intact whatever the user named things
        assert full_child.parent.sha() == root.sha() and full_child.sha() == child.sha()
        assert [c.sha() for c in again.graph.root.children] == [child.sha()]


def hashing_json(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("name", sorted(RESERVED_STATE_NAMES))
@pytest.mark.parametrize("where", ["PROPERTIES", "NONHASHED_ATTRIBUTES"])
def test_every_reserved_state_name_is_refused_at_definition(name, where):
    with pytest.raises(DefinitionError, match=rf"{where} lists '{name}', a name reserved by dagger's API.*Rename"):
        type("Clash", (dg.ExperimentState,), {where: [name]})


@pytest.mark.parametrize("name", sorted(RESERVED_RECIPE_NAMES))
def test_every_reserved_recipe_name_is_refused_at_definition(name):
    with pytest.raises(DefinitionError, match=rf"PROPERTIES lists '{name}', a name reserved by dagger's API.*Rename"):
        type("Clash", (dg.Recipe,), {"PROPERTIES": [name]})


@pytest.mark.parametrize("name", ["_meta", "_tree", "_dg_sha", "__dict__", "__class__", "not an identifier", "1x"])
def test_internal_and_invalid_names_are_refused(name):
    with pytest.raises(DefinitionError, match=repr(name)):
        type("Clash", (dg.ExperimentState,), {"PROPERTIES": [name]})


def test_reserved_set_is_exactly_the_public_api():
    """The documented set is what the classes expose: adding an API name means documenting it."""
    public = {n for n in dir(dg.ExperimentState) if not n.startswith("_")}
    assert public == RESERVED_STATE_NAMES
    assert {n for n in dir(dg.Recipe) if not n.startswith("_")} == RESERVED_RECIPE_NAMES
    guide = open(os.path.join(os.path.dirname(__file__), "..", "docs", "guide.md"), encoding="utf-8").read()
    section = guide[guide.index("### Reserved names") :]
    for name in RESERVED_STATE_NAMES | RESERVED_RECIPE_NAMES:
        assert f"`{name}`" in section, f"{name} is reserved but not listed in docs/guide.md"


class SeedWidth(dg.ExperimentState):
    PROPERTIES = ["seed", "width"]

    def initialize_state(self, **kwargs):
        import random

        self.draw = random.Random(self.seed).random()


class SeededStep(dg.Recipe):
    PROPERTIES = ["seed"]

    def run(self, state):
        state.step_seed = self.seed
        return state


def test_seed_is_a_property_of_states_and_recipes(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=SeedWidth)
    root = exp.spawn_new_tree(seed=7, width=16)
    child = SeededStep(seed=3)(root)
    exp.run(progress=False)
    got = child.get()
    assert (got.seed, got.width, got.step_seed) == (7, 16, 3)
    import random

    assert got.draw == random.Random(7).random()
    assert got.dagger_seed == int(child.sha()[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF != 7
    # the seed is part of the root's identity like any property
    other = dg.Experiment(exp_dir + "-other", state_class=SeedWidth).spawn_new_tree(seed=8, width=16)
    assert other.sha() != root.sha()


class NoSeed(dg.ExperimentState):
    PROPERTIES = ["width"]


def test_seed_without_a_user_value_says_where_dagger_keeps_its_own(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=NoSeed)
    state = exp.spawn_new_tree(width=1).get()
    with pytest.raises(AttributeError, match=r"state\.dagger_seed"):
        _ = state.seed


class RecipeWithSeedFlagProperty(dg.Recipe):
    PROPERTIES = ["SEED"]

    def run(self, state):
        return state


class Unseeded(dg.Recipe):
    SEED_GLOBAL_RNGS = False

    def run(self, state):
        return state


class OldSpelling(dg.Recipe):
    SEED = False

    def run(self, state):
        return state


class OldSpellingChild(OldSpelling):
    pass


class ReEnabled(OldSpelling):
    SEED_GLOBAL_RNGS = True


def test_a_property_named_SEED_is_data_and_never_switches_seeding_off():
    recipe = RecipeWithSeedFlagProperty(SEED=False)
    assert recipe.SEED is False  # the user's value, kept
    assert seeds_global_rngs(type(recipe)) is True
    assert seeds_global_rngs(Unseeded) is False
    assert seeds_global_rngs(OldSpelling) is False  # the older class flag still works ...
    assert seeds_global_rngs(OldSpellingChild) is False  # ... inherited too
    assert seeds_global_rngs(ReEnabled) is True  # the new flag, nearer in the MRO, wins


class SetsReservedInInit(dg.ExperimentState):
    PROPERTIES = ["width"]

    def initialize_state(self, **kwargs):
        self.parent = "mine"


class SetsReservedInRun(dg.Recipe):
    def run(self, state):
        state.results = [1, 2]
        return state


def test_setting_a_reserved_name_in_initialize_state_or_run_is_a_clear_error(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=SetsReservedInInit)
    exp.spawn_new_tree(width=1)
    with pytest.raises(RunFailedError, match=r"cannot set SetsReservedInInit\.parent: 'parent' is reserved"):
        exp.run(progress=False)

    exp2 = dg.Experiment(exp_dir + "-2", state_class=SeedWidth)
    SetsReservedInRun()(exp2.spawn_new_tree(seed=1, width=1))
    with pytest.raises(RunFailedError, match=r"cannot set SeedWidth\.results: 'results' is reserved"):
        exp2.run(progress=False)


def test_setting_a_reserved_name_on_a_recipe_is_a_clear_error():
    class Configured(dg.Recipe):
        def __init__(self):
            self.identity = "mine"

    with pytest.raises(DefinitionError, match=r"cannot set Configured\.identity"):
        Configured()


class Versioned(dg.ExperimentState):
    PROPERTIES = ["width"]


class VersionedTwo(dg.ExperimentState):
    PROPERTIES = ["width"]
    VERSION = 2


def test_state_class_version_changes_the_root_hash_only_when_set():
    path = "mod.State"
    assert hashing.root_hash(path, {"width": 1}) == hashing.root_hash(path, {"width": 1}, 0)
    assert hashing.root_hash(path, {"width": 1}, 1) != hashing.root_hash(path, {"width": 1})
    assert hashing.root_hash(path, {"width": 1}, 1) != hashing.root_hash(path, {"width": 1}, 2)
    assert hashing.root_hash(path, {"width": 1}, "1") != hashing.root_hash(path, {"width": 1}, 1)


def test_bumping_the_state_version_gives_a_new_tree(tmp_path):
    a = dg.Experiment(str(tmp_path / "a"), state_class=Versioned).spawn_new_tree(width=1)
    b = dg.Experiment(str(tmp_path / "b"), state_class=VersionedTwo).spawn_new_tree(width=1)
    assert a.sha() == hashing.root_hash(hashing.object_path(Versioned), {"width": 1})
    assert b.sha() == hashing.root_hash(hashing.object_path(VersionedTwo), {"width": 1}, 2)
    VersionedTwo.VERSION = 3
    try:
        c = dg.Experiment(str(tmp_path / "c"), state_class=VersionedTwo).spawn_new_tree(width=1)
    finally:
        VersionedTwo.VERSION = 2
    assert c.sha() != b.sha()


def test_a_bumped_state_version_in_the_old_folder_says_what_to_do(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=VersionedTwo)
    exp.spawn_new_tree(width=1)
    exp.run(progress=False)
    VersionedTwo.VERSION = 3
    try:
        with pytest.raises(DefinitionError, match=r"VersionedTwo\.VERSION = 2; VERSION 3 gives the root a new hash"):
            dg.Experiment(exp_dir, state_class=VersionedTwo).spawn_new_tree(width=1)
    finally:
        VersionedTwo.VERSION = 2
    assert dg.Experiment(exp_dir, state_class=VersionedTwo).spawn_new_tree(width=1)  # back at 2: the stored tree


def test_keywords_and_builtins_are_ordinary_names():
    assert usable_by_states("class") and keyword.iskeyword("class")
    cls = type("KeywordState", (dg.ExperimentState,), {"PROPERTIES": ["class", "type", "id"]})
    assert cls.PROPERTIES == ["class", "type", "id"]
