"""One file per state: a small pickle travels in its state's first commit record.

The record is written atomically and last, so the state and its pickle appear
together or not at all. Before a newer revision replaces that record, the
pickle moves to its own file; readers look there first.
"""

from __future__ import annotations

import base64
import json
import os

import numpy as np
import pytest
from damage import edit_carried_pickle

import dagger as dg
from dagger.execution import _already_committed
from dagger.store import LocalStore
from dagger.store.maintenance import gc, verify
from dagger.store.records import FIRST_REV, INDEX_KEY, INLINE_FIELD, INLINE_MAX, Records, meta_key, state_key


class Small(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.w = np.arange(4, dtype=np.float64)
        self.big = np.ones(50_000)  # 400 kB: a blob, outside the pickle


class Add(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.w = state.w + self.k
        return state


class Grow(dg.Recipe):
    """Leaves a pickle larger than INLINE_MAX: a long list stays in the pickle (no buffer to take out)."""

    PROPERTIES = ["n"]

    def run(self, state):
        state.items = [float(i) for i in range(self.n)]
        return state


def mean_w(state):
    return float(state.w.mean())


def build(directory, tags=(), functions=(), k=(1.0, 2.0)):
    exp = dg.Experiment(directory, state_class=Small)
    root = exp.spawn_new_tree(name="t")
    kids = []
    with exp.tag(*tags):
        for value in k:
            child = Add(k=value)(root)
            for fn in functions:
                dg.Function(fn)(child)
            kids.append(child)
    return exp, root, kids


def files(directory, folder):
    out = []
    for dirpath, _, names in os.walk(os.path.join(directory, folder)):
        out.extend(os.path.join(dirpath, n) for n in names)
    return out


def record(directory, sha, rev=FIRST_REV):
    with open(os.path.join(directory, meta_key(sha, rev)), "rb") as f:
        return json.loads(f.read())


def test_a_small_state_is_committed_as_one_file_that_carries_its_pickle(exp_dir):
    exp, root, kids = build(exp_dir)
    exp.run(progress=False)
    shas = [root._sha] + [k._sha for k in kids]
    assert files(exp_dir, "states") == []  # no pickle file at all
    assert sorted(os.listdir(os.path.join(exp_dir, "meta"))) == sorted(f"{s}.{FIRST_REV}.json" for s in shas)
    records = Records(LocalStore(exp_dir))
    for sha in shas:
        carried = base64.b64decode(record(exp_dir, sha)[INLINE_FIELD])
        key, raw = records.read_pickle(sha)
        assert key == meta_key(sha, FIRST_REV) and raw == carried
        assert records.read_meta(sha, FIRST_REV)["pickle_bytes"] == len(carried)
        assert INLINE_FIELD not in records.read_meta(sha, FIRST_REV)  # metadata never shows it
    index = open(os.path.join(exp_dir, INDEX_KEY), "rb").read()
    assert b'"pickle":' not in index  # the index holds metadata only

    again = dg.Experiment.restore(exp_dir, state_class=Small)
    node = again.graph.node(kids[1]._sha)
    assert node.restore().w.tolist() == [2.0, 3.0, 4.0, 5.0]
    assert node.big.sum() == 50_000.0  # the blob the carried pickle names
    assert INLINE_FIELD not in node.metadata
    assert verify(again.records).ok


def test_a_large_pickle_keeps_its_own_file(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Small)
    root = exp.spawn_new_tree(name="t")
    grown = Grow(n=20_000)(root)
    exp.run(progress=False)
    path = os.path.join(exp_dir, state_key(grown._sha))
    assert os.path.getsize(path) > INLINE_MAX
    assert INLINE_FIELD not in record(exp_dir, grown._sha)  # its first record is metadata only
    assert INLINE_FIELD in record(exp_dir, root._sha)  # while the small root's carries its pickle
    restored = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(grown._sha).restore()
    assert restored.items[-1] == 19_999.0


def _only_revision(directory, sha):
    (name,) = [n for n in os.listdir(os.path.join(directory, "meta")) if n.startswith(sha)]
    return name.split(".")[1]


@pytest.mark.parametrize("change", ["tags", "functions"])
def test_a_newer_revision_first_gives_the_pickle_its_own_file(exp_dir, change):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    carried = base64.b64decode(record(exp_dir, sha)[INLINE_FIELD])

    if change == "tags":
        exp2, _, kids2 = build(exp_dir, tags=("best",))
    else:
        exp2, _, kids2 = build(exp_dir, functions=(mean_w,))
    report = exp2.run(progress=False)
    assert report.computed == []  # nothing recomputed: only metadata changed

    rev = _only_revision(exp_dir, sha)
    assert rev > FIRST_REV  # the first record is gone, replaced by a newer revision
    with open(os.path.join(exp_dir, state_key(sha)), "rb") as f:
        assert f.read() == carried  # which it handed its pickle first, byte for byte
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha)
    if change == "tags":
        assert node.tags == ["best"]
    else:
        assert node.results["mean_w"] == 2.5
    assert node.restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert verify(exp2.records).ok


def test_committed_meanwhile_is_seen_before_and_after_the_pickle_moves(exp_dir):
    exp, root, kids = build(exp_dir)
    records = Records(LocalStore(exp_dir))
    assert _already_committed(records, kids[0]._sha) is None  # nothing yet
    exp.run(progress=False)
    found = _already_committed(records, kids[0]._sha)
    assert found is not None and found["rev"] == FIRST_REV and INLINE_FIELD not in found

    exp2, _, _ = build(exp_dir, tags=("later",))
    exp2.run(progress=False)  # a newer revision: the first record is gone, the pickle has its file
    assert not os.path.exists(os.path.join(exp_dir, meta_key(kids[0]._sha, FIRST_REV)))
    found = _already_committed(records, kids[0]._sha)
    assert found is not None and found["tags"] == ["later"]


class _MovesOutDuringRead(LocalStore):
    """A store where another process moves a pickle out of its first record just as we look for it."""

    def __init__(self, path):
        super().__init__(path)
        self.moved = False

    def get(self, key):
        if key.endswith(f".{FIRST_REV}.json") and not self.moved:
            self.moved = True
            other = Records(LocalStore(self.root))
            sha = key.removeprefix("meta/").split(".")[0]
            other.externalize_pickle(sha)
            os.remove(os.path.join(self.root, key))  # ...and its newer revision replaced the record
        return super().get(key)


def test_a_reader_that_misses_both_while_the_pickle_moves_finds_its_file(exp_dir):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    store = _MovesOutDuringRead(exp_dir)
    key, raw = Records(store).read_pickle(kids[1]._sha)
    assert store.moved and key == state_key(kids[1]._sha)
    assert Records(store).load_pickle(kids[1]._sha).w.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_gc_keeps_blobs_named_only_by_carried_pickles(exp_dir):
    exp, root, kids = build(exp_dir)
    exp.run(progress=False)
    blobs_before = sorted(files(exp_dir, "blobs"))
    assert blobs_before and files(exp_dir, "states") == []

    report = gc(Records(LocalStore(exp_dir)))
    assert sorted(files(exp_dir, "blobs")) == blobs_before, report  # every blob is in use
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(kids[0]._sha)
    assert node.restore().big.sum() == 50_000.0


def _crash_after_a_newer_revision(directory):
    """A state's newer revision written, the first one (which carries the pickle) not yet removed: as a crash leaves it."""
    exp, _, kids = build(directory)
    exp.run(progress=False)
    sha = kids[0]._sha
    newer = record(directory, sha)
    del newer[INLINE_FIELD]
    newer["tags"] = ["newer"]
    with open(os.path.join(directory, meta_key(sha, "18ec58154f890a658438")), "w") as f:
        json.dump(newer, f)
    assert not os.path.exists(os.path.join(directory, state_key(sha)))
    return sha


def test_gc_gives_the_pickle_its_file_before_removing_a_superseded_first_record(exp_dir):
    sha = _crash_after_a_newer_revision(exp_dir)

    report = gc(Records(LocalStore(exp_dir)))
    assert report.counts()["meta_revisions"] == 1
    assert not os.path.exists(os.path.join(exp_dir, meta_key(sha, FIRST_REV)))
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha)
    assert node.tags == ["newer"]
    assert node.restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_gc_dry_run_moves_nothing(exp_dir):
    sha = _crash_after_a_newer_revision(exp_dir)
    gc(Records(LocalStore(exp_dir)), dry_run=True)
    assert os.path.exists(os.path.join(exp_dir, meta_key(sha, FIRST_REV)))
    assert not os.path.exists(os.path.join(exp_dir, state_key(sha)))


def test_a_damaged_carried_pickle_is_named_by_restore_and_verify(exp_dir):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha

    def flip(raw):
        damaged = bytearray(raw)
        damaged[-3] ^= 0x01
        return bytes(damaged)

    edit_carried_pickle(exp_dir, sha, flip)
    key = meta_key(sha, FIRST_REV)
    with pytest.raises(dg.CorruptRecordError) as info:
        dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).restore()
    assert key in str(info.value) and "does not match its checksum" in str(info.value)
    problems = verify(Records(LocalStore(exp_dir))).problems
    assert [(p.state, p.file) for p in problems] == [(sha, key)]


def test_a_carried_pickle_that_is_not_base64_is_a_corrupt_record(exp_dir):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    path = os.path.join(exp_dir, meta_key(sha, FIRST_REV))
    broken = record(exp_dir, sha)
    broken[INLINE_FIELD] = "not base64 at all!"
    with open(path, "w") as f:
        json.dump(broken, f)
    with pytest.raises(dg.CorruptRecordError, match="not valid base64"):
        dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).restore()
    problems = verify(Records(LocalStore(exp_dir))).problems
    assert [(p.state, p.file) for p in problems] == [(sha, meta_key(sha, FIRST_REV))]
    assert "not valid base64" in problems[0].message


def test_a_memory_store_commits_one_object_per_state(tmp_path):
    directory = f"memory://{tmp_path.name}/exp"
    exp, root, kids = build(directory)
    exp.run(progress=False)
    keys = exp.store.list("")
    assert not [k for k in keys if k.startswith("states/")]
    assert sorted(k for k in keys if k.startswith("meta/")) == sorted(
        meta_key(s, FIRST_REV) for s in [root._sha] + [k._sha for k in kids]
    )
    restored = dg.Experiment.restore(directory, state_class=Small).graph.node(kids[1]._sha).restore()
    assert restored.w.tolist() == [2.0, 3.0, 4.0, 5.0]


def test_a_pending_pickle_written_over_a_first_record_gets_its_own_file(exp_dir):
    """A replacing commit (on_code_change="rerun") never leaves its pickle in a record readers skip."""
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    records = Records(LocalStore(exp_dir))
    old = records.read_meta(sha, FIRST_REV)
    state = records.load_pickle(sha)
    state.w = state.w * 10
    meta = {k: v for k, v in old.items() if k != "rev"}
    meta.update(records.save_pickle(sha, state, inline=True))
    rev = records.write_meta(meta, old_rev=FIRST_REV)
    assert rev > FIRST_REV and INLINE_FIELD not in record(exp_dir, sha, rev)
    assert _only_revision(exp_dir, sha) == rev
    records.forget_recent()
    assert records.read_pickle(sha)[0] == state_key(sha)
    assert records.load_pickle(sha).w.tolist() == [10.0, 20.0, 30.0, 40.0]  # the new pickle, not the carried one
