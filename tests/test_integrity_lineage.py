"""Records edited so that a state's parent is its own child, itself, or missing: clear errors, never hangs."""

from __future__ import annotations

import os

import pytest
import records_io
from typer.testing import CliRunner

import dagger as dg
from dagger import cli
from dagger.errors import CorruptRecordError

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def tree(exp_dir, layout):
    """root -> a -> c -> d, and root -> b: hashes by name (in each layout)."""
    from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    a = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    b = TrainRecipe(nb_epochs=1, lr=0.2)(root)
    c = PruneRecipe(pruning_technique="random", pruning_fraction=0.2)(a)
    d = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(c)
    eval_fn(d)
    exp.run(progress=False)
    assert records_io.in_segments(exp_dir, a.sha()) == (layout == "segments")
    return exp_dir, {"root": root.sha(), "a": a.sha(), "b": b.sha(), "c": c.sha(), "d": d.sha()}


def set_parent(directory: str, sha: str, parent: str | None) -> None:
    """Edit ``sha``'s newest commit record so that it names ``parent``; drop the derived index."""

    def edit(record: dict) -> None:
        record["parent"] = parent

    records_io.edit_json(directory, sha, edit)
    os.remove(os.path.join(directory, "index.json"))


@pytest.mark.parametrize("case", ["child", "itself", "dangling"])
@pytest.mark.parametrize("reopen", [False, True], ids=["from-records", "from-rebuilt-index"])
def test_broken_lineage_is_a_clear_error_everywhere(tree, case, reopen):
    directory, sha = tree
    parent = {"child": sha["c"], "itself": sha["a"], "dangling": "f" * 64}[case]
    set_parent(directory, sha["a"], parent)
    if reopen:  # the first open rebuilds index.json from the records: its columns carry the cycle
        dg.Experiment.restore(directory).graph  # noqa: B018
        assert os.path.exists(os.path.join(directory, "index.json"))
    graph = dg.Experiment.restore(directory).graph
    broken = {sha["a"], sha["c"], sha["d"]}
    assert set(graph.problems()) == broken
    assert sha["a"][:12] in graph.problems()[sha["c"]]
    for name in ("a", "c", "d"):
        with pytest.raises(CorruptRecordError, match=sha[name][:12]):
            graph.node(sha[name]).lineage()
    assert [n.sha() for n in graph.node(sha["b"]).lineage()] == [sha["root"], sha["b"]]
    with pytest.warns(dg.DaggerWarning, match="lineage is broken"):
        rows = graph.nodes.to_records()
    assert {r["sha"] for r in rows} == {sha["root"], sha["b"]}
    text = graph.to_text()
    for s in sha.values():  # every state is shown: none dropped silently
        assert s[:8] in text
    assert "broken lineage (3 states" in text

    shown = invoke("show", directory)
    assert shown.exit_code == 1 and "broken lineage" in shown.output
    for s in sha.values():
        assert s[:10] in shown.output
    inspected = invoke("inspect", directory, sha["d"][:10])
    assert inspected.exit_code == 1 and "broken:" in inspected.output
    assert invoke("inspect", directory, sha["b"][:10]).exit_code == 0
    diffed = invoke("diff", directory, sha["d"][:10], sha["b"][:10])
    assert diffed.exit_code == 1 and sha["d"][:12] in diffed.output and "no lineage" in diffed.output
    table = invoke("results", directory)
    assert table.exit_code == 0 and "lineage is broken" in table.output
    assert sha["b"][:10] in table.stdout and sha["d"][:10] not in table.stdout
    report = invoke("verify", directory)
    assert report.exit_code == 1
    assert f"state {sha['a'][:12]}" in report.output and "lineage is broken" in report.output
    assert ("1 state(s) below it" if case == "child" else "2 state(s) below it") in report.output
    assert invoke("gc", directory, "--dry-run").exit_code == 0


def test_verify_reports_every_state_on_a_cycle(tree):
    directory, sha = tree
    set_parent(directory, sha["a"], sha["d"])  # a -> d -> c -> a
    report = dg.Experiment(directory).verify()
    assert not report.ok
    assert {p.state for p in report.problems} == {sha["a"], sha["c"], sha["d"]}
    assert all("cycle" in p.message for p in report.problems)
