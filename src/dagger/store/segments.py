"""Append-only segments of commit records: one file per writer process, framed, compacted later.

This module is the log-structured layer that replaces "one file per state" for
commit records (issue 21). It knows nothing of states: a record is a key (a
state's hash), a revision (newest wins) and a payload (the record's bytes).
See ``docs/storage.md`` ("Segments") for the design and the crash argument.

::

    segments/<host>-<pid>-<random>.seg     a local writer's segment: it alone appends to it
    segments/<host>-<pid>-<random>-<n>.seg an object-store writer's n-th batch (immutable)
    segments/c-<time>-<random>.seg         a compacted segment (immutable)
    segments/.<name>.open                  a segment being created or compacted (ignored by readers)

Every record is one *frame*::

    <kind: 1 byte><length: 8 hex digits><crc32: 8 hex digits><body: length bytes>\\n
    body = <key> SP <rev> SP <payload>

``kind`` is ``R`` (a record), ``D`` (a tombstone: the key is deleted as of
``rev``) or ``S`` (a seal: the writer closed the segment; nothing follows).
Immutable segments written whole (compactions, ``dagger migrate``) are stored
compressed: :data:`ZMAGIC` and then the zlib stream of their frames (about 280
bytes per trivial state's record instead of 1,460).
The CRC-32 covers the kind, the length and the body. A reader takes frames
from the start of a segment and stops at the first one that is incomplete or
does not check: a torn tail (a writer killed mid-append) is ignored, and a
record is visible only once its whole frame is there.

Use::

    with open_writer(store) as log:               # a local folder: appends; an object store: batches
        log.append(record_bytes, key=sha, rev=rev)
    newest = latest(store)                          # {key: SegmentRecord}, newest revision of each
    compact(store)                                  # many idle segments -> one
"""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

try:
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX: compaction takes sealed segments only
    fcntl = None  # type: ignore[assignment]

from dagger.store._local import LocalStore, current_pid
from dagger.store.base import Store

FOLDER = "segments"
SUFFIX = ".seg"
RECORD, DELETE, SEAL = b"R", b"D", b"S"
_KINDS = frozenset(b"RDS")
_HEAD = 17  # kind + 8 hex digits of length + 8 hex digits of CRC-32
#: The first bytes of a compressed segment (a frame starts with R, D or S, never Z).
ZMAGIC = b"Zdgz1\n"
#: zlib level for compressed segments: level 1 packs records to 282 bytes at 181 MB/s, level 6 to 268 at 88.
ZLEVEL = 1
_ZCHUNK = 1 << 16  # input per step: a damaged stream loses at most one step's output before the damage
#: The largest body a frame may hold (the length field could say up to 4 GiB; a record is small).
MAX_BODY = 256 * 1024 * 1024
#: Keys and revisions: printable ASCII without spaces (they are fields of the body).
_TOKEN = re.compile(r"[!-~]{1,256}")
_SAFE = re.compile(r"[^A-Za-z0-9.-]")


class SegmentRecord(NamedTuple):
    """One whole record read back: its key, revision, payload, and whether it is a tombstone."""

    key: str
    rev: str
    payload: bytes
    deleted: bool = False


def encode_frame(kind: bytes, key: str, rev: str, payload: bytes | bytearray | memoryview = b"") -> bytes:
    """The bytes of one frame (see the module docstring); ``ValueError`` for a key or rev it cannot hold."""
    if not (_TOKEN.fullmatch(key) and _TOKEN.fullmatch(rev)):
        raise ValueError(
            f"segment records need a key and a revision of 1-256 printable ASCII characters without spaces; "
            f"got key={key!r}, rev={rev!r}"
        )
    body = b"%s %s %s" % (key.encode(), rev.encode(), payload)
    if len(body) > MAX_BODY:
        raise ValueError(f"a segment record holds at most {MAX_BODY} bytes; this one has {len(body)}")
    head = kind + b"%08x" % len(body)
    return b"%s%08x%s\n" % (head, zlib.crc32(body, zlib.crc32(head)), body)


def _seal_frame(count: int) -> bytes:
    return encode_frame(SEAL, "seal", f"{count:x}")


@dataclass
class Scan:
    """What reading one segment found: its whole records, whether it is sealed, and any torn tail."""

    records: list[SegmentRecord] = field(default_factory=list)
    sealed: bool = False
    whole_bytes: int = 0  # where the last whole frame ends (in the frames, decompressed)
    torn_bytes: int = 0  # bytes after it (a torn tail: a writer killed mid-append; or a compressed stream cut short)
    #: Bytes before the last whole frame that are no whole frame (damage on the device, or an edit):
    #: the records they held are lost, the frames after them are read. A writer never leaves these
    #: (a failed or killed append is always its segment's tail); in a compressed segment, a damaged
    #: stream counts here (all of it after the damage).
    damaged_bytes: int = 0
    compressed: bool = False  # written whole and compressed (immutable): never read from an offset
    size: int = 0  # the bytes read (as stored: compressed where it is)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many records that all stay alive.

    Each young collection on the way would scan the growing list again: reading a million
    records took 18.8 s with it running (1.2 s for 100,000), the collector's doing.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode_segment(data: bytes) -> Scan:
    """Every whole frame of a segment's bytes, in order, stopping at the first that is not whole.

    A compressed segment is decompressed first; if its stream is damaged or cut
    short, the frames before the damage are read and the rest counts as torn.
    """
    if data[: len(ZMAGIC)] != ZMAGIC:
        with _collector_paused():
            out = _decode(data)
        out.size = len(data)
        return out
    frames, damaged = _inflate(memoryview(data)[len(ZMAGIC) :])
    with _collector_paused():
        out = _decode(frames)
    out.compressed, out.size = True, len(data)
    if damaged or (out.torn_bytes and not out.sealed):
        # Written whole, so never torn by a writer: the stream broke, and what it held after is unreadable.
        out.damaged_bytes += max(out.torn_bytes, 1)
    return out


def _inflate(stream: memoryview) -> tuple[bytes, bool]:
    """The bytes a zlib stream holds, as far as it is whole; and whether it was damaged or cut short."""
    inflater = zlib.decompressobj()
    parts: list[bytes] = []
    try:
        for start in range(0, len(stream), _ZCHUNK):
            parts.append(inflater.decompress(stream[start : start + _ZCHUNK]))
        parts.append(inflater.flush())
    except zlib.error:
        return b"".join(parts), True
    return b"".join(parts), not inflater.eof or bool(inflater.unused_data)


def compress_segment(frames: bytes | bytearray) -> bytes:
    """A whole segment's frames as a compressed segment (see :data:`ZMAGIC`)."""
    return ZMAGIC + zlib.compress(frames, ZLEVEL)


def _frame_at(data: bytes, pos: int) -> tuple[int, bytes] | None:
    """``(kind, body)`` of the whole frame that starts at ``pos`` and checks, else None."""
    n = len(data)
    if pos + _HEAD >= n or data[pos] not in _KINDS:
        return None
    try:
        length = int(data[pos + 1 : pos + 9], 16)
        crc = int(data[pos + 9 : pos + _HEAD], 16)
    except ValueError:
        return None
    end = pos + _HEAD + length
    if length < 0 or end >= n or data[end] != 10:  # 10: the frame's closing newline
        return None
    body = data[pos + _HEAD : end]
    if zlib.crc32(body, zlib.crc32(data[pos : pos + 9])) != crc:
        return None
    return data[pos], body


def _next_frame(data: bytes, pos: int) -> int:
    """Where the first whole frame after ``pos`` starts (frames follow a newline), or -1 if none does.

    Only read past damage: a writer's torn frame is its segment's tail, so any whole frame found
    after a bad one means the bytes between were damaged, and the records after them are kept.
    """
    at = data.find(b"\n", pos)
    while at != -1:
        if _frame_at(data, at + 1) is not None:
            return at + 1
        at = data.find(b"\n", at + 1)
    return -1


def _decode(data: bytes) -> Scan:
    out = Scan()
    append = out.records.append
    crc32 = zlib.crc32
    n = len(data)
    pos = whole = 0
    while pos + _HEAD < n:
        kind = data[pos]
        if kind in _KINDS:  # (the checks of _frame_at, inline: this loop reads every record)
            try:
                length = int(data[pos + 1 : pos + 9], 16)
                crc = int(data[pos + 9 : pos + _HEAD], 16)
            except ValueError:
                length = -1
            end = pos + _HEAD + length
            if length >= 0 and end < n and data[end] == 10:  # 10: the frame's closing newline
                body = data[pos + _HEAD : end]
                if crc32(body, crc32(data[pos : pos + 9])) == crc:
                    if kind == 83:  # S: sealed, nothing after it counts
                        pos = whole = end + 1
                        out.sealed = True
                        break
                    parts = body.split(b" ", 2)
                    if len(parts) == 3 and parts[0].isascii() and parts[1].isascii():
                        append(SegmentRecord(parts[0].decode(), parts[1].decode(), parts[2], kind == 68))
                        pos = whole = end + 1
                        continue
        # Not a whole frame here: a torn tail, unless a whole frame follows (then these bytes are damage).
        resume = _next_frame(data, pos)
        if resume == -1:
            break
        out.damaged_bytes += resume - pos
        pos = resume
    out.whole_bytes = whole
    out.torn_bytes = n - whole
    return out


# ---- writers -------------------------------------------------------------------------------------


def writer_name() -> str:
    """A segment name no other process or worker uses: host, pid and 48 random bits."""
    host = _SAFE.sub("_", socket.gethostname())[:40] or "host"
    return f"{host}-{current_pid()}-{os.urandom(6).hex()}"


class SegmentWriter:
    """Appends records to this process's own segment file in a local folder.

    ``append`` writes the whole frame with one ``write`` on an ``O_APPEND`` file:
    when it returns, the record is in the kernel and survives the process being
    killed (``SIGKILL`` included); with ``fsync=True`` it is also on the device
    (power loss). The segment file is created on the first append, and holds a
    kernel lock (``flock``) for as long as this writer has it open, which tells
    :func:`compact` that the segment is still growing. A writer used after
    ``fork`` starts a segment of its own in the child. Thread-safe.
    """

    def __init__(self, store: LocalStore | str, fsync: bool = False) -> None:
        self._store = store if isinstance(store, LocalStore) else LocalStore(os.fspath(store))
        self.folder = os.path.join(self._store.root, FOLDER)
        self.fsync = fsync
        self.name = ""
        self.records = 0
        self._fd = -1
        self._pid = -1
        self._size = 0
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        self._store._check_no_link(self.folder)  # never a segment through a link out of the experiment folder
        name = writer_name()
        # Created under a name readers ignore, locked, then renamed: compaction never sees it unlocked.
        hidden = os.path.join(self.folder, f".{name}.open")
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, os.path.join(self.folder, name + SUFFIX))
            if self.fsync:
                _fsync_dir(self.folder)
        except BaseException:
            os.close(fd)
            _remove(hidden)
            raise
        self._fd, self._pid, self._size, self.name, self.records = fd, current_pid(), 0, name + SUFFIX, 0

    def append(self, payload: bytes | bytearray | memoryview, key: str, rev: str) -> int:
        """Append one record; when this returns it is committed (see the class docstring).

        Returns where its frame starts in :attr:`name` (see :meth:`Follower.note`).
        """
        return self._write(encode_frame(RECORD, key, rev, payload))

    def delete(self, key: str, rev: str) -> None:
        """Append a tombstone: ``key`` is gone as of ``rev`` (a newer record brings it back)."""
        self._write(encode_frame(DELETE, key, rev))

    def _write(self, frame: bytes) -> int:
        with self._lock:
            if self._closed:
                raise ValueError("this segment writer is closed")
            if self._fd >= 0 and self._pid == current_pid() and os.fstat(self._fd).st_nlink == 0:
                # The file was removed under this writer (its folder deleted and made again, say):
                # appending there would commit nothing that any reader can find. Start a new segment.
                os.close(self._fd)
                self._fd = -1
            if self._fd < 0 or self._pid != current_pid():
                if self._fd >= 0:  # forked: the parent's file stays the parent's (its lock too: flock is shared)
                    os.close(self._fd)
                self._open()
            try:
                done = os.write(self._fd, frame)
                while done < len(frame):
                    done += os.write(self._fd, memoryview(frame)[done:])
                if self.fsync:
                    os.fsync(self._fd)
            except OSError:
                self._undo()
                raise
            at = self._size
            self._size += len(frame)
            self.records += 1
            return at

    def _undo(self) -> None:
        """After a failed append (ENOSPC, EIO): cut the partial frame off, or leave the file for a new one."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            # The torn frame stays at this file's tail (readers stop there); later records go to a new file.
            self._release()

    def flush(self) -> None:
        """Make what was appended durable as far as configured (every append is already in the kernel)."""
        with self._lock:
            if self._fd >= 0 and self.fsync and self._pid == current_pid():
                os.fsync(self._fd)

    def close(self) -> None:
        """Seal the segment (a last frame saying nothing follows) and close it; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd < 0 or self._pid != current_pid():
                return
            try:
                os.write(self._fd, _seal_frame(self.records))
                if self.fsync:
                    os.fsync(self._fd)
            except OSError:
                pass  # unsealed: compaction still takes it once its lock is gone
            self._release()

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also drops the flock
        self._fd = -1

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class BatchSegmentWriter:
    """Batches records into immutable segment objects, for stores that cannot append (S3, GCS, memory://).

    Records wait in memory and are written as one object (one PUT) when
    ``max_records`` are waiting, ``max_delay`` seconds after the first of them
    (from a timer thread), at :meth:`flush` and at :meth:`close`. A record is
    committed once the flush that carries it returned. A crash loses the records
    not flushed yet, never more: each object is written in one request, so it is
    there whole or not at all, and those states are computed again by the next
    run. A failed PUT keeps the batch, raises, and is retried by the next flush.
    """

    def __init__(
        self,
        store: Store,
        max_records: int = 1000,
        max_delay: float = 5.0,
        on_flush: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.store = store
        #: Called with the keys of the records a flush committed, once their object is written.
        self.on_flush = on_flush
        self.max_records = max_records
        self.max_delay = max_delay
        self.name = writer_name()
        self.objects = 0  # segment objects written
        self._pending: list[bytes] = []
        self._keys: list[str] = []
        self._lock = threading.RLock()
        self._timer: threading.Timer | None = None
        self._error: BaseException | None = None
        self._closed = False

    def append(self, payload: bytes | bytearray | memoryview, key: str, rev: str) -> None:
        """Queue one record; it is committed at the next flush (by count, time, ``flush`` or ``close``)."""
        self._add(encode_frame(RECORD, key, rev, payload), key)

    def delete(self, key: str, rev: str) -> None:
        """Queue a tombstone (see :meth:`SegmentWriter.delete`)."""
        self._add(encode_frame(DELETE, key, rev), key)

    def _add(self, frame: bytes, key: str) -> None:
        with self._lock:
            if self._closed:
                raise ValueError("this segment writer is closed")
            if self._error is not None:  # a timed flush failed: say so to the caller, then retry
                error, self._error = self._error, None
                raise error
            self._pending.append(frame)
            self._keys.append(key)
            if len(self._pending) >= self.max_records:
                self._flush()
            elif self._timer is None and self.max_delay > 0:
                self._timer = threading.Timer(self.max_delay, self._timed_flush)
                self._timer.daemon = True
                self._timer.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._flush()
            except BaseException as exc:  # kept for the next append or flush (the batch is kept too)
                self._error = exc

    def flush(self) -> None:
        """Write the waiting records as one segment object; when this returns they are committed."""
        with self._lock:
            self._error = None
            self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return
        frames = self._pending
        data = b"".join(frames) + _seal_frame(len(frames))
        self.store.put(f"{FOLDER}/{self.name}-{self.objects:08x}{SUFFIX}", data)
        self.objects += 1
        keys, self._pending, self._keys = self._keys, [], []
        if self.on_flush is not None:
            self.on_flush(keys)

    def close(self) -> None:
        """Flush what waits, then refuse further records; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._flush()
            self._closed = True

    def __enter__(self) -> BatchSegmentWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_writer(
    store: Store,
    fsync: bool = False,
    max_records: int = 1000,
    max_delay: float = 5.0,
    on_flush: Callable[[list[str]], None] | None = None,
) -> SegmentWriter | BatchSegmentWriter:
    """The writer for ``store``: appends to a file of its own in a local folder, batches objects elsewhere."""
    if isinstance(store, LocalStore):
        return SegmentWriter(store, fsync=fsync or store.fsync)
    return BatchSegmentWriter(store, max_records=max_records, max_delay=max_delay, on_flush=on_flush)


# ---- readers -------------------------------------------------------------------------------------


def _segment_names(store: Store) -> list[str]:
    if isinstance(store, LocalStore):
        try:
            names = os.listdir(os.path.join(store.root, FOLDER))
        except FileNotFoundError:
            return []
    else:
        names = [k.rsplit("/", 1)[-1] for k in store.list(FOLDER)]
    return sorted(n for n in names if n.endswith(SUFFIX) and not n.startswith("."))


def _read(store: Store, name: str) -> bytes:
    if isinstance(store, LocalStore):
        with open(os.path.join(store.root, FOLDER, name), "rb") as f:
            return f.read()
    return store.get(f"{FOLDER}/{name}")


def fingerprint(store: Store) -> str | None:
    """A short string that changes whenever any segment changes; None where it cannot be had cheaply.

    Taken from one listing of a local ``segments/`` folder: each segment's name, size and
    modification time. A segment's name is never reused and its bytes only grow (a failed
    append is cut back, and the next one changes the time), so two equal fingerprints mean
    the same records. A reader that read every record *after* taking a fingerprint knows
    that what it read is all there is for as long as the fingerprint stays the same (the
    slim index keeps one: see :class:`dagger.store.index.SlimIndex`). None for object stores
    and for a folder with no segment.
    """
    if not isinstance(store, LocalStore):
        return None
    parts = []
    try:
        with os.scandir(os.path.join(store.root, FOLDER)) as entries:
            for entry in entries:
                name = entry.name
                if name.endswith(SUFFIX) and not name.startswith("."):
                    st = entry.stat(follow_symlinks=False)
                    parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}")
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not parts:
        return None
    parts.sort()
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def scan_segments(store: Store) -> Iterator[tuple[str, Scan]]:
    """Each segment's name and what reading it found: one listing, then one read per segment.

    A segment that vanished between the listing and its read was compacted
    meanwhile; compaction puts its new segment in place before removing the old
    ones, so listing again finds those records. Records can come twice (a
    compacted copy and its original): :func:`latest` keeps one.
    """
    done: set[str] = set()
    while True:
        missed = False
        for name in _segment_names(store):
            if name in done:
                continue
            try:
                data = _read(store, name)
            except FileNotFoundError:
                missed = True
                continue
            done.add(name)
            yield name, decode_segment(data)
        if not missed:
            return


def read_records(store: Store) -> Iterator[SegmentRecord]:
    """Every whole record in every segment (tombstones included), in no particular order across segments."""
    for _, scan in scan_segments(store):
        yield from scan.records


def latest(store: Store) -> dict[str, SegmentRecord]:
    """The newest revision of each key (revisions compare as strings), without deleted keys."""
    return newest(read_records(store))


def newest(records: Any) -> dict[str, SegmentRecord]:
    """Of ``records``, the one with the highest revision per key; keys whose newest is a tombstone dropped."""
    return {k: r for k, r in newest_all(records).items() if not r.deleted}


class Follower:
    """The newest record of each key across all segments, kept up to date by reading only what is new.

    Segments only grow (a local writer appends) or appear whole (batches, compactions),
    so :meth:`refresh` reads a segment it has not seen in full, and of a local segment
    that is not sealed only the bytes past the last whole frame it read. A segment that
    vanished (compacted, or removed) makes it read everything again, so a tombstone that
    compaction dropped together with its record cannot leave a stale record here.
    Tombstones are kept in :attr:`records` (``deleted``); :meth:`live` leaves them out.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: dict[str, SegmentRecord] = {}
        self.torn: dict[str, int] = {}  # segment name -> bytes after its last whole frame (at the last read)
        self.damaged: dict[str, int] = {}  # segment name -> damaged bytes before its last whole frame (see Scan)
        self._seen: dict[str, tuple[int, bool]] = {}  # name -> (whole bytes read, sealed)
        self._own: set[str] = set()  # segments this process appends to: told each record (see note)
        self._at: dict[str, tuple[str, int, str]] = {}  # key -> (segment, frame offset, rev) of noted records
        self._listed = False  # a whole listing was read (every segment then listed is in _seen)
        self._lock = threading.Lock()

    def note(self, segment: str, record: SegmentRecord, at: int | None = None) -> None:
        """A record this process just appended to ``segment``: kept without reading the segment back.

        Once read in full, this process's own segment is not read again (what it appends is noted here),
        so a writer's own records cost no read; another process's are read from their segments.
        With ``at`` (where its frame starts), the record is kept without its payload, which
        :meth:`payload` reads back from the segment when asked: a run's own records then cost
        memory for their key and revision only.
        """
        with self._lock:
            self._own.add(segment)
            if segment not in self._seen and self._listed:
                # Not in the last listing, so created since, by this process, whose every append to it
                # is noted here: nothing in it needs reading (a run's own segment is not read back at its end).
                self._seen[segment] = (0, False)
            if segment in self._seen:
                known = self.records.get(record.key)
                if known is None or record.rev > known.rev:
                    if at is not None and not record.deleted:
                        self._at[record.key] = (segment, at, record.rev)
                        record = record._replace(payload=b"")
                    self.records[record.key] = record

    def payload(self, record: SegmentRecord) -> bytes:
        """``record``'s payload (one of :attr:`records`), read back from its segment if it was noted without it."""
        where = self._at.get(record.key)
        if where is None or record.payload or where[2] != record.rev:
            return record.payload
        segment, at, rev = where
        try:
            with open(os.path.join(self.store.root, FOLDER, segment), "rb") as f:  # type: ignore[attr-defined]
                f.seek(at)
                head = f.read(_HEAD)
                frame = head + f.read(int(head[1:9], 16) + 1) if len(head) == _HEAD else b""
        except (FileNotFoundError, ValueError):
            frame = b""
        found = decode_segment(frame).records
        if len(found) == 1 and found[0].key == record.key and found[0].rev == rev:
            return found[0].payload
        # Compacted away meanwhile (or damaged): read everything again, as a new reader would.
        with self._lock:
            self._reset()
        newest = self.refresh().get(record.key)
        if newest is None or newest.rev != rev or newest.deleted:
            raise FileNotFoundError(f"{FOLDER}/{segment}: the record of {record.key} at {rev} is gone")
        return newest.payload

    def refresh(self) -> dict[str, SegmentRecord]:
        """Read what is new in ``segments/``; return :attr:`records` (tombstones included)."""
        with self._lock:
            for _ in range(8):
                if self._refresh():
                    break
            return self.records

    def live(self) -> dict[str, SegmentRecord]:
        """The newest record of each key that is not deleted (after a :meth:`refresh`)."""
        return {k: r for k, r in self.refresh().items() if not r.deleted}

    def _refresh(self) -> bool:
        names = _segment_names(self.store)
        if any(name not in names for name in self._seen):
            self._reset()
        local = isinstance(self.store, LocalStore)
        records = self.records
        for name in names:
            seen = self._seen.get(name)
            if seen is not None and (seen[1] or not local or name in self._own):
                continue  # sealed, an immutable object, or this process's own (noted): read in full already
            offset = 0 if seen is None else seen[0]
            try:
                data = _read(self.store, name) if offset == 0 else _read_from(self.store, name, offset)
            except FileNotFoundError:
                self._reset()
                return False  # compacted meanwhile: the new segment is in place, list again
            scan = decode_segment(data)
            with _collector_paused():
                for record in scan.records:
                    known = records.get(record.key)
                    if known is None or record.rev > known.rev:
                        records[record.key] = record
            self._seen[name] = (offset + scan.whole_bytes, scan.sealed or scan.compressed)
            if scan.torn_bytes:
                self.torn[name] = scan.torn_bytes
            else:
                self.torn.pop(name, None)
            if scan.damaged_bytes:
                self.damaged[name] = self.damaged.get(name, 0) + scan.damaged_bytes
        self._listed = True
        return True

    def _reset(self) -> None:
        self.records = {}
        self.torn = {}
        self.damaged = {}
        self._seen = {}
        self._at = {}
        self._listed = False

    def tag(self) -> list[str]:
        """What the segments hold now, as short strings that change whenever a record is added."""
        self.refresh()
        return [f"{FOLDER}/{name}@{seen[0]}" for name, seen in sorted(self._seen.items())]


def _read_from(store: Store, name: str, offset: int) -> bytes:
    """A local segment's bytes from ``offset`` on (a segment only grows: earlier bytes never change)."""
    assert isinstance(store, LocalStore)
    with open(os.path.join(store.root, FOLDER, name), "rb") as f:
        f.seek(offset)
        return f.read()


# ---- compaction ------------------------------------------------------------------------------------


@dataclass
class Compaction:
    """What :func:`compact` did: segments merged and left alone, records kept and dropped, bytes."""

    merged: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # still being appended to: left alone
    damaged: list[str] = field(default_factory=list)  # hold damaged bytes: left alone, for `verify` and people
    written: str | None = None
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    busy: bool = False  # another compaction was running: nothing done


def compact(store: Store, min_segments: int = 2, fsync: bool = True, compress: bool = True) -> Compaction:
    """Rewrite every idle segment as one, keeping the newest revision of each key.

    A segment is idle when it is sealed (its writer closed it) or, in a local
    folder, when no process holds its lock (its writer died); segments still
    being appended to are left alone. The new segment is written under a hidden
    name, flushed to the device (``fsync``), and renamed into place *before* the
    old ones are removed: a crash in between leaves both, and readers, which
    keep the newest revision of each key, read the same thing either way.
    Tombstones are kept unless every segment of a local folder took part (then
    nothing older can come back). The new segment is compressed (``compress``). One compaction at a time per local folder
    (others return ``busy``); on object stores two at once lose nothing (each
    removes only segments whose records it wrote first) but may leave duplicates.
    """
    out = Compaction()
    folder = os.path.join(store.root, FOLDER) if isinstance(store, LocalStore) else None
    if isinstance(store, LocalStore):
        store._check_no_link(folder)  # type: ignore[arg-type]  # (never a lock nor a segment through a link)
    guard = _compaction_lock(folder) if folder else None
    if folder and guard is None:
        out.busy = True
        return out
    held: list[int] = []
    try:
        scans: list[tuple[str, Scan]] = []
        for name, scan in scan_segments(store):
            if scan.damaged_bytes:
                # Never rewritten nor removed: compaction would drop the damaged bytes for good, and with them
                # whatever a repair (or a person) could still make of them. Readers read the frames around them.
                out.damaged.append(name)
                continue
            if scan.sealed:
                scans.append((name, scan))
                continue
            fd = _idle_lock(folder, name) if folder else None
            if fd is None:
                out.live.append(name)
                continue
            held.append(fd)
            # Read again now that it is locked: its writer may have appended between the first read and its end.
            try:
                again = decode_segment(_read(store, name))
            except FileNotFoundError:  # removed meanwhile (by hand): nothing to merge
                continue
            if again.damaged_bytes:
                out.damaged.append(name)
                continue
            scans.append((name, again))
        if not scans or (len(scans) < min_segments and all(scan.compressed for _, scan in scans)):
            return out  # (one idle segment is still rewritten compressed)
        merged = newest_all(record for _, scan in scans for record in scan.records)
        sources = [(name, len(scan.records), scan.size) for name, scan in scans]
        del scans  # only the newest records stay in memory, and the new segment's bytes
        # Tombstones go only when every segment took part, under the folder's lock. On object stores,
        # where nothing stops two compactions at once, one that missed a tombstone could bring a record back.
        keep_tombstones = bool(out.live or out.damaged) or folder is None
        data = bytearray()
        for r in merged.values():
            if keep_tombstones or not r.deleted:
                data += encode_frame(DELETE if r.deleted else RECORD, r.key, r.rev, r.payload)
                out.records_out += 1
        del merged
        data += _seal_frame(out.records_out)
        packed = compress_segment(data) if compress else data
        del data
        name = f"c-{time.time_ns():016x}-{os.urandom(4).hex()}{SUFFIX}"
        _put_durably(store, name, packed, fsync)
        out.written, out.bytes_out = name, len(packed)
        del packed
        for old, count, size in sources:
            out.merged.append(old)
            out.records_in += count
            out.bytes_in += size
            if folder:
                _remove(os.path.join(folder, old))
            else:
                store.delete(f"{FOLDER}/{old}")
        if folder and fsync:
            _fsync_dir(folder)
        return out
    finally:
        for fd in held:
            os.close(fd)
        if guard is not None:
            os.close(guard)


def write_records(store: Store, records: Any, fsync: bool = True, compress: bool = True) -> str:
    """Write ``(key, rev, payload)`` records (or :class:`SegmentRecord`, tombstones too) as one sealed,
    immutable (compressed) segment; return its name.

    Written like a compaction's output (hidden name, flushed, renamed into place; one PUT on
    object stores), so it is there whole or not at all. Used to move records in (``dagger migrate``).
    """
    data = bytearray()
    count = 0
    for key, rev, payload, *deleted in records:
        data += encode_frame(DELETE if deleted and deleted[0] else RECORD, key, rev, payload)
        count += 1
    data += _seal_frame(count)
    name = f"c-{time.time_ns():016x}-{os.urandom(4).hex()}{SUFFIX}"
    _put_durably(store, name, compress_segment(data) if compress else data, fsync)
    return name


def rewrite_whole(store: Store, name: str, fsync: bool = True) -> str | None:
    """Replace segment ``name`` by a new one that holds its whole records only (its damaged bytes dropped).

    For `dagger verify --repair`: the records lost in the damage are gone either way; this makes
    the segment compactable again. The new segment is in place before the old one goes. Returns
    the new segment's name; None where ``name`` is gone, or is a local segment that a live process
    still holds open (it may append to it: removing it would lose those records).
    """
    folder = os.path.join(store.root, FOLDER) if isinstance(store, LocalStore) else None
    fd = None
    if folder:
        fd = _idle_lock(folder, name)
        if fd is None:
            return None
    try:
        scan = decode_segment(_read(store, name))
        out = write_records(store, scan.records, fsync)
        if folder:
            _remove(os.path.join(folder, name))
        else:
            store.delete(f"{FOLDER}/{name}")
        return out
    except FileNotFoundError:
        return None
    finally:
        if fd is not None:
            os.close(fd)


def newest_all(records: Any) -> dict[str, SegmentRecord]:
    """The highest revision per key, tombstones included (for compaction)."""
    out: dict[str, SegmentRecord] = {}
    get = out.get
    with _collector_paused():
        for record in records:
            known = get(record.key)
            if known is None or record.rev > known.rev:
                out[record.key] = record
    return out


def _put_durably(store: Store, name: str, data: bytes | bytearray, fsync: bool) -> None:
    if not isinstance(store, LocalStore):
        store.put(f"{FOLDER}/{name}", data)  # one request: the object is there whole or not at all
        return
    folder = os.path.join(store.root, FOLDER)
    os.makedirs(folder, exist_ok=True)
    store._check_no_link(folder)
    hidden = os.path.join(folder, f".{name}.open")
    fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        done = 0
        while done < len(data):
            done += os.write(fd, view[done:])
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(hidden, os.path.join(folder, name))
        if fsync:
            _fsync_dir(folder)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        _remove(hidden)
        raise


def _compaction_lock(folder: str) -> int | None:
    """A descriptor holding ``segments/.compact.lock``, or None if another compaction holds it."""
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, ".compact.lock"), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def _idle_lock(folder: str, name: str) -> int | None:
    """A descriptor holding the lock of an unsealed segment whose writer is gone; None while it is held."""
    if fcntl is None:
        return None  # cannot tell: only sealed segments are compacted
    try:
        fd = os.open(os.path.join(folder, name), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
