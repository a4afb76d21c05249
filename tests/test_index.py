"""index.json is derived: missing, corrupt or stale, restore still sees exactly the stored states."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import records_io
from indexdefs import CountingStore, count_records
from indexdefs import records_of as truth
from paperdefs import listing2

import dagger as dg
from dagger.store import LocalStore
from dagger.store import index as idx
from dagger.store import records as rec
from dagger.store.segments import fingerprint as segments_fingerprint

HERE = os.path.dirname(__file__)


def index_states(directory: str) -> dict[str, dict]:
    with open(os.path.join(directory, rec.INDEX_KEY), "rb") as f:
        return json.loads(f.read())["states"]


@pytest.fixture(autouse=True)
def _count_records(monkeypatch):
    count_records(monkeypatch)


def restored(directory: str) -> tuple[dict[str, dict], CountingStore]:
    store = CountingStore(directory)
    exp = dg.Experiment.restore(store)
    return {n.sha(): n.metadata for n in exp.graph.nodes}, store


def assert_consistent(directory: str) -> CountingStore:
    expected = truth(directory)
    seen, store = restored(directory)
    assert seen.keys() == expected.keys()
    for sha, meta in expected.items():
        assert seen[sha]["rev"] == meta["rev"]
        assert seen[sha]["tags"] == meta["tags"]
        assert seen[sha].get("results") == meta.get("results")
    # and the index on disk was rewritten to match
    on_disk = index_states(directory)
    assert {sha: m["rev"] for sha, m in on_disk.items()} == {sha: m["rev"] for sha, m in expected.items()}
    return store


@pytest.fixture
def stored(exp_dir, layout):
    """Listing 2's experiment, in each layout: the index is refreshed from meta/ files or from segments."""
    listing2(exp_dir)
    return exp_dir


def test_fresh_index_reads_no_metadata_file(stored):
    store = assert_consistent(stored)
    assert store.reads.get("records", 0) == 0 and store.reads.get("meta", 0) == 0
    assert store.reads[rec.INDEX_KEY] == 1
    assert len(truth(stored)) == 5


def test_index_holds_each_commit_record_as_written(stored):
    # The index embeds the text of the commit records written in the run (plus their rev),
    # rather than encoding the metadata again: it must equal each record read back.
    with open(os.path.join(stored, rec.INDEX_KEY), "rb") as f:
        metas = json.loads(f.read())["metas"]
    expected = truth(stored)
    assert {m["sha"]: m for m in metas} == expected
    assert any(m.get("results") for m in metas)  # with the records that Functions rewrote


class Chain(dg.ExperimentState):
    PROPERTIES = ["name"]


class Step(dg.Recipe):
    PROPERTIES = ["i"]

    def run(self, state):
        return state


def chain(exp_dir, n=30, tag=None):
    exp = dg.Experiment(exp_dir, state_class=Chain)
    node = exp.spawn_new_tree(name="x")
    for i in range(n):
        if tag is not None and i == n - 1:
            with exp.tag(tag):
                node = Step(i=i)(node)
        else:
            node = Step(i=i)(node)
    return exp


def test_the_index_of_a_run_embeds_the_records_written_without_encoding_them_again(exp_dir, monkeypatch):
    exp = chain(exp_dir)
    encoded = []
    inside = []
    real_index_bytes, real_encoder = rec.index_bytes, idx._JSON

    class Counting(json.JSONEncoder):
        def encode(self, obj):
            if inside:
                encoded.append(obj)
            return real_encoder.encode(obj)

    def index_bytes(metas, written=None, segments=None):
        inside.append(True)
        try:
            return real_index_bytes(metas, written, segments)
        finally:
            inside.clear()

    monkeypatch.setattr(idx, "_JSON", Counting())
    monkeypatch.setattr(rec, "index_bytes", index_bytes)
    exp.run()
    assert 0 < len(encoded) < 10  # the head and columns; not one encoding per state (31)
    with open(os.path.join(exp_dir, rec.INDEX_KEY), "rb") as f:
        assert {m["sha"]: m for m in json.loads(f.read())["metas"]} == truth(exp_dir)


def test_only_a_process_that_writes_the_index_keeps_the_records_text(exp_dir):
    # A cluster worker writes commit records but never the index: it must not gather their text.
    worker = rec.Records(LocalStore(exp_dir))
    worker.write_meta({"sha": "a" * 64, "format": 1})
    assert worker.take_written() == {}
    client = rec.Records(LocalStore(exp_dir))
    client.keep_written = True
    rev = client.write_meta({"sha": "b" * 64, "format": 1})
    assert client.take_written() == {"b" * 64: (rev, '{"sha":"' + "b" * 64 + '","format":1}')}
    assert client.take_written() == {}  # taken once


def test_a_fully_cached_rerun_decodes_no_metadata_until_its_report_is_read(exp_dir, monkeypatch):
    first = chain(exp_dir).run()
    decoded = []
    real = rec.SlimIndex.meta
    monkeypatch.setattr(rec.SlimIndex, "meta", lambda self, sha: decoded.append(sha) or real(self, sha))
    report = chain(exp_dir).run()  # existence, tags and recipe sources come from the index's columns
    assert decoded == []
    assert len(report.cached) == 31 and not report.computed  # reading the rows decodes their stored runs
    assert {s.sha: s.stored_run["duration"] for s in report.cached} == {s.sha: s.duration for s in first.computed}
    assert len(decoded) == 31


def test_a_cached_state_whose_tags_changed_is_decoded_and_retagged(exp_dir):
    chain(exp_dir).run()
    chain(exp_dir, tag="best").run()
    seen, _ = restored(exp_dir)
    assert [m["tags"] for m in seen.values() if m["tags"]] == [["best"]]
    assert_consistent(exp_dir)


def test_an_index_without_the_source_column_reads_sources_from_the_metadata(exp_dir):
    import re

    chain(exp_dir).run()
    records = rec.Records(LocalStore(exp_dir))
    with open(os.path.join(exp_dir, rec.INDEX_KEY), "rb") as f:
        raw = f.read()
    current = rec.SlimIndex.parse(records, raw)
    older = rec.SlimIndex.parse(records, re.sub(rb',"sources":\[[^\]]*\],"src":\[[^\]]*\]', b"", raw, count=1))
    assert current.lazy and current.src is not None
    assert older.lazy and older.src is None  # as written by a dagger before the column
    expected = {sha: m["recipe"]["source"] if "recipe" in m else None for sha, m in truth(exp_dir).items()}
    assert len(set(expected.values()) - {None}) == 1
    assert {sha: current.source(sha) for sha in expected} == expected
    assert {sha: older.source(sha) for sha in expected} == expected
    assert older.decoded and not current.decoded  # only the older one had to decode the metadata


def assert_index_as_if_rebuilt(directory):
    """The index on disk says exactly what one written from every commit record would."""
    with open(os.path.join(directory, rec.INDEX_KEY), "rb") as f:
        on_disk = json.loads(f.read())
    rebuilt = json.loads(rec.index_bytes(truth(directory).values()))
    assert list(on_disk["states"]) == list(rebuilt["states"])  # same order
    assert {k: v["rev"] for k, v in on_disk["states"].items()} == {k: v["rev"] for k, v in rebuilt["states"].items()}
    # (an all-segments folder's index also keeps the segments' fingerprint: it must be the current one)
    fingerprint = on_disk["columns"].pop("segments", None)
    assert fingerprint in (None, segments_fingerprint(LocalStore(directory)))
    assert on_disk["columns"] == rebuilt["columns"]
    assert on_disk["metas"] == rebuilt["metas"]


def extend(exp_dir, steps=(100,), tag=None):
    exp = chain(exp_dir, tag=tag)
    last = list(exp._promises.values())[-1]  # the chain's last state
    for i in steps:
        last = Step(i=i)(last)
    return exp


def test_adding_states_copies_the_unchanged_ones_into_the_index_as_text(exp_dir, monkeypatch):
    chain(exp_dir, tag="first").run()  # a stored tag, which the next definition does not repeat
    decoded = []
    real = rec.SlimIndex.meta
    monkeypatch.setattr(rec.SlimIndex, "meta", lambda self, sha: decoded.append(sha) or real(self, sha))
    report = extend(exp_dir, steps=(100, 101)).run()
    assert decoded == []  # the 31 stored states were neither decoded nor encoded again
    assert len(report.computed) == 2  # (reading the report decodes the cached states' stored runs)
    assert_index_as_if_rebuilt(exp_dir)
    assert_consistent(exp_dir)
    assert [m["tags"] for m in restored(exp_dir)[0].values() if m["tags"]] == [["first"]]


def test_adding_states_and_retagging_one_keeps_the_index_exact(exp_dir):
    chain(exp_dir).run()
    extend(exp_dir, steps=(100,), tag="late").run()  # the chain's last state is re-tagged
    seen, _ = restored(exp_dir)
    assert [m["tags"] for m in seen.values() if m["tags"]] == [["late"]]
    assert_index_as_if_rebuilt(exp_dir)


def edit_index(directory, edit):
    """Replace index.json by ``edit(its bytes)``."""
    path = os.path.join(directory, rec.INDEX_KEY)
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(edit(raw))


def test_an_index_entry_that_does_not_check_out_is_not_copied(exp_dir):
    chain(exp_dir).run()

    def damage(raw):
        victim = json.loads(raw)["metas"][5]["sha"]
        damaged = raw.replace(f'"sha":"{victim}","parent"'.encode(), f'"sha":"{"f" * 64}","parent"'.encode(), 1)
        assert damaged != raw and len(damaged) == len(raw)  # same layout: only its text is wrong
        return damaged

    edit_index(exp_dir, damage)
    extend(exp_dir).run()
    assert_index_as_if_rebuilt(exp_dir)


def test_an_index_without_the_source_column_is_rewritten_whole(exp_dir):
    import re

    chain(exp_dir).run()
    edit_index(exp_dir, lambda raw: re.sub(rb',"sources":\[[^\]]*\],"src":\[[^\]]*\]', b"", raw, count=1))
    extend(exp_dir).run()
    path = os.path.join(exp_dir, rec.INDEX_KEY)
    assert_index_as_if_rebuilt(exp_dir)
    with open(path, "rb") as f:
        assert json.loads(f.read())["columns"]["src"]  # written again, with the column


def test_missing_index_is_rebuilt(stored):
    os.remove(os.path.join(stored, rec.INDEX_KEY))
    store = assert_consistent(stored)
    assert store.reads["records"] == 5
    assert os.path.exists(os.path.join(stored, rec.INDEX_KEY))
    assert restored(stored)[1].reads.get("records", 0) == 0  # and the next restore uses it


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00\xff\x13garbage",
        b'{"format": 1, "states": {"ab',  # truncated
        b"[1, 2, 3]",
        b'{"format": 1, "states": [1, 2]}',
        b'{"format": 999, "states": {}}',
        b'{"format": 1, "states": {"' + b"a" * 64 + b'": {"sha": "x", "rev": "0"}}}',  # a state that does not exist
    ],
)
def test_corrupt_index_is_rebuilt(stored, garbage):
    with open(os.path.join(stored, rec.INDEX_KEY), "wb") as f:
        f.write(garbage)
    assert_consistent(stored)
    assert len(index_states(stored)) == 5


def test_index_entry_with_wrong_content_but_stale_rev_is_replaced(stored):
    index = json.loads(open(os.path.join(stored, rec.INDEX_KEY), "rb").read())
    sha = next(iter(index["states"]))
    index["states"][sha]["tags"] = ["forged"]
    # A revision the listing does not have (a first record's FIRST_REV is the lowest: none is older).
    index["states"][sha]["rev"] = rec.new_rev()
    with open(os.path.join(stored, rec.INDEX_KEY), "w") as f:
        json.dump(index, f)
    store = assert_consistent(stored)
    assert store.reads["records"] == 1  # only the stale entry is re-read
    assert "forged" not in json.dumps(index_states(stored))


def _run_elsewhere(directory: str, body: str) -> None:
    """Run ``body`` in another Python process (another writer of the same experiment)."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, {here!r})
        import dagger as dg
        from paperdefs import State, TrainRecipe, PruneRecipe, eval_fn
        directory = {directory!r}
        """
    ).format(here=HERE, directory=directory) + textwrap.dedent(body)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=60)


def test_state_added_by_another_process_is_seen(stored):
    old_index = open(os.path.join(stored, rec.INDEX_KEY), "rb").read()
    _run_elsewhere(
        stored,
        """
        exp = dg.Experiment(directory, state_class=State)
        root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
        with exp.tag("added"):
            TrainRecipe(nb_epochs=3, lr=0.5)(root)
        exp.run(progress=False)
        """,
    )
    # that process updated the index; put the old one back, as if it had died before writing it
    with open(os.path.join(stored, rec.INDEX_KEY), "wb") as f:
        f.write(old_index)
    assert len(json.loads(old_index)["states"]) == 5
    store = assert_consistent(stored)
    assert store.reads["records"] == 1  # only the new record is read
    seen, _ = restored(stored)
    assert len(seen) == 6
    assert [m["tags"] for m in seen.values() if "added" in m["tags"]] == [["added"]]


def test_meta_revision_replaced_by_another_process_is_seen(stored):
    old_index = open(os.path.join(stored, rec.INDEX_KEY), "rb").read()
    before = truth(stored)
    _run_elsewhere(
        stored,
        """
        exp = dg.Experiment(directory, state_class=State)
        root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
        with exp.tag("retagged"):
            s = TrainRecipe(nb_epochs=100, lr=0.1)(root)
        exp.run(progress=False)
        """,
    )
    with open(os.path.join(stored, rec.INDEX_KEY), "wb") as f:
        f.write(old_index)
    after = truth(stored)
    changed = [sha for sha in after if after[sha]["rev"] != before[sha]["rev"]]
    assert len(changed) == 1 and after.keys() == before.keys()
    # the superseded revision is gone from the listing, and the index still names it
    assert json.loads(old_index)["states"][changed[0]]["rev"] == before[changed[0]]["rev"]
    store = assert_consistent(stored)
    assert store.reads["records"] == 1  # only the new record is read
    seen, _ = restored(stored)
    assert "retagged" in seen[changed[0]]["tags"]


def test_state_removed_behind_the_index_disappears(stored):
    records = rec.Records(LocalStore(stored))
    leaf = max(truth(stored).values(), key=lambda m: m["depth"])
    records_io.remove(stored, leaf["sha"], leaf["rev"])  # its meta/ file deleted, or its segment record gone
    assert leaf["sha"] in index_states(stored)
    assert_consistent(stored)
    assert leaf["sha"] not in index_states(stored)
    assert leaf["sha"] not in records.committed()


def test_unwritable_index_is_not_fatal(stored, monkeypatch):
    os.remove(os.path.join(stored, rec.INDEX_KEY))
    os.mkdir(os.path.join(stored, rec.INDEX_KEY))  # index.json cannot be written as a file
    seen, _ = restored(stored)
    assert seen.keys() == truth(stored).keys()
