"""The slim index: each state's metadata is decoded lazily, and always equals its meta record."""

from __future__ import annotations

import json
import os

import pytest
import records_io
from indexdefs import CountingStore, count_records, records_of
from paperdefs import State, TrainRecipe, eval_fn, listing2

import dagger as dg
from dagger.store import LocalStore
from dagger.store import index as idx
from dagger.store import records as rec


@pytest.fixture(autouse=True)
def _count_records(monkeypatch):
    count_records(monkeypatch)


def open_slim(directory: str) -> tuple[dg.Experiment, CountingStore]:
    store = CountingStore(directory)
    exp = dg.Experiment.restore(store, state_class=State)
    return exp, store


def undecoded(exp: dg.Experiment) -> int:
    return sum(1 for n in exp.graph.nodes if n.__dict__["_dg_meta"] is None)


def assert_same_as_records(exp: dg.Experiment, directory: str) -> None:
    truth = records_of(directory)
    graph = exp.graph
    assert {n.sha() for n in graph.nodes} == set(truth)
    for node in graph.nodes:
        meta = truth[node.sha()]
        assert node.metadata == meta  # decoded from the index on first use
        assert node.tags == meta["tags"]
        assert (node.parent.sha() if node.parent else None) == meta["parent"]
        assert {c.sha() for c in node.children} == {s for s, m in truth.items() if m["parent"] == node.sha()}
        for name, value in meta["properties"].items():
            assert getattr(node, name) == value


@pytest.fixture
def many(exp_dir, layout):
    """Tags and properties with quotes and non-ASCII text, Function results, three levels (in each layout)."""
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name='mnist "small" ü', model_name="vgg-11")
    for i in range(12):
        with exp.tag(f"lr:{i % 6}", "débruité" if i % 2 else 'say "hi"'):
            s = TrainRecipe(nb_epochs=2, lr=0.01 * (i + 1))(root)
            eval_fn(s)
            TrainRecipe(nb_epochs=1, lr=0.5)(s)
    exp.run(progress=False)
    return exp_dir


def test_lazily_decoded_metadata_equals_every_record(many):
    exp, store = open_slim(many)
    assert exp.graph._index.lazy
    assert len(exp.graph) == 25
    assert undecoded(exp) == 25  # opening decodes no state's metadata ...
    assert store.reads.get("records", 0) == 0 and store.reads.get("meta", 0) == 0 and store.reads.get("states", 0) == 0
    assert_same_as_records(exp, many)
    assert undecoded(exp) == 0  # ... until it is used
    assert store.reads.get("records", 0) == 0 and store.reads.get("meta", 0) == 0  # all of it came from the index
    assert store.reads.get("states", 0) == 0  # and nothing was unpickled (nor a carried pickle read: records == 0)


def test_browsing_fields_match_the_records_without_decoding(many):
    truth = records_of(many)
    exp, _ = open_slim(many)
    graph = exp.graph
    nodes = graph.nodes
    assert [n.sha() for n in nodes.filter("débruité")] == [
        n.sha() for n in nodes if "débruité" in truth[n.sha()]["tags"]
    ]
    both = [n.sha() for n in nodes if {'say "hi"', "lr:2"} <= set(truth[n.sha()]["tags"])]
    assert [n.sha() for n in nodes.filter('say "hi"', "lr:2")] == both and len(both) == 4
    subset = nodes[1:20]  # a new set builds its own tag index from the index entries
    assert {n.sha() for n in subset.filter("!lr:3")} == {
        n.sha() for n in subset if "lr:3" not in truth[n.sha()]["tags"]
    }
    assert {n.sha() for n in graph.nodes_at_distance(2)} == {s for s, m in truth.items() if m["depth"] == 2}
    assert graph.root.sha() in truth and truth[graph.root.sha()]["parent"] is None
    depth_then_created = sorted(truth, key=lambda s: (truth[s]["depth"], truth[s]["created"]))
    assert [n.sha() for n in nodes] == depth_then_created
    assert undecoded(exp) == len(truth)  # none of this decoded any state's metadata
    assert len(graph.to_text().splitlines()) == len(truth)


def test_full_metadata_for_a_run_equals_the_records(many):
    records = rec.Records(LocalStore(many))
    assert records.load_all_meta() == records_of(many)


def test_damaged_metadata_in_the_index_falls_back_to_the_record(exp_dir, layout):
    listing2(exp_dir)
    path = os.path.join(exp_dir, rec.INDEX_KEY)
    raw = open(path, "rb").read()
    head, metas = raw.split(b',"metas":[', 1)
    states = json.loads(head.split(b',"columns":', 1)[0][len(idx._INDEX_HEAD) :])
    victim = next(iter(states))
    # same length, so every offset still holds: only the victim's record in the index is wrong
    metas = metas.replace(victim.encode(), victim[::-1].encode(), 1)
    with open(path, "wb") as f:
        f.write(head + b',"metas":[' + metas)
    exp, store = open_slim(exp_dir)
    assert exp.graph._index.lazy
    assert_same_as_records(exp, exp_dir)
    assert store.reads["records"] == 1  # only the damaged one was read from its record


def test_truncated_index_is_rebuilt(exp_dir, layout):
    listing2(exp_dir)
    path = os.path.join(exp_dir, rec.INDEX_KEY)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(raw[: len(raw) - 40])
    exp, store = open_slim(exp_dir)
    assert not exp.graph._index.lazy and store.reads["records"] == 5
    assert_same_as_records(exp, exp_dir)
    assert open_slim(exp_dir)[0].graph._index.lazy  # rewritten whole


def test_parent_missing_from_the_index(exp_dir, layout):
    exp, _ = listing2(exp_dir)
    truth = records_of(exp_dir)
    trained = next(s for s, m in truth.items() if m["depth"] == 1)
    records_io.remove(exp_dir, trained, truth[trained]["rev"])  # its meta/ file deleted, or its segment record gone
    first, _ = open_slim(exp_dir)  # stale: rebuilt without that state
    assert len(first.graph) == 4 and not first.graph._index.lazy
    exp, _ = open_slim(exp_dir)  # up to date: lazy, the orphan's parent read from its metadata
    assert exp.graph._index.lazy
    orphan = next(s for s, m in truth.items() if m["parent"] == trained)
    assert [n.sha() for n in exp.graph.children_of(trained)] == [orphan]
    assert {n.sha(): n.metadata for n in exp.graph.nodes} == records_of(exp_dir)
    assert len(exp.graph.to_text().splitlines()) == 5  # the orphan is listed apart, under a "broken lineage" line


def test_index_of_the_first_layout_is_used_then_rewritten(exp_dir, layout):
    listing2(exp_dir)
    truth = records_of(exp_dir)
    path = os.path.join(exp_dir, rec.INDEX_KEY)
    with open(path, "w") as f:
        json.dump({"format": 1, "states": truth}, f)  # full metadata per state
    exp, store = open_slim(exp_dir)
    assert store.reads.get("records", 0) == 0 and store.reads.get("meta", 0) == 0
    assert {n.sha(): n.metadata for n in exp.graph.nodes} == truth
    assert open(path, "rb").read().startswith(idx._INDEX_HEAD.encode())
    assert open_slim(exp_dir)[0].graph._index.lazy


def test_leftover_old_revision_keeps_the_index_in_use(exp_dir, layout):
    """A crash between writing a new revision and removing the old one leaves both: still one index read.

    (On segments a superseded record stays in its segment until compaction anyway.)
    """
    listing2(exp_dir)
    sha = next(iter(records_of(exp_dir)))
    first = records_io.read_json(exp_dir, sha, rec.FIRST_REV)
    records = rec.Records(LocalStore(exp_dir))
    newer = records.write_meta(records.read_meta(sha, rec.FIRST_REV), old_rev=rec.FIRST_REV)
    records.close()
    open_slim(exp_dir)  # the index is brought up to date with the newer revision
    # the older revision left beside it (its meta/ file, or a record in a segment)
    records_io.remove(exp_dir, sha, rec.FIRST_REV)
    records_io.add_record(exp_dir, sha, rec.FIRST_REV, json.dumps(first | {"tags": ["old"]}).encode())
    assert records_io.revs(exp_dir, sha) == [rec.FIRST_REV, newer]
    truth = records_of(exp_dir)
    assert truth[sha]["rev"] == newer and "old" not in truth[sha]["tags"]
    path = os.path.join(exp_dir, rec.INDEX_KEY)
    before = os.stat(path).st_mtime_ns
    exp, store = open_slim(exp_dir)
    assert exp.graph._index.lazy and store.reads.get("records", 0) == 0 and store.reads.get("meta", 0) == 0
    assert os.stat(path).st_mtime_ns == before  # not rewritten
    assert exp.graph.node(sha).metadata == truth[sha]
