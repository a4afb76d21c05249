"""Valid JSON with wrong types in a commit record: the record is skipped with a warning, nothing crashes."""

from __future__ import annotations

import os
import shutil

import pytest
import records_io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dagger as dg
from dagger import cli
from dagger.errors import CorruptRecordError

runner = CliRunner()

# What the issue reported, and one wrong type for every other field a record has.
BAD_FIELDS = [
    ("tags", [{"a": 1}]),
    ("tags", "pruned"),
    ("properties", [1, 2]),
    ("recipe", "str"),
    ("recipe", {"name": ["x"], "properties": {}}),
    ("recipe", {"name": "R", "properties": [1]}),
    ("parent", 12),
    ("depth", "3"),
    ("depth", -1),
    ("results", [1]),
    ("function_errors", {"f": 3}),
    ("blobs", [["nothex", 3]]),
    ("pickle_bytes", "7"),
    ("run", {"duration": "long"}),
    ("created", "today"),
    ("state_class", 5),
    ("environment", "linux"),
    ("status", {"x": 1}),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One pristine experiment per layout, built once (in the layout the ``layout`` fixture asks for)."""
    return {}


@pytest.fixture
def pristine(layout, built, tmp_path_factory):
    """root -> a -> b (with a Function result), root -> c: built once per layout, copied per test."""
    if layout not in built:
        from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

        directory = str(tmp_path_factory.mktemp(f"types-{layout}") / "exp")
        exp = dg.Experiment(directory, state_class=State)
        root = exp.spawn_new_tree(dataset_name="d", model_name="m")
        with exp.tag("lr:0.1"):
            a = TrainRecipe(nb_epochs=1, lr=0.1)(root)
            b = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(a)
        c = TrainRecipe(nb_epochs=2, lr=0.2)(root)
        eval_fn(b)
        exp.run(progress=False)
        sha = {"root": root.sha(), "a": a.sha(), "b": b.sha(), "c": c.sha()}
        assert records_io.in_segments(directory, sha["b"]) == (layout == "segments")
        built[layout] = directory, sha
    return built[layout]


def damaged_copy(pristine, tmp_path, name, field, value):
    source, sha = pristine
    directory = str(tmp_path / "exp")
    shutil.copytree(source, directory)
    (rev,) = records_io.revs(directory, sha[name])  # the state's one record

    def damage(record: dict) -> None:
        record[field] = value

    records_io.edit_json(directory, sha[name], damage, rev)
    os.remove(os.path.join(directory, "index.json"))  # else the index's good copy is what browsing reads
    return directory, sha


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v in BAD_FIELDS])
def test_every_command_skips_a_record_with_a_wrong_type(pristine, tmp_path, field, value):
    directory, sha = damaged_copy(pristine, tmp_path, "b", field, value)
    with pytest.raises(CorruptRecordError, match=f"field '{field}'"):
        dg.Experiment(directory).records.read_meta(sha["b"], "0" * 20)
    with pytest.warns(dg.DaggerWarning, match=f"skipping state {sha['b'][:12]}"):
        graph = dg.Experiment.restore(directory).graph
    assert sha["b"] not in {n.sha() for n in graph} and len(graph) == 3
    for args in (
        ["show", directory],
        ["ls", directory],
        ["ls", directory, "--tag", "lr:*"],
        ["inspect", directory, sha["a"][:10]],
        ["inspect", directory, sha["a"][:10], "--json"],
        ["diff", directory, sha["a"][:10], sha["c"][:10]],
        ["results", directory],
        ["results", directory, "--csv", "-"],
        ["gc", directory, "--dry-run"],
    ):
        result = runner.invoke(cli.app, args)
        assert result.exit_code == 0, (args, result.output)
        assert "TypeError" not in result.output and "Traceback" not in result.output
        if args[0] not in ("gc",):
            assert f"skipping state {sha['b'][:12]}" in result.output, args
    report = runner.invoke(cli.app, ["verify", directory])
    assert report.exit_code == 1 and f"state {sha['b'][:12]}" in report.output and f"'{field}'" in report.output
    assert runner.invoke(cli.app, ["gc", directory]).exit_code == 0
    # gc kept the damaged state's record and pickle: deleting the record recomputes it, as the docs say.
    assert records_io.revs(directory, sha["b"]) and records_io.read_json(directory, sha["b"])[field] == value


def test_a_wrong_type_in_the_index_falls_back_to_the_record(pristine, tmp_path):
    source, sha = pristine
    directory = str(tmp_path / "exp")
    shutil.copytree(source, directory)
    path = os.path.join(directory, "index.json")
    text = open(path).read()
    # Every state's full metadata in the index gets a wrong type; the records are intact.
    damaged = text.replace('"tags":[', '"tags":[{"a":1},')
    assert damaged != text
    with open(path, "w") as f:
        f.write(damaged)
    graph = dg.Experiment.restore(directory).graph
    assert len(graph) == 4
    assert graph.node(sha["b"]).tags == ["lr:0.1"]
    assert {r["sha"] for r in graph.nodes.to_records()} == set(sha.values())


# ---- property: any JSON value in any field of any record --------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_FIELD_NAMES = sorted({f for f, _ in BAD_FIELDS} | {"sha", "format", "payload"})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.sampled_from(["root", "a", "b", "c"]),
    field=st.sampled_from(_FIELD_NAMES),
    value=st.one_of(_json, st.sampled_from(["0" * 64, "f" * 64])),
    recipe_field=st.booleans(),
)
def test_any_mutated_record_is_either_read_or_skipped(pristine, tmp_path_factory, name, field, value, recipe_field):
    """Browsing, tables, verify and gc never fail with anything but a clear dagger error."""
    tmp = tmp_path_factory.mktemp("mut")
    source, sha = pristine
    if recipe_field and name != "root":  # a wrong type inside the recipe object
        directory, _ = damaged_copy(pristine, tmp, name, "recipe", {"name": "R", "properties": {}, field: value})
    else:
        directory, _ = damaged_copy(pristine, tmp, name, field, value)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exp = dg.Experiment.restore(directory)
        except dg.errors.DaggerError:
            return  # e.g. a format from a newer dagger: refused with a clear error
        graph = exp.graph
        graph.to_text()
        graph.nodes.to_records()
        graph.nodes.filter("lr:*")
        for node in graph:
            _ = (node.tags, node.recipe, node.results, repr(node))
            try:
                node.lineage()
            except CorruptRecordError as exc:
                assert node.sha()[:12] in str(exc)
        report = exp.verify()
        str(report)
        exp.gc(dry_run=True)
    for args in (["show", directory], ["results", directory], ["verify", directory]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code in (0, 1), (args, result.output)
        assert "set DAGGER_DEBUG" not in result.output, (args, result.output)  # no unexpected exception
    shutil.rmtree(tmp)
