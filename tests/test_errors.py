"""Every error says what is wrong and what to do (issue 2, item 8)."""

from __future__ import annotations

import json
import os
import re
import warnings

import pytest
import records_io
from damage import sole_pickle_file
from paperdefs import State, TrainRecipe, listing2

import dagger as dg
from dagger.store.records import INDEX_KEY, INLINE_MAX


class Other(dg.ExperimentState):
    PROPERTIES = ["dataset_name", "model_name"]


class Opaque:
    pass


ALL_ERRORS = [getattr(dg, name) for name in dg.__all__ if name.endswith("Error")]


def test_one_root_error_class():
    assert len(ALL_ERRORS) >= 15
    for cls in ALL_ERRORS:
        assert issubclass(cls, dg.DaggerError)
    assert issubclass(dg.StateNotFoundError, KeyError)
    assert issubclass(dg.NotAnExperimentError, FileNotFoundError)
    assert issubclass(dg.MissingPropertyError, TypeError)
    assert issubclass(dg.DaggerWarning, UserWarning)
    assert str(dg.StateNotFoundError("no state abc")) == "no state abc"
    assert str(dg.StateNotFoundError()) == ""


def test_missing_root_property_names_it(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    with pytest.raises(dg.MissingPropertyError) as info:
        exp.spawn_new_tree(dataset_name="digits")
    msg = str(info.value)
    assert "missing root property 'model_name'" in msg and "pass model_name=..." in msg and "dataset_name=" not in msg
    with pytest.raises(dg.MissingPropertyError, match="properties 'dataset_name', 'model_name'"):
        exp.spawn_new_tree()
    assert not os.path.exists(os.path.join(exp_dir, "experiment.json"))


def test_second_spawn_new_tree(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    exp.spawn_new_tree(dataset_name="d", model_name="m")
    with pytest.raises(dg.DefinitionError, match="already has a root") as info:
        exp.spawn_new_tree(dataset_name="d", model_name="m")
    assert "another Experiment folder" in str(info.value)


def test_unhashable_recipe_property_names_property_and_type(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    with pytest.raises(dg.UnhashableError) as info:
        TrainRecipe(nb_epochs=1, lr=Opaque())(root)
    msg = str(info.value)
    assert "property 'lr' of TrainRecipe" in msg and "test_errors.Opaque" in msg and "register_encoder" in msg
    with pytest.raises(dg.UnhashableError) as info:
        TrainRecipe(nb_epochs=[1, Opaque()], lr=0.1)(root)
    assert info.value.path == "TrainRecipe.nb_epochs[1]"


def test_unhashable_root_property_names_it(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    with pytest.raises(dg.UnhashableError) as info:
        exp.spawn_new_tree(dataset_name="d", model_name=Opaque())
    assert "property 'model_name' of State" in str(info.value) and "Opaque" in str(info.value)


def test_restore_of_a_folder_that_is_not_an_experiment(tmp_path):
    (tmp_path / "some_file.txt").write_text("hello")
    with pytest.raises(dg.NotAnExperimentError) as info:
        dg.Experiment.restore(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "experiment.json" in str(info.value)
    with pytest.raises(FileNotFoundError):
        dg.Experiment.restore(str(tmp_path / "does" / "not" / "exist"))


def test_restore_with_a_different_state_class(exp_dir):
    listing2(exp_dir)
    with pytest.raises(dg.StateClassMismatchError) as info:
        dg.Experiment.restore(exp_dir, state_class=Other)
    msg = str(info.value)
    assert "'paperdefs.State'" in msg and "test_errors.Other" in msg and "state_class=None" in msg
    with pytest.raises(dg.StateClassMismatchError):
        dg.Experiment(exp_dir, state_class=Other)
    assert len(dg.Experiment.restore(exp_dir, state_class=State).graph) == 5


def _corrupt_one_record(exp_dir):
    """Truncate the newest commit record of one state (a ``meta/`` file or a segment record); return its sha and label."""
    victim = records_io.every_sha(exp_dir)[0]
    return victim, records_io.write_bytes(exp_dir, victim, b'{"format": 1, "sha": "trunc')


def test_corrupt_metadata_file_warns_and_others_load(exp_dir, layout):
    listing2(exp_dir)
    victim, where = _corrupt_one_record(exp_dir)
    os.remove(os.path.join(exp_dir, INDEX_KEY))  # force the records to be read
    with pytest.warns(dg.DaggerWarning) as caught:
        exp = dg.Experiment.restore(exp_dir)
    messages = [str(w.message) for w in caught if issubclass(w.category, dg.DaggerWarning)]
    assert any(where in m and "corrupt" in m for m in messages)
    shas = {n.sha() for n in exp.graph.nodes}
    assert len(shas) == 4 and victim not in shas


def test_corrupt_metadata_behind_a_stale_index_is_reported(exp_dir, layout):
    """A corrupt record whose revision is not in the index is read, reported and skipped."""
    listing2(exp_dir)
    sha = records_io.every_sha(exp_dir)[0]
    # A newer revision, not yet in the index.
    newer = records_io.add_record(exp_dir, sha, "f" * 20, b"not json at all")
    with pytest.warns(dg.DaggerWarning, match=re.escape(newer)):
        exp = dg.Experiment.restore(exp_dir)
    assert len(exp.graph) == 4


def test_meta_record_for_another_state_is_corrupt(exp_dir, layout):
    listing2(exp_dir)
    first, second = records_io.every_sha(exp_dir)[:2]
    records_io.write_bytes(exp_dir, first, records_io.read_bytes(exp_dir, second))
    os.remove(os.path.join(exp_dir, INDEX_KEY))
    with pytest.warns(dg.DaggerWarning, match="describes state"):
        exp = dg.Experiment.restore(exp_dir)
    assert len(exp.graph) == 4


def test_corrupt_or_newer_experiment_record(exp_dir):
    listing2(exp_dir)
    path = os.path.join(exp_dir, "experiment.json")
    info = json.loads(open(path).read())
    open(path, "w").write(json.dumps(dict(info, format=99)))
    with pytest.raises(dg.FormatVersionError, match="newer dagger"):
        dg.Experiment.restore(exp_dir)
    open(path, "w").write(json.dumps({"hello": 1}))
    with pytest.raises(dg.CorruptRecordError, match="no format version"):
        dg.Experiment.restore(exp_dir)
    open(path, "w").write("[1, 2]")
    with pytest.raises(dg.CorruptRecordError, match="JSON object"):
        dg.Experiment.restore(exp_dir)
    open(path, "w").write("{trunc")
    with pytest.raises(dg.CorruptRecordError, match="not valid JSON"):
        dg.Experiment.restore(exp_dir)


def test_corrupt_index_is_rebuilt(exp_dir):
    listing2(exp_dir)
    with open(os.path.join(exp_dir, INDEX_KEY), "w") as f:
        f.write("{broken")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the index is derived: no warning needed
        exp = dg.Experiment.restore(exp_dir)
    assert len(exp.graph) == 5
    index = json.loads(open(os.path.join(exp_dir, INDEX_KEY)).read())
    assert len(index["states"]) == 5


def test_missing_state_pickle_is_a_clear_error(exp_dir):
    exp, _ = listing2(exp_dir)
    node = dg.Experiment.restore(exp_dir).graph.nodes.filter("pruned")[0]
    sha = node.sha()
    # Its pickle file once it is the only copy (a first commit record that carries the pickle is the commit).
    os.remove(sole_pickle_file(exp_dir, sha))
    with pytest.raises(dg.CorruptRecordError, match="missing although state"):
        node.restore()


class Ballast(dg.Recipe):
    """Adds ``n`` small ints to the model: they pickle in band (never as a blob), so the pickle grows."""

    PROPERTIES = ["n"]

    def run(self, state):
        state.model["ballast"] = list(range(self.n))
        return state


def test_store_write_failure_fails_the_state_with_a_store_error(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    # A small pickle travels in the state's first commit record: the child's pickle is made larger than
    # INLINE_MAX (about 3 bytes per int), so that it is written to its own file under states/, as before.
    child = Ballast(n=INLINE_MAX)(root)
    os.makedirs(os.path.join(exp_dir, "states"), exist_ok=True)
    with open(os.path.join(exp_dir, "states", child.sha()[:2]), "w") as f:
        f.write("a file where a folder must go")
    assert child.sha()[:2] != root.sha()[:2]
    with pytest.raises(dg.RunFailedError) as info:
        exp.run()
    (failure,) = info.value.failures
    assert failure.sha == child.sha() and failure.error.startswith("StoreError")
    assert f"could not save state {child.sha()[:12]}" in failure.error
    assert len(dg.Experiment.restore(exp_dir).graph) == 1  # the root was saved


def test_meta_record_from_a_newer_dagger_is_never_skipped(exp_dir, layout):
    listing2(exp_dir)
    records_io.edit_json(exp_dir, records_io.every_sha(exp_dir)[0], lambda body: dict(body, format=99))
    os.remove(os.path.join(exp_dir, INDEX_KEY))
    with pytest.raises(dg.FormatVersionError, match="newer dagger"):
        dg.Experiment.restore(exp_dir)
