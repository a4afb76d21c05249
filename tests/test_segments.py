"""Commit-record segments: framing, torn tails, real concurrent and killed writers, compaction, object stores.

Writers and readers that must be separate processes run ``segmentprocs.py``
(a real script file) in real interpreters; object stores are ``memory://``
and the S3 test server, with requests counted at the client as they go out.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from segmentprocs import payload

from dagger.store import FsspecStore, LocalStore
from dagger.store import segments as sg

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "segmentprocs.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.path.join(os.path.dirname(HERE), "src"), HERE) if p))
REV = "1"


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE, text=True, env=ENV)


def _segment_files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(folder, sg.FOLDER)) if n.endswith(sg.SUFFIX))


def _write(store: LocalStore, keys: list[str], rev: str = REV) -> str:
    """Append a record of each key at ``rev`` from a writer of its own, closed (sealed); its segment's name."""
    with sg.SegmentWriter(store) as writer:
        for key in keys:
            writer.append(payload(key, rev), key=key, rev=rev)
    return writer.name


# ---- framing -------------------------------------------------------------------------------------


def test_frames_round_trip_any_payload_bytes():
    payloads = [b"", b" ", b"\n", b"R00000000 x", bytes(range(256)), b'{"a": "b c"}\n' * 100]
    data = b"".join(sg.encode_frame(sg.RECORD, f"k{i}", f"r{i}", p) for i, p in enumerate(payloads))
    scan = sg.decode_segment(data)
    assert [r.payload for r in scan.records] == payloads
    assert [(r.key, r.rev, r.deleted) for r in scan.records] == [(f"k{i}", f"r{i}", False) for i in range(6)]
    assert scan.torn_bytes == 0 and not scan.sealed


@pytest.mark.parametrize("key, rev", [("a b", "1"), ("", "1"), ("k", ""), ("k\n", "1"), ("ké", "1"), ("k" * 257, "1")])
def test_keys_and_revisions_that_a_frame_cannot_hold_are_refused(key, rev):
    with pytest.raises(ValueError, match="printable ASCII characters without spaces"):
        sg.encode_frame(sg.RECORD, key, rev, b"x")


def test_newest_revision_wins_and_tombstones_delete(tmp_path):
    store = LocalStore(str(tmp_path))
    _write(store, ["a", "b", "c"], rev="0001")
    _write(store, ["a"], rev="0003")
    _write(store, ["a"], rev="0002")  # older than what is there: does not win
    with sg.SegmentWriter(store) as writer:
        writer.delete("b", "0002")
        writer.delete("c", "0000")  # a tombstone older than the record deletes nothing
    found = sg.latest(store)
    assert sorted(found) == ["a", "c"]
    assert found["a"].rev == "0003" and found["a"].payload == payload("a", "0003")
    assert found["c"].rev == "0001"


# ---- torn tails and whole records ------------------------------------------------------------------


def test_a_torn_tail_is_ignored_at_every_byte_of_the_last_record(tmp_path):
    store = LocalStore(str(tmp_path))
    keys = [f"key-{i}" for i in range(5)]
    with sg.SegmentWriter(store) as writer:
        for key in keys:
            writer.append(payload(key), key=key, rev=REV)
        name = writer.name
        path = os.path.join(str(tmp_path), sg.FOLDER, name)
        full = open(path, "rb").read()  # five records, not sealed yet
    last = len(full) - len(sg.encode_frame(sg.RECORD, keys[-1], REV, payload(keys[-1])))
    for cut in range(last, len(full)):
        with open(path, "wb") as f:
            f.write(full[:cut])
        found = sg.latest(store)
        assert sorted(found) == keys[:-1], cut  # the torn record is not there, every earlier one is
        assert all(found[k].payload == payload(k) for k in keys[:-1])
        scan = sg.decode_segment(full[:cut])
        assert scan.whole_bytes == last and scan.torn_bytes == cut - last
    with open(path, "wb") as f:
        f.write(full)
    assert sorted(sg.latest(store)) == keys


def test_a_record_is_visible_only_once_its_whole_frame_is_written(tmp_path):
    store = LocalStore(str(tmp_path))
    _write(store, ["before"])
    frame = sg.encode_frame(sg.RECORD, "slow", REV, payload("slow"))
    path = os.path.join(str(tmp_path), sg.FOLDER, "other-1-abc.seg")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for end in (1, 9, 17, 18, len(frame) // 2, len(frame) - 1):
            os.ftruncate(fd, 0)
            os.write(fd, frame[:end])
            assert sorted(sg.latest(store)) == ["before"], end
        os.write(fd, frame[len(frame) - 1 :])
        assert sorted(sg.latest(store)) == ["before", "slow"]
    finally:
        os.close(fd)


def test_a_damaged_record_is_lost_alone_and_the_records_after_it_are_read(tmp_path):
    """A flipped byte mid-segment (the device, or an edit) costs its one record; a torn tail is told apart."""
    store = LocalStore(str(tmp_path))
    name = _write(store, ["a", "b", "c"])
    path = os.path.join(str(tmp_path), sg.FOLDER, name)
    data = bytearray(open(path, "rb").read())
    where = data.index(b'"b"')  # inside the second record's payload
    data[where + 1] ^= 0x01
    with open(path, "wb") as f:
        f.write(data)
    scan = sg.decode_segment(bytes(data))
    second = len(sg.encode_frame(sg.RECORD, "b", REV, payload("b", REV)))
    assert [r.key for r in scan.records] == ["a", "c"] and scan.sealed
    assert scan.damaged_bytes == second and scan.torn_bytes == 0
    assert sorted(sg.latest(store)) == ["a", "c"]
    follower = sg.Follower(store)
    follower.refresh()
    assert follower.damaged == {name: second} and follower.torn == {}
    # A damaged segment is never compacted (that would drop its damaged bytes for good): it stays as it is.
    _write(store, ["d"])
    done = sg.compact(store, min_segments=1)
    assert done.damaged == [name] and name not in done.merged
    assert open(path, "rb").read() == bytes(data) and sorted(sg.latest(store)) == ["a", "c", "d"]
    # Cut off at the same byte instead: a torn tail (what a killed writer leaves), no damage.
    scan = sg.decode_segment(bytes(data[: where + 1]))
    assert [r.key for r in scan.records] == ["a"] and scan.torn_bytes > 0 and scan.damaged_bytes == 0


def test_a_failed_append_leaves_no_partial_frame(tmp_path):
    """The kernel refuses to grow the file mid-frame (a real short write, then EFBIG, as a full disk would)."""
    folder = str(tmp_path)
    frame = len(sg.encode_frame(sg.RECORD, "first", REV, payload("first")))
    proc = _start("full", folder, str(frame * 3 + frame // 2))  # the limit falls inside a frame
    out = proc.communicate(timeout=120)[0].split()
    assert proc.returncode == 0 and out[-2:] == ["error", str(errno.EFBIG)], out
    committed = ["first"] + out[:-2]
    assert 2 <= len(committed) <= 4
    (name,) = _segment_files(folder)
    scan = sg.decode_segment(open(os.path.join(folder, sg.FOLDER, name), "rb").read())
    # The partial frame was cut off: the next append followed the last whole one, and the file is sealed.
    assert [r.key for r in scan.records] == committed + ["after"] and scan.sealed and scan.torn_bytes == 0


def test_a_writer_used_after_fork_writes_a_segment_of_its_own(tmp_path):
    store = LocalStore(str(tmp_path))
    writer = sg.SegmentWriter(store)
    writer.append(payload("parent"), key="parent", rev=REV)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            writer.append(payload("child"), key="child", rev=REV)
            writer.close()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    writer.append(payload("parent2"), key="parent2", rev=REV)
    writer.close()
    files = _segment_files(str(tmp_path))
    assert len(files) == 2
    keys = {
        name: [
            r.key for r in sg.decode_segment(open(os.path.join(str(tmp_path), sg.FOLDER, name), "rb").read()).records
        ]
        for name in files
    }
    assert sorted(keys.values()) == [["child"], ["parent", "parent2"]]


# ---- real processes ---------------------------------------------------------------------------------


def test_concurrent_writer_processes_never_share_a_file_and_lose_nothing(tmp_path):
    folder = str(tmp_path)
    procs = [_start("write", folder, f"w{i}", "400") for i in range(4)]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(_segment_files(folder)) == 4
    found = sg.latest(LocalStore(folder))
    expected = [f"w{i}-{k}" for i in range(4) for k in range(400)]
    assert sorted(sum(outputs, [])) == sorted(expected)
    assert sorted(found) == sorted(expected)
    assert all(found[k].payload == payload(k) for k in expected)


def test_sigkill_at_random_moments_loses_no_committed_record(tmp_path):
    folder = str(tmp_path)
    rng = random.Random(21)
    committed: set[str] = set()
    for run in range(12):
        proc = _start("forever", folder, f"run{run}")
        reader = threading.Thread(target=lambda p=proc: committed.update(p.stdout.read().split()))
        proc.stdout.readline()  # started and committed its first record
        reader.start()
        time.sleep(rng.uniform(0.0, 0.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join()
    store = LocalStore(folder)
    found = sg.latest(store)
    lost = [k for k in committed if k not in found]
    assert not lost, lost[:5]
    assert all(r.payload == payload(r.key) for r in found.values())  # nothing corrupt is read
    # Each killed writer's segment is unsealed but idle (the kernel dropped its lock): compaction takes it.
    report = sg.compact(store)
    assert len(report.merged) == 12 and not report.live
    after = sg.latest(store)
    assert after == found and _segment_files(folder) == [report.written]


def test_compaction_leaves_a_live_writer_alone(tmp_path):
    store = LocalStore(str(tmp_path))
    _write(store, ["a"])
    _write(store, ["b"])
    live = sg.SegmentWriter(store)
    live.append(payload("c"), key="c", rev=REV)
    report = sg.compact(store)
    assert report.live == [live.name] and len(report.merged) == 2
    live.append(payload("d"), key="d", rev=REV)  # still appending after the compaction
    live.close()
    assert sorted(sg.latest(store)) == ["a", "b", "c", "d"]
    second = sg.compact(store)
    assert live.name in second.merged and not second.live
    assert sorted(sg.latest(store)) == ["a", "b", "c", "d"] and len(_segment_files(str(tmp_path))) == 1


def test_compaction_keeps_newest_revisions_drops_superseded_and_a_crash_midway_changes_nothing(tmp_path):
    folder = str(tmp_path)
    store = LocalStore(folder)
    keys = [f"k{i}" for i in range(50)]
    _write(store, keys, rev="0001")
    _write(store, keys[:10], rev="0002")
    with sg.SegmentWriter(store) as writer:
        writer.delete("k49", "0002")
    before = sg.latest(store)
    saved = {n: open(os.path.join(folder, sg.FOLDER, n), "rb").read() for n in _segment_files(folder)}
    report = sg.compact(store)
    assert report.records_in == 61 and report.records_out == 49  # superseded and deleted records dropped
    assert sg.latest(store) == before
    # A crash after the new segment was renamed into place, before the old ones were removed:
    for name, data in saved.items():
        with open(os.path.join(folder, sg.FOLDER, name), "wb") as f:
            f.write(data)
    assert sg.latest(store) == before


def test_a_compacted_segment_is_stored_compressed_and_reads_back_the_same(tmp_path):
    folder = str(tmp_path)
    store = LocalStore(folder)
    keys = [f"k{i}" for i in range(400)]
    for chunk in range(4):
        _write(store, keys[chunk::4])
    before = sg.latest(store)
    report = sg.compact(store)
    (name,) = _segment_files(folder)
    with open(os.path.join(folder, sg.FOLDER, name), "rb") as f:
        stored = f.read()
    assert stored.startswith(sg.ZMAGIC) and report.bytes_out == len(stored)
    assert report.bytes_out < report.bytes_in / 2  # the records' JSON packs (these payloads repeat a digest)
    assert sg.latest(store) == before
    scan = sg.decode_segment(stored)
    assert scan.sealed and scan.compressed and scan.torn_bytes == 0 and scan.size == len(stored)
    # compress=False keeps the frames as they are (what a live segment holds).
    _write(store, ["extra"])
    plain = sg.compact(store, compress=False)
    (name,) = _segment_files(folder)
    with open(os.path.join(folder, sg.FOLDER, name), "rb") as f:
        assert f.read(1) == sg.RECORD and plain.bytes_out > report.bytes_out
    assert sg.latest(store) == {**before, "extra": sg.latest(store)["extra"]}


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_damaged_compressed_segment_yields_the_records_before_the_damage(tmp_path, damage):
    keys = [f"k{i:04d}" for i in range(3000)]
    rng = random.Random(7)
    payloads = {k: rng.randbytes(64).hex().encode() for k in keys}
    frames = b"".join(sg.encode_frame(sg.RECORD, k, REV, payloads[k]) for k in keys)
    stored = bytearray(sg.compress_segment(frames + sg._seal_frame(len(keys))))
    if damage == "cut":
        stored = stored[: len(stored) * 2 // 3]
    else:
        stored[len(stored) * 2 // 3] ^= 0xFF
    scan = sg.decode_segment(bytes(stored))
    assert scan.compressed and not scan.sealed
    assert scan.damaged_bytes > 0  # written whole, so never torn by a writer: damage, and compaction leaves it alone
    assert 0 < len(scan.records) < len(keys)  # what the stream still holds, each record whole and checked
    got = [r.key for r in scan.records]
    assert got[: len(got) // 2] == keys[: len(got) // 2] and got == sorted(got)  # in order, from the start
    assert all(r.payload == payloads[r.key] for r in scan.records)
    # Read through the store: the follower treats it as immutable and never reads it from an offset.
    folder = str(tmp_path)
    os.makedirs(os.path.join(folder, sg.FOLDER))
    with open(os.path.join(folder, sg.FOLDER, "c-damaged.seg"), "wb") as f:
        f.write(stored)
    follower = sg.Follower(LocalStore(folder))
    assert set(follower.live()) == {r.key for r in scan.records}
    assert set(follower.live()) == {r.key for r in scan.records}  # a second refresh reads nothing new


def test_a_writers_own_new_segment_is_known_from_its_notes_and_never_read_back(tmp_path, monkeypatch):
    store = LocalStore(str(tmp_path))
    _write(store, ["old"])  # another writer's segment, there before the follower listed
    follower = sg.Follower(store)
    assert set(follower.live()) == {"old"}
    with sg.SegmentWriter(store) as writer:  # created after that listing: every record of it is noted
        for key in ("a", "b"):
            at = writer.append(payload(key), key=key, rev=REV)
            follower.note(writer.name, sg.SegmentRecord(key, REV, payload(key)), at)
    assert [r.payload for r in (follower.records["a"], follower.records["b"])] == [b"", b""]  # kept: key and rev

    def no_read(*args):
        raise AssertionError("this process's own segment was read back")

    with monkeypatch.context() as patched:
        patched.setattr(sg, "_read", no_read)
        patched.setattr(sg, "_read_from", no_read)
        assert set(follower.live()) == {"old", "a", "b"}
    # A payload noted without its bytes is read back from where its frame starts, when asked.
    assert follower.payload(follower.records["b"]) == payload("b")
    assert follower.payload(follower.records["old"]) == payload("old")  # (read from its segment: kept)
    # Compacted away meanwhile: the follower reads everything again and finds it in the new segment.
    sg.compact(store)
    assert follower.payload(follower.records["a"]) == payload("a")
    # A follower that has not listed yet cannot know what the segment held before: it reads it.
    fresh = sg.Follower(store)
    fresh.note(writer.name, sg.SegmentRecord("c", REV, payload("c")))  # (not appended: a note alone adds nothing)
    assert set(fresh.live()) == {"old", "a", "b"}


def test_tombstones_survive_a_compaction_that_leaves_a_live_segment(tmp_path):
    store = LocalStore(str(tmp_path))
    live = sg.SegmentWriter(store)
    live.append(payload("gone"), key="gone", rev="0001")  # the old record sits in a live segment
    with sg.SegmentWriter(store) as writer:
        writer.delete("gone", "0002")
    _write(store, ["other"])
    report = sg.compact(store)
    assert report.live == [live.name]
    assert "gone" not in sg.latest(store)  # the kept tombstone still hides the live segment's record
    live.close()


def test_compaction_under_concurrent_reader_processes(tmp_path):
    folder = str(tmp_path)
    store = LocalStore(folder)
    keys = [f"k{i}" for i in range(300)]
    for chunk in range(6):
        _write(store, keys[chunk * 50 : (chunk + 1) * 50], rev="0001")
    expected = {k: "0001" for k in keys}
    keys_file, stop_file = str(tmp_path / "keys.json"), str(tmp_path / "stop")
    with open(keys_file, "w") as f:
        json.dump(expected, f)
    readers = [_start("read", folder, keys_file, stop_file) for _ in range(2)]
    assert [r.stdout.readline().strip() for r in readers] == ["reading", "reading"]
    try:
        for round_ in range(2, 30):
            rev = f"{round_:04d}"
            _write(store, keys[round_ % 6 :: 6], rev=rev)  # new revisions of some keys, then merge everything
            report = sg.compact(store, fsync=round_ % 2 == 0)
            assert report.merged and not report.live
    finally:
        open(stop_file, "w").close()
    outs = [r.communicate(timeout=120)[0] for r in readers]
    assert [r.returncode for r in readers] == [0, 0], outs
    assert all(int(out.split()[-1]) > 0 for out in outs)
    assert all(r.payload == payload(k, r.rev) for k, r in sg.latest(store).items())


def test_only_one_compaction_at_a_time(tmp_path):
    store = LocalStore(str(tmp_path))
    _write(store, ["a"])
    _write(store, ["b"])
    guard = sg._compaction_lock(os.path.join(str(tmp_path), sg.FOLDER))
    try:
        assert sg.compact(store).busy
        assert len(_segment_files(str(tmp_path))) == 2
    finally:
        os.close(guard)
    assert not sg.compact(store).busy


# ---- object stores: batches ---------------------------------------------------------------------------


def test_batches_by_count_on_flush_and_on_close_in_memory_store():
    store = FsspecStore(f"memory://segments-{os.getpid()}-{random.random()}/exp")
    writer = sg.BatchSegmentWriter(store, max_records=10, max_delay=0)
    for i in range(25):
        writer.append(payload(f"k{i}"), key=f"k{i}", rev=REV)
    assert len(store.list(sg.FOLDER)) == 2 and len(sg.latest(store)) == 20  # 5 wait, invisible
    writer.flush()
    assert len(store.list(sg.FOLDER)) == 3 and len(sg.latest(store)) == 25
    writer.append(payload("last"), key="last", rev=REV)
    writer.close()
    assert len(store.list(sg.FOLDER)) == 4 and sorted(sg.latest(store)) == sorted(
        [f"k{i}" for i in range(25)] + ["last"]
    )
    with pytest.raises(ValueError, match="closed"):
        writer.append(b"x", key="late", rev=REV)
    with sg.BatchSegmentWriter(store, max_delay=0) as deleter:
        deleter.delete("k0", "2")
    report = sg.compact(store)
    assert len(report.merged) == 5 and len(store.list(sg.FOLDER)) == 1 and len(sg.latest(store)) == 25
    # On object stores a compaction keeps its tombstones (another compaction could still hold "k0"):
    (compacted,) = store.list(sg.FOLDER)
    assert [r.key for r in sg.decode_segment(store.get(compacted)).records if r.deleted] == ["k0"]


def test_batches_are_flushed_by_time():
    store = FsspecStore(f"memory://segments-{os.getpid()}-{random.random()}/exp")
    writer = sg.BatchSegmentWriter(store, max_records=1000, max_delay=0.05)
    writer.append(payload("a"), key="a", rev=REV)
    deadline = time.monotonic() + 60
    while not store.list(sg.FOLDER) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(sg.latest(store)) == ["a"]  # written by the timer, nobody called flush
    writer.close()


class _Counted:
    """The S3 requests a store's file system sends to the server, counted by operation as they go out."""

    def __init__(self, store: FsspecStore) -> None:
        self.calls: dict[str, int] = {}
        fs = store.fs
        real = fs._call_s3

        async def counting(method, *args, **kwargs):
            self.calls[method] = self.calls.get(method, 0) + 1
            return await real(method, *args, **kwargs)

        fs._call_s3 = counting

    def take(self) -> dict[str, int]:
        calls, self.calls = self.calls, {}
        return calls


def test_s3_requests_per_batch_counted_on_the_real_server(s3_location):
    url, options = s3_location
    store = FsspecStore(url, **options)
    counted = _Counted(store)
    with sg.BatchSegmentWriter(store, max_records=100, max_delay=0) as writer:
        for i in range(250):
            writer.append(payload(f"k{i}"), key=f"k{i}", rev=REV)
    assert counted.take() == {"put_object": 3}  # 250 records: 3 PUTs, no GET, no LIST
    found = sg.latest(store)
    assert len(found) == 250 and all(r.payload == payload(k) for k, r in found.items())
    reads = counted.take()
    assert reads.get("get_object") == 3 and reads.get("list_objects_v2") == 1, reads
    assert set(reads) <= {"get_object", "list_objects_v2", "head_object"}, reads
    report = sg.compact(store)
    assert len(report.merged) == 3
    calls = counted.take()
    assert calls.get("put_object") == 1 and calls.get("delete_object", 0) + calls.get("delete_objects", 0) == 3, calls


def test_a_crashed_s3_writer_loses_only_its_unflushed_records(s3_location):
    url, options = s3_location
    proc = _start("s3", url, json.dumps(options), "w", "57", "20")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    committed = out.split()
    assert len(committed) == 40  # two objects of 20 written; the last 17 records were never flushed
    found = sg.latest(FsspecStore(url, **options))
    assert sorted(found) == sorted(committed)
    assert all(r.payload == payload(k) for k, r in found.items())


def test_segments_are_read_again_when_one_vanishes_mid_read(tmp_path, monkeypatch):
    """A reader that lists, then finds a segment gone (compacted meanwhile), lists again and loses nothing."""
    folder = str(tmp_path)
    store = LocalStore(folder)
    _write(store, ["a"])
    _write(store, ["b"])
    real_read = sg._read
    compacted: list = []

    def read_then_compact(store_, name):
        if not compacted:  # between the listing and the first read, another process compacts
            compacted.append(None)
            monkeypatch.setattr(sg, "_read", real_read)
            compacted[0] = sg.compact(store_)
        return real_read(store_, name)

    monkeypatch.setattr(sg, "_read", read_then_compact)
    assert sorted(sg.latest(store)) == ["a", "b"]
    assert compacted[0].written and len(_segment_files(folder)) == 1
    shutil.rmtree(os.path.join(folder, sg.FOLDER))
    assert sg.latest(store) == {}
