"""One file per state: a small pickle travels in its state's first commit record.

The record is written atomically and last, so the state and its pickle appear
together or not at all. Before a newer revision replaces that record, the
pickle moves to its own file; readers look there first. The record is a
``meta/`` file or a segment record: tests that hold in either layout reach it
through ``records_io``; tests of the ``meta/`` files themselves ask for
``files_layout``.
"""

from __future__ import annotations

import base64
import errno
import json
import os

import numpy as np
import pytest
import records_io
from damage import edit_carried_pickle

import dagger as dg
from dagger.execution import _already_committed
from dagger.store import LocalStore
from dagger.store.maintenance import gc, verify
from dagger.store.records import (
    FIRST_REV,
    INDEX_KEY,
    INLINE_FIELD,
    INLINE_MAX,
    NEWEST_FORMAT,
    SEGMENT_FORMAT,
    STORE_FORMAT,
    Records,
    meta_key,
    state_key,
)


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


def build_apart(directory, **kwargs):
    """:func:`build` through a store object of its own: this process keeps nothing of its run (no
    segment writer, no reader's cache) for later runs on ``directory``, which then find the folder
    as the test left it, as a new process would."""
    return build(LocalStore(directory), **kwargs)


def files(directory, folder):
    out = []
    for dirpath, _, names in os.walk(os.path.join(directory, folder)):
        out.extend(os.path.join(dirpath, n) for n in names)
    return out


def record(directory, sha, rev=FIRST_REV):
    """``sha``'s commit record at ``rev`` as stored (with the pickle it carries), in either layout."""
    return records_io.read_json(directory, sha, rev)


def current_revision(directory, sha):
    """The revision of ``sha`` that readers see. Where records are ``meta/`` files, also checks that
    the replaced ones are gone (in a segment a replaced record stays, shadowed, until compaction)."""
    rev = records_io.newest_rev(directory, sha)
    if not records_io.in_segments(directory, sha, rev):
        assert records_io.revs(directory, sha) == [rev]
    return rev


def carries_pickle(directory, sha):
    """Whether readers (a fresh process) find ``sha``'s pickle in its first commit record."""
    return Records(LocalStore(directory)).carries_pickle(sha)


def test_a_small_state_is_committed_as_one_file_that_carries_its_pickle(exp_dir, layout):
    exp, root, kids = build(exp_dir)
    exp.run(progress=False)
    shas = [root._sha] + [k._sha for k in kids]
    assert files(exp_dir, "states") == []  # no pickle file at all
    assert records_io.every_sha(exp_dir) == sorted(shas)
    assert all(records_io.revs(exp_dir, s) == [FIRST_REV] for s in shas)  # one record per state
    if layout == "files":
        assert sorted(os.listdir(os.path.join(exp_dir, "meta"))) == sorted(f"{s}.{FIRST_REV}.json" for s in shas)
    else:
        assert not os.path.exists(os.path.join(exp_dir, "meta"))
    records = Records(LocalStore(exp_dir))
    for sha in shas:
        carried = base64.b64decode(record(exp_dir, sha)[INLINE_FIELD])
        key, raw = records.read_pickle(sha)
        assert key == records_io.label(exp_dir, sha, FIRST_REV) and raw == carried
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


@pytest.mark.parametrize("change", ["tags", "functions"])
def test_a_newer_revision_first_gives_the_pickle_its_own_file(exp_dir, change, layout):
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

    rev = current_revision(exp_dir, sha)
    assert rev > FIRST_REV  # the first record is gone, replaced by a newer revision
    assert not carries_pickle(exp_dir, sha)
    with open(os.path.join(exp_dir, state_key(sha)), "rb") as f:
        assert f.read() == carried  # which it handed its pickle first, byte for byte
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha)
    if change == "tags":
        assert node.tags == ["best"]
    else:
        assert node.results["mean_w"] == 2.5
    assert node.restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert verify(exp2.records).ok


def test_committed_meanwhile_is_seen_before_and_after_the_pickle_moves(exp_dir, layout):
    exp, root, kids = build(exp_dir)
    records = Records(LocalStore(exp_dir))
    assert _already_committed(records, kids[0]._sha) == (None, False)  # nothing yet, no file
    exp.run(progress=False)
    found, _ = _already_committed(records, kids[0]._sha)
    assert found is not None and found["rev"] == FIRST_REV and INLINE_FIELD not in found

    exp2, _, _ = build(exp_dir, tags=("later",))
    exp2.run(progress=False)  # a newer revision: the first record is gone, the pickle has its file
    assert current_revision(exp_dir, kids[0]._sha) > FIRST_REV and not carries_pickle(exp_dir, kids[0]._sha)
    found, _ = _already_committed(records, kids[0]._sha)  # seen through the pickle file
    assert found is not None and found["tags"] == ["later"]
    assert os.path.exists(os.path.join(exp_dir, state_key(kids[0]._sha)))

    Records(LocalStore(exp_dir)).remove_records(kids[0]._sha)  # as another process deletes them
    assert _already_committed(records, kids[0]._sha) == (None, True)  # not committed: a leftover file


class _MovesOutDuringRead(LocalStore):
    """A store where another process moves a pickle out of its first record just after we found no
    pickle file, and before we look in that record."""

    def __init__(self, path):
        super().__init__(path)
        self.moved = False

    def get(self, key):
        try:
            return super().get(key)
        except FileNotFoundError:
            if key.startswith("states/") and not self.moved:
                self.moved = True
                other = Records(LocalStore(self.root))
                sha = key.rsplit("/", 1)[-1].removesuffix(".pkl")
                # A newer revision replaces the first record: the pickle moves to its file first.
                other.write_meta(other.read_meta(sha, FIRST_REV), old_rev=FIRST_REV)
                other.close()
            raise


def test_a_reader_that_misses_both_while_the_pickle_moves_finds_its_file(exp_dir, layout):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    store = _MovesOutDuringRead(exp_dir)
    key, raw = Records(store).read_pickle(kids[1]._sha)
    assert store.moved and key == state_key(kids[1]._sha)
    assert records_io.newest_rev(exp_dir, kids[1]._sha) > FIRST_REV  # the record it missed was replaced
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
    """A state's newer revision written, the first one (which carries the pickle) not yet removed: as a crash leaves it.

    ``meta/`` files only: gc removes a superseded first record's file there, once it gave the pickle
    its file. (In segments a newer record is appended only after the pickle has its file, and
    superseded records go by compaction, unread.)
    """
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


def test_gc_gives_the_pickle_its_file_before_removing_a_superseded_first_record(exp_dir, files_layout):
    # Of superseded meta/ files (see _crash_after_a_newer_revision).
    sha = _crash_after_a_newer_revision(exp_dir)

    report = gc(Records(LocalStore(exp_dir)))
    assert report.counts()["meta_revisions"] == 1
    assert not os.path.exists(os.path.join(exp_dir, meta_key(sha, FIRST_REV)))
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha)
    assert node.tags == ["newer"]
    assert node.restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_gc_dry_run_moves_nothing(exp_dir, files_layout):
    # Of superseded meta/ files (see _crash_after_a_newer_revision).
    sha = _crash_after_a_newer_revision(exp_dir)
    gc(Records(LocalStore(exp_dir)), dry_run=True)
    assert os.path.exists(os.path.join(exp_dir, meta_key(sha, FIRST_REV)))
    assert not os.path.exists(os.path.join(exp_dir, state_key(sha)))


def test_a_damaged_carried_pickle_is_named_by_restore_and_verify(exp_dir, layout):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha

    def flip(raw):
        damaged = bytearray(raw)
        damaged[-3] ^= 0x01
        return bytes(damaged)

    key = edit_carried_pickle(exp_dir, sha, flip)
    assert key == records_io.label(exp_dir, sha, FIRST_REV)
    with pytest.raises(dg.CorruptRecordError) as info:
        dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).restore()
    assert key in str(info.value) and "does not match its checksum" in str(info.value)
    problems = verify(Records(LocalStore(exp_dir))).problems
    assert [(p.state, p.file) for p in problems] == [(sha, key)]


def test_a_carried_pickle_that_is_not_base64_is_a_corrupt_record(exp_dir, layout):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    where = records_io.edit_json(exp_dir, sha, lambda r: r.update({INLINE_FIELD: "not base64 at all!"}), FIRST_REV)
    with pytest.raises(dg.CorruptRecordError, match="not valid base64") as info:
        dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).restore()
    assert where in str(info.value)
    problems = verify(Records(LocalStore(exp_dir))).problems
    assert [(p.state, p.file) for p in problems] == [(sha, where)]
    assert "not valid base64" in problems[0].message


def test_a_memory_store_commits_one_object_per_state(tmp_path, files_layout):
    # Store objects per state: one meta/ object each (in segments, records go in batches).
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


def test_a_pending_pickle_written_over_a_first_record_gets_its_own_file(exp_dir, layout):
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
    assert current_revision(exp_dir, sha) == rev and not carries_pickle(exp_dir, sha)
    records.forget_recent()
    assert records.read_pickle(sha)[0] == state_key(sha)
    assert records.load_pickle(sha).w.tolist() == [10.0, 20.0, 30.0, 40.0]  # the new pickle, not the carried one


# ---- the layout mark, leftovers, races --------------------------------------------------------


def _experiment_format(directory):
    with open(os.path.join(directory, "experiment.json"), "rb") as f:
        return json.loads(f.read())["format"]


def test_a_new_experiment_says_its_layout_and_an_older_one_is_marked_before_its_first_carried_pickle(exp_dir, layout):
    marked = STORE_FORMAT if layout == "files" else SEGMENT_FORMAT  # (segment records carry pickles too)
    exp, _, _ = build_apart(exp_dir)
    exp.run(progress=False)
    assert _experiment_format(exp_dir) == marked and (STORE_FORMAT, SEGMENT_FORMAT) == (2, 3)

    # An experiment begun by an older dagger (layout 1: a pickle file for every state)...
    path = os.path.join(exp_dir, "experiment.json")
    with open(path, "rb") as f:
        info = json.loads(f.read())
    info["format"] = 1
    with open(path, "w") as f:
        json.dump(info, f)
    again, _, _ = build(exp_dir)
    assert again.run(progress=False).computed == []
    assert _experiment_format(exp_dir) == 1  # nothing written, nothing marked
    grown, _, _ = build(exp_dir, k=(1.0, 2.0, 3.0))
    grown.run(progress=False)  # ...is marked once it holds a record that carries a pickle
    assert _experiment_format(exp_dir) == marked


def test_a_folder_of_a_newer_layout_is_refused(exp_dir):
    exp, _, _ = build(exp_dir)
    exp.run(progress=False)
    path = os.path.join(exp_dir, "experiment.json")
    with open(path, "rb") as f:
        info = json.loads(f.read())
    info["format"] = NEWEST_FORMAT + 1  # (layout 3, segments, is read since issue 21)
    with open(path, "w") as f:
        json.dump(info, f)
    with pytest.raises(dg.FormatVersionError, match="newer dagger"):
        dg.Experiment(exp_dir, state_class=Small)


@pytest.mark.parametrize("how", ["damaged then recomputed", "left by a killed run"])
def test_a_leftover_pickle_file_is_written_over_when_the_state_is_computed(exp_dir, how, layout):
    """Readers look at a pickle file first: a recomputed state never leaves a stale one in front of its own."""
    exp, _, kids = build_apart(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    path = os.path.join(exp_dir, state_key(sha))
    records = Records(LocalStore(exp_dir))
    if how == "damaged then recomputed":
        records.externalize_pickle(sha)
        with open(path, "rb") as f:
            raw = bytearray(f.read())
        raw[-3] ^= 0x01  # the damage `verify` finds; its hint: delete the state's records and run again
        with open(path, "wb") as f:
            f.write(raw)
    else:  # a complete, valid pickle of other values (other code), whose run was killed before its commit
        other = records.load_pickle(sha)
        other.w = other.w + 99
        records.save_pickle(sha, other)
    records_io.remove(exp_dir, sha)  # its records gone, as if never written (a killed run) or deleted by hand

    again, _, kids2 = build(exp_dir)
    assert [s.sha for s in again.run(progress=False).computed] == [sha]
    assert INLINE_FIELD not in record(exp_dir, sha)  # the new pickle went to the file, over the old one
    node = dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha)
    assert node.restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert verify(again.records).ok


class _FileAppearsMeanwhile(LocalStore):
    """Another process writes the pickle file after this one found none, just as this one starts writing it."""

    def __init__(self, path, planted):
        super().__init__(path)
        self.planted = planted

    def _begin(self, key):
        if key.startswith("states/") and self.planted is not None:
            LocalStore(self.root).put(key, self.planted)
            self.planted = None
        return super()._begin(key)


def test_moving_a_pickle_out_never_replaces_a_file_written_meanwhile(exp_dir):
    """A rerun in another process (on_code_change="rerun") wrote the state's new pickle: it stays."""
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    newer = b'{"format":1,"blobs":[]}\n' + b"the rerun's pickle"
    store = _FileAppearsMeanwhile(exp_dir, newer)
    Records(store).externalize_pickle(sha)
    assert store.planted is None  # the other writer did get in between
    with open(os.path.join(exp_dir, state_key(sha)), "rb") as f:
        assert f.read() == newer


def test_put_if_absent_on_a_local_folder_is_one_atomic_step(tmp_path):
    store = LocalStore(str(tmp_path))
    assert store.put_if_absent("states/ab/x.pkl", b"first") is True
    assert store.put_if_absent("states/ab/x.pkl", b"second") is False
    assert store.get("states/ab/x.pkl") == b"first"
    assert os.listdir(tmp_path / "tmp") == []  # the temporary file is gone either way


def test_the_size_bound_counts_the_header_too(exp_dir):
    """A pickle that names many blobs has a long header: the record stays within INLINE_MAX all the same."""

    class ManyBlobs(dg.Recipe):
        PROPERTIES = ["n"]

        def run(self, state):
            state.parts = [np.full(8192, float(i)) for i in range(self.n)]  # 64 KiB each: a blob each
            return state

    exp = dg.Experiment(exp_dir, state_class=Small)
    root = exp.spawn_new_tree(name="t")
    many = ManyBlobs(n=200)(root)
    exp.run(progress=False)
    meta = exp.records.read_meta(many._sha, FIRST_REV)
    assert len(meta["blobs"]) >= 200 and meta["pickle_bytes"] > INLINE_MAX
    assert INLINE_FIELD not in record(exp_dir, many._sha)
    assert os.path.getsize(os.path.join(exp_dir, state_key(many._sha))) == meta["pickle_bytes"]


def test_gc_keeps_an_unreadable_first_record_that_may_carry_the_only_pickle(exp_dir, files_layout):
    # Of superseded meta/ files (see _crash_after_a_newer_revision).
    sha = _crash_after_a_newer_revision(exp_dir)
    first = os.path.join(exp_dir, meta_key(sha, FIRST_REV))
    with open(first, "rb") as f:
        raw = f.read()
    with open(first, "wb") as f:
        f.write(raw[: len(raw) // 2])  # torn
    report = gc(Records(LocalStore(exp_dir)))
    assert os.path.exists(first)
    assert report.skipped == {"unreadable_first_records": 1} and "dagger verify" in str(report)
    assert any(p.file == meta_key(sha, FIRST_REV) for p in verify(Records(LocalStore(exp_dir))).problems)


def test_a_rerun_whose_functions_give_the_same_results_writes_nothing(exp_dir, layout):
    exp, _, kids = build(exp_dir, functions=(mean_w,))
    exp.run(progress=False)
    sha = kids[0]._sha

    def stored():  # every stored revision of every state (in segments, replaced ones too)
        return {s: records_io.revs(exp_dir, s) for s in records_io.every_sha(exp_dir)}

    before = stored()
    again, _, _ = build(exp_dir, functions=(mean_w,))
    report = again.run(progress=False)
    assert report.computed == []
    assert stored() == before  # same revisions: nothing rewritten
    assert files(exp_dir, "states") == []  # and every pickle still travels in its record
    assert dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).results["mean_w"] == 2.5

    def mean_w_plus(state):
        return float(state.w.mean()) + 1

    third, _, _ = build(exp_dir, functions=(mean_w_plus,))
    third.run(progress=False)  # a new result: a new revision
    assert current_revision(exp_dir, sha) > FIRST_REV
    assert dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).results["mean_w_plus"] == 3.5


def test_inspect_says_where_the_pickle_is_and_never_calls_a_missing_file_carried(exp_dir, layout):
    from dagger.cli.browse import _stored_files

    exp = dg.Experiment(exp_dir, state_class=Small)
    root = exp.spawn_new_tree(name="t")
    grown = Grow(n=20_000)(root)
    exp.run(progress=False)
    tree = dg.Experiment.restore(exp_dir, state_class=Small)
    carried = _stored_files(tree, tree.graph.node(root._sha))["pickle"]
    assert carried["key"] == records_io.label(exp_dir, root._sha, FIRST_REV)
    assert carried["where"] == "carried by the commit record"
    own = _stored_files(tree, tree.graph.node(grown._sha))["pickle"]
    assert own["key"] == state_key(grown._sha) and own["where"] == "own file" and own["bytes"] > INLINE_MAX
    os.remove(os.path.join(exp_dir, state_key(grown._sha)))  # its first record carries no pickle
    missing = _stored_files(tree, tree.graph.node(grown._sha))["pickle"]
    assert missing["key"] == state_key(grown._sha) and missing["bytes"] is None


class _FullDiskForPickleFiles(LocalStore):
    def put(self, key, data):
        if key.startswith("states/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().put(key, data)

    def put_if_absent(self, key, data):
        if key.startswith("states/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().put_if_absent(key, data)


def test_a_failure_to_move_a_pickle_out_names_the_state_and_keeps_the_record(exp_dir, layout):
    exp, _, kids = build(exp_dir)
    exp.run(progress=False)
    sha = kids[0]._sha
    again = dg.Experiment(_FullDiskForPickleFiles(exp_dir), state_class=Small)
    root = again.spawn_new_tree(name="t")
    dg.Function(mean_w)(Add(k=1.0)(root))  # a new result: the record is replaced, the pickle must move out first
    with pytest.raises(dg.RunFailedError) as info:
        again.run(progress=False)
    assert f"could not save state {sha[:12]}" in str(info.value) and os.strerror(errno.ENOSPC) in str(info.value)
    assert records_io.revs(exp_dir, sha) == [FIRST_REV]  # the record that carries the pickle is still there
    assert carries_pickle(exp_dir, sha)
    assert dg.Experiment.restore(exp_dir, state_class=Small).graph.node(sha).restore().w.tolist() == [1.0, 2.0, 3.0, 4.0]
