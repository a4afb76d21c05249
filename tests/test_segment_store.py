"""The store on segments: runs write commit records to append-only segments; every reader reads both layouts.

Experiments run as real ``__main__`` scripts (``migratedefs.py``) in real
interpreters, with ``DAGGER_SEGMENTS=1`` (write segments) or without (write
``meta/`` files, as before); ``tests/data/store_v2`` is a store made by main's
code before segments existed, opened, extended and migrated here.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest

from dagger.store import FsspecStore, LocalStore
from dagger.store import segments as sg
from dagger.store.layout import SEGMENT_FORMAT, SEGMENTS_ENV
from dagger.store.maintenance import gc, verify
from dagger.store.records import FIRST_REV, Records

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "migratedefs.py")
OLD_STORE = os.path.join(HERE, "data", "store_v2")
SRC = os.path.join(os.path.dirname(HERE), "src")


def _env(segments: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != SEGMENTS_ENV}
    env["PYTHONPATH"] = os.pathsep.join([SRC, HERE])
    env["DAGGER_PROGRESS"] = "0"
    env[SEGMENTS_ENV] = "1" if segments else "0"
    return env


def _script(directory: str, mode: str, segments: bool = False) -> str:
    out = subprocess.run(
        [sys.executable, SCRIPT, directory, mode], capture_output=True, text=True, env=_env(segments), timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _summary(directory: str) -> dict[str, dict]:
    return json.loads(_script(directory, "summary"))


def _meta_files(directory: str) -> list[str]:
    folder = os.path.join(directory, "meta")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _segment_files(directory: str) -> list[str]:
    folder = os.path.join(directory, sg.FOLDER)
    return sorted(n for n in os.listdir(folder) if n.endswith(sg.SUFFIX)) if os.path.isdir(folder) else []


def _format(directory: str) -> int:
    with open(os.path.join(directory, "experiment.json"), "rb") as f:
        return json.loads(f.read())["format"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dagger.cli", *args], capture_output=True, text=True, env=_env(False), timeout=300
    )


@pytest.fixture(scope="module")
def file_truth(tmp_path_factory):
    """The same experiment written in the old layout by today's code: what every layout must read back."""
    directory = str(tmp_path_factory.mktemp("files") / "exp")
    _script(directory, "make")
    assert _meta_files(directory) and not _segment_files(directory)
    return _summary(directory)


def test_a_run_writes_its_records_to_a_segment_and_reads_back_what_files_held(tmp_path, file_truth):
    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    assert _meta_files(directory) == []  # no file per state
    assert len(_segment_files(directory)) == 2  # one per writer process (two runs)
    assert _format(directory) == SEGMENT_FORMAT  # an older dagger refuses the folder instead of missing states
    assert _summary(directory) == file_truth  # same states, tags (newest revision wins), results, pickles, blobs
    records = Records(LocalStore(directory))
    report = verify(records)
    assert report.ok, str(report)
    assert report.states == len(file_truth) == 6
    # The re-tagged state has two records in segments (first and newer); the newest is read.
    assert sum(len(scan.records) for _, scan in sg.scan_segments(records.store)) == 7


def test_gc_keeps_every_blob_a_segment_record_needs_and_compacts(tmp_path, file_truth):
    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    store = LocalStore(directory)
    junk = os.path.join(directory, "blobs", "ab", "ab" + "0" * 62)
    os.makedirs(os.path.dirname(junk))
    with open(junk, "wb") as f:
        f.write(b"unreferenced")
    report = gc(Records(store))
    assert report.removed["blobs"] == ["blobs/ab/ab" + "0" * 62]  # the only blob no record lists
    assert report.compacted == 1  # the re-tagged state's first record, superseded
    assert len(_segment_files(directory)) == 1 and _segment_files(directory)[0].startswith("c-")
    assert _summary(directory) == file_truth
    assert verify(Records(store)).ok


def test_a_torn_tail_is_ignored_and_the_next_run_writes_what_it_lost(tmp_path, file_truth):
    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    # The second run's segment holds one record: the re-tagged state's newer revision. Cut it mid-frame.
    newest = max(_segment_files(directory), key=lambda n: os.path.getmtime(os.path.join(directory, sg.FOLDER, n)))
    path = os.path.join(directory, sg.FOLDER, newest)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    records = Records(LocalStore(directory))
    report = verify(records)
    assert report.ok and any("not a whole record" in n for n in report.notes), str(report)
    seen = _summary(directory)
    assert set(seen) == set(file_truth)  # the state is still there, at its first revision
    assert [s for s in seen if seen[s]["tags"] != file_truth[s]["tags"]] != []  # the "late" tag was lost with it
    out = json.loads(_script(directory, "extend", segments=True))
    assert len(out["computed"]) == 2  # only the two new states: the lost tag is a new revision, not a recompute
    final = _summary(directory)
    assert {s: v for s, v in final.items() if s in file_truth} == file_truth


def _copy_old_store(tmp_path) -> str:
    directory = str(tmp_path / "old")
    shutil.copytree(OLD_STORE, directory)
    return directory


def test_a_store_made_by_mains_code_opens_extends_and_migrates(tmp_path, file_truth):
    directory = _copy_old_store(tmp_path)
    assert _format(directory) == 2 and len(_meta_files(directory)) == 6 and not _segment_files(directory)
    before = _summary(directory)  # read lazily as it is (meta/ files, carried pickles, a pickle file, a blob)
    assert before == file_truth
    # It runs and grows as it is: new records in the old layout, nothing to do first.
    out = json.loads(_script(directory, "extend"))
    assert len(out["computed"]) == 2 and _format(directory) == 2 and len(_meta_files(directory)) == 8
    grown = _summary(directory)
    # `dagger migrate` moves every record into one segment and marks the folder.
    done = _cli("migrate", directory)
    assert done.returncode == 0, done.stderr
    assert "8 states' records moved" in done.stdout
    assert _meta_files(directory) == []
    assert len(_segment_files(directory)) == 1 and _format(directory) == SEGMENT_FORMAT
    assert _summary(directory) == grown
    checked = _cli("verify", directory)
    assert checked.returncode == 0 and "8 states" in checked.stdout, checked.stdout
    # Once migrated, runs write segments without being asked (and no meta/ file appears).
    out = json.loads(_script(directory, "extend"))
    assert out["computed"] == []
    assert _meta_files(directory) == [] and _summary(directory) == grown
    # Migrating again finds nothing to move.
    again = _cli("migrate", directory)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout


def test_a_half_migrated_store_reads_the_newest_revision_from_either_layout(tmp_path, file_truth):
    """Segment records beside meta/ files (a run with segments on an old store, or a migration cut short)."""
    directory = _copy_old_store(tmp_path)
    out = json.loads(_script(directory, "extend", segments=True))  # new records go to a segment
    assert len(out["computed"]) == 2
    assert len(_meta_files(directory)) == 6 and len(_segment_files(directory)) == 1
    seen = _summary(directory)
    assert len(seen) == 8 and {s: v for s, v in seen.items() if s in file_truth} == file_truth
    # gc sees the states of both layouts: removes no blob, no pickle, no record any state needs.
    report = gc(Records(LocalStore(directory)))
    assert report.removed["blobs"] == [] and report.removed["orphan_pickles"] == []
    assert _summary(directory) == seen


def test_gc_unreachable_writes_a_tombstone_for_a_state_in_a_segment(tmp_path):
    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    records = Records(LocalStore(directory))
    committed = records.committed()
    # Make one leaf unreachable: a record of a state whose parent is not stored.
    leaf = next(iter(committed))
    stray = "f" * 64
    meta = dict(records.read_meta(leaf, committed[leaf]))
    meta.pop("rev")
    meta.update(sha=stray, parent="e" * 64)
    writer = Records(LocalStore(directory), segments=True)
    writer.write_meta(meta)
    writer.close()
    assert stray in Records(LocalStore(directory)).committed()
    collector = Records(LocalStore(directory))
    report = gc(collector, unreachable=True)
    assert report.removed["unreachable_states"] == [stray]
    assert stray not in collector.committed()  # the process that wrote the tombstone sees it too
    assert stray not in Records(LocalStore(directory)).committed()
    assert set(Records(LocalStore(directory)).committed()) == set(committed)


def test_the_explorer_and_the_cli_read_segments_and_see_a_run_that_appends(tmp_path):
    from dagger.ui.data import Source

    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    source = Source(directory)
    version, data = source.snapshot()
    assert len(data["states"]) == 6
    assert source.version() == version  # nothing changed: the same tag
    _script(directory, "extend", segments=True)  # appends two states' records to a new segment
    assert source.version() != version
    _, data = source.snapshot()
    assert len(data["states"]) == 8
    listed = _cli("ls", directory)
    assert listed.returncode == 0, listed.stderr
    assert "8 of 8 states" in listed.stdout
    seen = _summary(directory)
    big = next(s for s, v in seen.items() if v["steps"] == [1, 99])  # its pickle has a file of its own
    small = next(s for s, v in seen.items() if v["steps"] == [3])  # its pickle rides in its segment record
    for sha in (big, small):
        assert sha[:10] in listed.stdout
    shown = _cli("inspect", directory, small[:12], "--json")
    assert shown.returncode == 0, shown.stderr
    stored = json.loads(shown.stdout)["stored"]["pickle"]
    assert stored["where"] == "carried by the commit record" and stored["key"].startswith("segments/")
    shown = _cli("inspect", directory, big[:12], "--json")
    assert json.loads(shown.stdout)["stored"]["pickle"]["key"].startswith("states/")


def test_migrate_in_process_moves_only_what_no_segment_holds_and_leaves_damaged_records(tmp_path, file_truth):
    """:func:`dagger.store.migrate.migrate` on a half-migrated store with one damaged ``meta/`` record."""
    from dagger.store.migrate import migrate

    directory = _copy_old_store(tmp_path)
    json.loads(_script(directory, "extend", segments=True))  # two new states, their records in a segment
    grown = _summary(directory)
    sha = "ab" * 32
    damaged = os.path.join(directory, "meta", f"{sha}.00000000000000000000.json")
    with open(damaged, "w") as f:
        f.write("{not json")
    report = migrate(Records(LocalStore(directory)))
    assert report.moved == 6  # the six old states; the two in a segment already stay where they are
    assert report.left == [f"meta/{sha}.00000000000000000000.json"]
    assert report.removed_files == 6 and _meta_files(directory) == [os.path.basename(damaged)]
    assert report.compacted == 0 and len(_segment_files(directory)) == 1  # the run's segment and the moved one, merged
    text = str(report)
    assert "6 states' records moved" in text and "left in place (unreadable" in text and sha in text
    assert report.to_dict()["moved"] == 6
    assert _format(directory) == SEGMENT_FORMAT
    os.remove(damaged)
    assert _summary(directory) == grown
    assert verify(Records(LocalStore(directory))).ok
    again = migrate(Records(LocalStore(directory)))
    assert (again.moved, again.removed_files) == (0, 0) and "nothing to migrate" in str(again)


def test_the_index_keeps_the_segments_fingerprint_and_is_trusted_only_while_it_holds(tmp_path, file_truth, monkeypatch):
    """Opening an all-segments folder whose segments did not change since the index was written reads no segment."""
    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=True)
    store = LocalStore(directory)
    fingerprint = sg.fingerprint(store)
    assert fingerprint is not None and sg.fingerprint(store) == fingerprint  # (stable while nothing changes)
    records = Records(store)
    index = records.load_index()
    assert index.segments == fingerprint and set(records.committed()) == set(file_truth)

    def no_read(*args):
        raise AssertionError("a segment was read although the index is current")

    with monkeypatch.context() as patched:
        patched.setattr(sg, "_read", no_read)
        patched.setattr(sg, "_read_from", no_read)
        opened = Records(store).load_index()
        assert set(opened.shas) == set(file_truth) and opened.segments == fingerprint
    # Another writer deletes a state (a tombstone in a segment of its own): the fingerprint changes,
    # so the index is checked against the records again and the state is gone.
    gone = next(sha for sha in index.shas if index.entry(sha)["parent"] is not None)
    with sg.SegmentWriter(store) as writer:
        writer.delete(gone, "9" * 20)
    assert sg.fingerprint(store) != fingerprint
    reopened = Records(store).load_index()
    assert gone not in reopened and len(reopened) == len(file_truth) - 1
    reopened_fingerprint = sg.fingerprint(store)
    assert Records(store).load_index().segments == reopened_fingerprint  # rewritten for the folder as it is now
    # A meta/ file beside the segments (an older dagger's writer): the fingerprint alone is not trusted.
    # gc compacts the segments (a new fingerprint, the same records) and writes the index again to keep it.
    assert gc(Records(store)).compacted == 3 and len(_segment_files(directory)) == 1  # superseded records dropped
    compacted = sg.fingerprint(store)
    assert compacted != reopened_fingerprint and Records(store).load_index().segments == compacted
    assert Records(store)._segments_now() is not None
    os.makedirs(os.path.join(directory, "meta"), exist_ok=True)
    with open(os.path.join(directory, "meta", f"{gone}.{'9' * 20}.json"), "w") as f:
        f.write("{}")
    assert Records(store)._segments_now() is None


def test_a_segment_fingerprint_changes_with_every_append_and_compaction(tmp_path):
    store = LocalStore(str(tmp_path))
    assert sg.fingerprint(store) is None  # no segments folder
    seen = set()
    with sg.SegmentWriter(store) as writer:
        for i in range(20):
            writer.append(b"{}", key=f"k{i}", rev="1")
            seen.add(sg.fingerprint(store))
    seen.add(sg.fingerprint(store))  # the seal
    with sg.SegmentWriter(store) as writer:
        writer.append(b"{}", key="other", rev="1")
    seen.add(sg.fingerprint(store))
    sg.compact(store)
    seen.add(sg.fingerprint(store))
    assert len(seen) == 23 and None not in seen
    assert sg.fingerprint(FsspecStore("memory://fp-" + os.urandom(4).hex())) is None  # object stores: no cheap one


def test_states_a_process_just_wrote_to_its_segment_restore_in_that_process(tmp_path, monkeypatch):
    """Its records are kept without their payload (key and revision only) and read back from the segment."""
    import migratedefs

    monkeypatch.setenv(SEGMENTS_ENV, "1")
    directory = str(tmp_path / "exp")
    exp, *_ = migratedefs.define(directory)
    exp.run(progress=False)
    from dagger.execution import process_records

    writer = process_records(exp.runtime)  # the Records this process's tasks wrote with
    follower = writer._follower
    assert follower is not None and len(follower._at) == 6  # noted with where their frames start
    assert all(not follower.records[sha].payload for sha in follower._at)  # not their bytes
    assert exp.records.load_index().segments == sg.fingerprint(exp.records.store)  # checked without reading back
    fresh = Records(LocalStore(directory))  # reads every segment
    for sha, newest in fresh.committed().items():
        assert writer.record_bytes(sha, newest) == fresh.record_bytes(sha, newest)  # read back from its frame
    steps = sorted(list(node.restore().steps) for node in exp.graph.nodes)
    assert steps == [[], [1], [1, 99], [2], [2, 10], [3]]


@pytest.mark.parametrize("segments", [False, True], ids=["files", "segments"])
def test_state_path_names_the_file_that_holds_its_record(tmp_path, segments):
    import dagger as dg

    directory = str(tmp_path / "exp")
    _script(directory, "make", segments=segments)
    exp = dg.Experiment.restore(directory)
    folder = "segments" if segments else "meta"
    for node in exp.graph.nodes:
        path = node.path  # (the reference implementation's name)
        assert path.startswith(os.path.join(directory, folder) + "/") and os.path.isfile(path), path
        if segments:
            with open(path, "rb") as f:
                assert node.sha().encode() in f.read()  # the segment really holds its record


def test_a_damaged_byte_mid_segment_costs_one_state_gc_keeps_every_blob_and_repair_recomputes_it(tmp_path):
    """A byte changed on the device inside one record of a segment: that record is lost, never the records
    after it; gc removes no blob nor pickle while the segment is damaged; `verify --repair` rewrites it and
    the next run recomputes exactly the state whose record was lost."""
    from storedefs import read_calls

    directory = str(tmp_path / "exp")
    script = os.path.join(HERE, "storedefs.py")
    made = subprocess.run([sys.executable, script, directory, "0.5", "0.25", "6", "2"], env=_env(True), timeout=300)
    assert made.returncode == 0
    everyone = set(Records(LocalStore(directory)).committed())
    (name,) = _segment_files(directory)
    path = os.path.join(directory, sg.FOLDER, name)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    scan = sg.decode_segment(bytes(data))
    keys = [r.key for r in scan.records]
    middle = [i for i in range(1, len(keys) - 2) if keys.count(keys[i]) == 1]
    victim = scan.records[middle[len(middle) // 2]]  # a state with one record, with records after it
    data[data.index(victim.payload) + len(victim.payload) // 2] ^= 0x20
    with open(path, "wb") as f:
        f.write(data)

    records = Records(LocalStore(directory))
    assert set(records.committed()) == everyone - {victim.key}  # the records after the damage are read
    blobs, pickles = sorted(os.listdir(os.path.join(directory, "blobs"))), _tree(directory, "states")
    report = gc(records)
    assert "damaged" in str(report) and not report.removed["blobs"] and not report.removed["orphan_pickles"]
    assert sorted(os.listdir(os.path.join(directory, "blobs"))) == blobs and _tree(directory, "states") == pickles
    with open(path, "rb") as f:
        assert f.read() == bytes(data)  # never compacted away
    report = verify(Records(LocalStore(directory)))
    assert not report.ok and [p.file for p in report.problems] == [f"{sg.FOLDER}/{name}"], str(report)

    # A segment that a live process holds open is never rewritten (it may still append to it).
    with open(path, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_SH)
        busy = verify(Records(LocalStore(directory)), repair=True)
    assert os.path.exists(path) and any("still holds it open" in n for n in busy.notes), str(busy)
    repaired = verify(Records(LocalStore(directory)), repair=True)
    assert f"{sg.FOLDER}/{name}" in repaired.repaired and not os.path.exists(path)
    assert verify(Records(LocalStore(directory))).ok
    calls = str(tmp_path / "calls")
    again = subprocess.run(made.args, env={**_env(True), "DAGGER_TEST_CALLS": calls}, timeout=300)
    assert again.returncode == 0 and [sha for _, _, sha in read_calls(calls)] == [victim.key]
    assert set(Records(LocalStore(directory)).committed()) == everyone and verify(Records(LocalStore(directory))).ok


def _tree(directory: str, sub: str) -> list[str]:
    return sorted(os.path.join(d, n) for d, _, names in os.walk(os.path.join(directory, sub)) for n in names)


def test_a_state_removed_by_a_tombstone_is_committed_again_when_recomputed(tmp_path, monkeypatch):
    """`verify --repair` and `gc --unreachable` remove a state in segments with a tombstone: recomputing
    it commits it again (its new record sorts above the tombstone), and the run after computes nothing."""
    from storedefs import build

    monkeypatch.setenv(SEGMENTS_ENV, "1")
    directory = str(tmp_path / "exp")
    exp, _, leaves = build(directory, data_mb=0.1, model_mb=0.1, width=2, depth=1)
    exp.run(progress=False)
    victim = leaves[0].sha()
    records = Records(LocalStore(directory))
    model = records.load_pickle(victim).model.sum()
    assert records.remove_records(victim) == [f"{sg.FOLDER}/{victim}"]
    assert victim not in Records(LocalStore(directory)).committed()
    again, _, _ = build(directory, data_mb=0.1, model_mb=0.1, width=2, depth=1)
    assert [s.sha for s in again.run(progress=False).computed] == [victim]
    fresh = Records(LocalStore(directory))
    assert fresh.committed().get(victim, FIRST_REV) > FIRST_REV  # above the tombstone, so not the first record
    assert fresh.load_pickle(victim).model.sum() == model
    third, _, _ = build(directory, data_mb=0.1, model_mb=0.1, width=2, depth=1)
    assert third.run(progress=False).computed == []
    assert verify(Records(LocalStore(directory))).ok


def test_a_writer_whose_segment_was_removed_under_it_starts_a_new_one(tmp_path, monkeypatch):
    """The experiment folder deleted and made again in the same process (a notebook's reset): the next
    run's records land in a segment that readers find, not in the removed file."""
    from storedefs import build

    monkeypatch.setenv(SEGMENTS_ENV, "1")
    directory = str(tmp_path / "exp")
    exp, _, _ = build(directory, data_mb=0.1, model_mb=0.1, width=2, depth=1)
    exp.run(progress=False)
    shutil.rmtree(directory)
    again, _, _ = build(directory, data_mb=0.1, model_mb=0.1, width=2, depth=1)
    assert len(again.run(progress=False).computed) == 3
    assert len(Records(LocalStore(directory)).committed()) == 3 and verify(Records(LocalStore(directory))).ok


def test_segments_are_never_written_through_a_link_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    directory = tmp_path / "exp"
    directory.mkdir()
    os.symlink(outside, directory / sg.FOLDER)
    with pytest.raises(OSError, match="symbolic link"):
        sg.SegmentWriter(LocalStore(str(directory))).append(b"x", key="k", rev="1")
    with pytest.raises(OSError, match="symbolic link"):
        sg.write_records(LocalStore(str(directory)), [("k", "1", b"x")])
    with pytest.raises(OSError, match="symbolic link"):
        sg.compact(LocalStore(str(directory)))
    assert os.listdir(outside) == []


def test_a_run_ends_with_its_segment_sealed_and_no_segment_held_open(tmp_path, monkeypatch):
    """A process that runs many experiments (a notebook, a test suite) keeps no segment file open for each."""
    from storedefs import build

    monkeypatch.setenv(SEGMENTS_ENV, "1")

    def open_segments() -> list[str]:
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # (the listing's own descriptor, closed since)
                continue
        return [n for n in names if f"{os.sep}{sg.FOLDER}{os.sep}" in n and n.startswith(str(tmp_path))]

    for i in range(5):
        directory = str(tmp_path / f"exp{i}")
        exp, _, _ = build(directory, data_mb=0.01, model_mb=0.01, width=1, depth=1)
        exp.run(progress=False)
        assert open_segments() == []
        scans = [scan for _, scan in sg.scan_segments(LocalStore(directory))]
        assert len(scans) == 1 and scans[0].sealed and len(scans[0].records) == 2
    again, _, _ = build(directory, data_mb=0.01, model_mb=0.01, width=2, depth=1)
    assert len(again.run(progress=False).computed) == 1 and len(_segment_files(directory)) == 2
