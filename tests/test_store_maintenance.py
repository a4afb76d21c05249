"""gc and verify: what they remove, what they find, and how they report it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import records_io
from damage import edit_carried_pickle, left_long_ago, pickle_bytes, pickle_file, sole_pickle_file
from storedefs import BigState, build

import dagger as dg
from dagger.store import records as rec
from dagger.store.maintenance import GcReport, VerifyReport, gc, verify


@pytest.fixture
def small(exp_dir):
    """A stored 5-state tree whose states hold blobs (0.5 MB dataset, 128 KiB models)."""
    exp, root, leaves = build(exp_dir, data_mb=0.5, model_mb=0.125, width=2, depth=2)
    exp.run()
    return exp, root, leaves


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _files(root: str, folder: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(os.path.join(root, folder)):
        out += [os.path.join(dirpath, n) for n in names]
    return sorted(out)


def test_clean_store_verifies_and_gc_removes_nothing(small):
    exp, _, _ = small
    report = exp.verify()
    assert isinstance(report, VerifyReport)
    assert report.ok and bool(report)
    assert report.states == 5
    assert report.blobs == 6  # one dataset + the root's zero model + 4 distinct models
    assert "OK" in str(report)
    assert report.to_dict()["ok"] is True
    g = exp.gc()
    assert isinstance(g, GcReport)
    assert g.removed_count == 0 and g.freed_bytes == 0
    assert "nothing to remove" in str(g)


def test_gc_removes_leftovers_and_reports_bytes(small):
    exp, root, leaves = small
    d = exp.directory
    records = exp.records
    store = exp.store
    # leftovers of interrupted writes
    store.put("tmp/deadbeef", b"x" * 1000)
    store.put("tmp/cafe", b"y" * 24)
    for name in ("deadbeef", "cafe"):
        left_long_ago(os.path.join(exp.directory, "tmp", name))  # killed writes, past gc's grace period
    orphan_sha = "ab" * 32
    store.put(rec.state_key(orphan_sha), b'{"format":1,"blobs":[]}\n.')
    unused = os.urandom(70_000)
    unused_name = rec.digest.hexdigest(records.blob_hash, unused)
    store.put(rec.blob_key(unused_name), unused)
    # a lock of a killed process, and a half-broken lock
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "time": time.time(), "token": "t"}
    store.put("locks/" + "cd" * 32 + ".lock", json.dumps(dead).encode())
    store.put("locks/" + "ef" * 32 + ".lock.123.stale", b"{}")
    # a superseded metadata revision next to the newest (the first record's FIRST_REV is the lowest
    # of all, so the state first gets a newer revision, as a tag change would give it). The superseded
    # one is a meta/ file in either layout: in a segments experiment, one left from before its migration
    # (superseded segment records go by compaction instead, which the segment tests cover).
    sha = leaves[0].sha()
    records.write_meta(records.read_meta(sha, rec.FIRST_REV), old_rev=rec.FIRST_REV)
    rev = records.committed()[sha]
    old_rev = f"{int(rev[:16], 16) - 5:016x}0000"
    store.put(rec.meta_key(sha, old_rev), records_io.read_bytes(d, sha, rev))
    assert records.committed()[sha] == rev

    dry = gc(records, dry_run=True)
    assert dry.dry_run
    assert dry.counts() == {
        "blobs": 1,
        "tmp": 2,
        "orphan_pickles": 1,
        "locks": 2,
        "meta_revisions": 1,
        "unreachable_states": 0,
    }
    assert dry.freed["blobs"] == 70_000 and dry.freed["tmp"] == 1024
    assert "would remove 1 unreferenced blobs" in str(dry)
    assert store.exists("tmp/deadbeef") and store.exists(rec.blob_key(unused_name))  # nothing removed

    real = exp.gc()
    assert real.counts() == dry.counts()
    assert real.freed_bytes == dry.freed_bytes > 70_000
    assert real.to_dict()["counts"]["tmp"] == 2
    assert "removed 1 unreferenced blobs (68.4 KiB)" in str(real)
    # lock files of dead owners go; the shared range-lock file (it holds no data) stays
    assert _files(d, "tmp") == [] and set(_files(d, "locks")) <= {os.path.join(d, "locks", "states.ranges")}
    assert not store.exists(rec.blob_key(unused_name))
    assert not store.exists(rec.state_key(orphan_sha))
    assert not store.exists(rec.meta_key(sha, old_rev)) and old_rev not in records_io.revs(d, sha)
    assert records_io.newest_rev(d, sha) == rev and records.committed()[sha] == rev
    assert exp.verify().ok
    # every state still restores in full, blobs included
    again = dg.Experiment.restore(d)
    for node in again.graph.nodes:
        node.restore()
        assert node.data.shape == (0.5 * 2**20 // 8,)
    assert gc(records).removed_count == 0


def test_gc_keeps_in_flight_data_while_an_experiment_runs(small):
    exp, _, _ = small
    store = exp.store
    store.put("tmp/inflight", b"z" * 100)
    live = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": "live"}
    store.put("locks/" + "12" * 32 + ".lock", json.dumps(live).encode())
    report = exp.gc()
    assert report.live_locks == 1
    assert report.skipped == {"tmp": 1}
    assert store.exists("tmp/inflight")
    assert "kept 1 temporary files" in str(report)
    store.delete("locks/" + "12" * 32 + ".lock")
    left_long_ago(os.path.join(exp.directory, "tmp", "inflight"))
    assert exp.gc().counts()["tmp"] == 1


def test_gc_leaves_a_temporary_file_written_moments_ago_to_its_writer(small):
    # Tag updates and Function results on cached states are written without a state lock:
    # their temporary file may be between its write and its rename while gc runs.
    exp, _, _ = small
    store = exp.store
    store.put("tmp/being-renamed", b"r" * 10)
    store.put("tmp/killed-long-ago", b"k" * 10)
    left_long_ago(os.path.join(exp.directory, "tmp", "killed-long-ago"))
    report = exp.gc()
    assert report.live_locks == 0
    assert report.removed["tmp"] == ["tmp/killed-long-ago"]
    assert report.skipped == {"recent_tmp": 1}
    assert store.exists("tmp/being-renamed")
    assert "kept 1 temporary files written in the last 60 s" in str(report)
    left_long_ago(os.path.join(exp.directory, "tmp", "being-renamed"))
    assert exp.gc().removed["tmp"] == ["tmp/being-renamed"]


def test_gc_unreachable_only_when_asked(small):
    exp, root, leaves = small
    store, records = exp.store, exp.records
    # A state whose parent is not in the store (e.g. left by another definition whose branch was removed).
    lonely = dg.Experiment(exp.directory, state_class=BigState)
    lonely_root = lonely.spawn_new_tree(data_mb=0.5, model_mb=0.125)
    from storedefs import Perturb

    branch = Perturb(step=99.0)(Perturb(step=98.0)(lonely_root))
    lonely.run()
    middle = branch.parent.sha()
    # remove the middle state's records: its child becomes unreachable
    records_io.remove(exp.directory, middle)
    store.delete(rec.state_key(middle))
    assert middle not in records.committed()
    kept = gc(records)
    assert kept.counts()["unreachable_states"] == 0
    assert branch.sha() in records.committed()
    # the middle state's own model blob is now unreferenced: plain gc frees it
    assert kept.counts()["blobs"] == 1

    # the unreachable state's pickle in a file of its own too (not only carried by its commit record)
    pickle_file(exp.directory, branch.sha())
    dry = gc(records, unreachable=True, dry_run=True)
    assert dry.removed["unreachable_states"] == [branch.sha()]
    assert branch.sha() in records.committed()
    report = exp.gc(unreachable=True)
    assert report.removed["unreachable_states"] == [branch.sha()]
    assert report.counts()["blobs"] == 1  # its model; the dataset is shared and stays
    assert report.freed["unreachable_states"] > 0
    assert branch.sha() not in records.committed()
    assert not store.exists(rec.state_key(branch.sha()))
    assert set(records.committed()) == {root.sha()} | {s.sha() for leaf in leaves for s in (leaf, leaf.parent)}
    index = json.loads(store.get(rec.INDEX_KEY))["states"]
    assert branch.sha() not in index
    assert exp.verify().ok


def _blob_of(exp, sha):
    header = pickle_bytes(exp.directory, sha).split(b"\n", 1)[0]
    return json.loads(header)["blobs"]


def test_verify_finds_a_modified_blob_and_names_every_state_using_it(small):
    exp, root, leaves = small
    data_blob = max(_blob_of(exp, root.sha()), key=lambda b: b[1])[0]  # the shared dataset
    path = os.path.join(exp.directory, rec.blob_key(data_blob))
    with open(path, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    report = exp.verify()
    assert not report.ok
    assert {p.state for p in report.problems} == {n.sha() for n in exp.graph.nodes}
    assert {p.file for p in report.problems} == {rec.blob_key(data_blob)}
    assert "modified or truncated" in str(report)
    assert report.to_dict()["problems"][0]["file"] == rec.blob_key(data_blob)


@pytest.mark.parametrize("where", ["file", "carried"])
def test_verify_finds_missing_and_truncated_files(small, where):
    exp, root, leaves = small
    store = exp.store
    a, b = leaves[0].sha(), leaves[1].sha()
    mid = leaves[0].parent.sha()
    # a's model blob is missing
    model_blob = [n for n, s in _blob_of(exp, a) if s == 128 * 1024][0]
    store.delete(rec.blob_key(model_blob))
    # b's pickle is truncated: its own file, or the copy its first commit record carries
    if where == "file":
        b_key = rec.state_key(b)
        path = sole_pickle_file(exp.directory, b)  # (a damaged file beside an intact carried copy shadows nothing)
        raw = open(path, "rb").read()
        store.put(b_key, raw[:-10])
    else:
        b_key = edit_carried_pickle(exp.directory, b, lambda raw: raw[:-10])
    # mid's pickle is gone (its file, once the only copy: a first record that carries it is the commit)
    os.remove(sole_pickle_file(exp.directory, mid))
    # the root's metadata is unreadable
    root_key = records_io.write_bytes(exp.directory, root.sha(), b'{"format": 1, "sha": "')
    # a metadata record that lies about its state
    other = "9" * 64
    body = records_io.read_json(exp.directory, a)
    other_key = records_io.add_record(exp.directory, other, "0" * 20, json.dumps(body).encode(), like=a)

    report = verify(exp.records)
    found = {(p.state, p.file) for p in report.problems}
    assert (a, rec.blob_key(model_blob)) in found
    assert (b, b_key) in found
    assert (mid, rec.state_key(mid)) in found
    assert (root.sha(), root_key) in found
    assert (other, other_key) in found
    assert len(report.problems) == 5, str(report)
    text = str(report)
    assert "5 problems" in text and "blob is missing" in text and "is missing although" in text
    assert text.count(" - state ") == 5


def test_verify_notes_leftovers_without_failing(small):
    exp, _, _ = small
    exp.store.put("tmp/leftover", b"abc")
    report = exp.verify()
    assert report.ok
    assert any("temporary files" in n for n in report.notes)


def test_gc_and_verify_on_memory_store():
    url = f"memory://dagger-gc/{os.urandom(6).hex()}"
    exp, _, leaves = build(url, data_mb=0.25, model_mb=0.125, width=1, depth=1)
    exp.run()
    exp.store.put("tmp/x", b"123")
    junk = np.arange(10.0).tobytes()
    exp.store.put(rec.blob_key(rec.digest.hexdigest(exp.records.blob_hash, junk)), junk)
    assert exp.verify().ok
    exp.store.put(rec.blob_key("f" * 64), junk)  # content does not match the name
    bad = exp.verify()
    assert [p.file for p in bad.problems] == [rec.blob_key("f" * 64)] and bad.problems[0].state is None
    report = exp.gc()
    assert report.counts()["tmp"] == 1 and report.counts()["blobs"] == 2
    assert exp.store.list("tmp") == []
    assert exp.verify().ok and exp.verify().blobs == 3


@pytest.mark.parametrize("where", ["file", "carried"])
def test_verify_finds_a_modified_pickle_of_the_same_size(small, where):
    exp, root, _ = small
    raw = bytearray(pickle_bytes(exp.directory, root.sha()))
    if b'"blake3"' not in raw.split(b"\n", 1)[0]:
        pytest.fail("state pickles carry no checksum: a same-size edit cannot be detected")
    raw[-20] ^= 0x01  # same size, still ends with the STOP opcode
    if where == "file":  # the pickle's own file
        key = rec.state_key(root.sha())
        sole_pickle_file(exp.directory, root.sha())  # (the only copy)
        exp.store.put(key, bytes(raw))
    else:  # the copy the state's first commit record carries
        key = edit_carried_pickle(exp.directory, root.sha(), lambda _: bytes(raw))
    report = exp.verify()
    assert [(p.state, p.file) for p in report.problems] == [(root.sha(), key)]
    assert "checksum" in str(report)
