"""Reading and writing an experiment's records: commit records, state pickles, blobs, the experiment record.

:class:`Records` is where a state's commit record is written (:meth:`Records.write_meta`)
and read (:meth:`Records.read_meta`, :meth:`Records.committed`), where its pickle and
blobs are saved and loaded, and where the slim index is brought up to date. The paths
are :mod:`dagger.store.layout`'s, the index file format :mod:`dagger.store.index`'s.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from dagger.errors import (
    CodeNotFoundError,
    CorruptRecordError,
    FormatVersionError,
    StoreError,
)
from dagger.hashing import FORMAT_VERSION
from dagger.store import _fastio, digest, pickling, signing
from dagger.store import segments as seglog
from dagger.store.base import Store
from dagger.store.gctune import long_lived_build, paused_gc
from dagger.store.index import _JSON, SlimIndex, StoredMetas, index_bytes, recorded_source
from dagger.store.layout import (
    _META_LINE,
    _META_NAME,
    _SHA,
    EXPERIMENT_KEY,
    FIRST_REV,
    INDEX_KEY,
    INLINE_FIELD,
    INLINE_MAX,
    NEWEST_FORMAT,
    PENDING_PICKLE,
    SEGMENT_FORMAT,
    SEGMENTS,
    SEGMENTS_ENV,
    STORE_FORMAT,
    blob_key,
    is_blob_name,
    is_sha,
    meta_key,
    new_rev,
    state_key,
)
from dagger.store.validate import meta_problem

__all__ = [  # the layout's and the index's names stay importable from here, as before the split
    "EXPERIMENT_KEY", "FIRST_REV", "INDEX_KEY", "INLINE_FIELD", "INLINE_MAX", "NEWEST_FORMAT", "PENDING_PICKLE",
    "SEGMENTS", "SEGMENTS_ENV", "SEGMENT_FORMAT", "STORE_FORMAT", "Records", "SlimIndex", "StoredMetas", "blob_key", "checksum_matches", "encode_json",
    "index_bytes", "is_blob_name", "is_sha", "long_lived_build", "meta_key", "new_rev", "paused_gc",
    "recorded_source", "state_key", "_META_LINE", "_META_NAME", "_SHA",
]

# Bound of the in-memory copies of recently saved pickles (see Records._remember).
_RECENT_MAX_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 256

def checksum_matches(header: dict[str, Any], data: Any) -> bool:
    """Whether a pickle's bytes match the checksum in its header (True if it has none: older records)."""
    for algorithm in digest.ALGORITHMS:
        expected = header.get(algorithm)
        if isinstance(expected, str):
            return digest.hexdigest(algorithm, data) == expected
    return True


def encode_json(data: Any) -> bytes:
    return _JSON.encode(data).encode()


class Records:
    """The experiment layout on top of a :class:`~dagger.store.base.Store`."""

    def __init__(
        self,
        store: Store,
        blob_threshold: int = pickling.DEFAULT_THRESHOLD,
        verify_blobs: bool = True,
        blob_hash: str | None = None,
        signing_key: bytes | str | None = None,
        segments: bool | None = None,
    ):
        self.store = store
        # Where new commit records go: True, segments; False, meta/ files; None, decided at the first write
        # (segments, unless DAGGER_SEGMENTS=0 and experiment.json says an older layout than SEGMENT_FORMAT).
        self._segments_wanted = segments
        self._to_segments: bool | None = segments
        self._writer: seglog.SegmentWriter | seglog.BatchSegmentWriter | None = None
        self._writer_lock = threading.Lock()
        self._follower: seglog.Follower | None = None
        self._where: tuple[str | None, dict[str, tuple[str, str]]] | None = None  # see record_file
        # Records queued in an object-store batch, not committed yet: {sha: (rev, bytes)} (see _append).
        self._unflushed: dict[str, tuple[str, bytes]] = {}
        #: With a key, every pickle is written signed and none is unpickled unless signed (see signing).
        self.signing_key = signing.resolve_key(signing_key)
        self._blob_hash = None if blob_hash is None else digest.check(blob_hash)
        self.blob_threshold = blob_threshold
        self.verify_blobs = verify_blobs
        self._known_blobs: set[str] = set()
        # States whose blobs or pickle file are on the store before their commit record: each
        # holds this process's writer lease (see dagger.store.leases) until its record is written.
        self._holds: dict[str, int] = {}
        self._holds_lock = threading.Lock()
        # Pickles this process saved lately, so a child loads its parent without reading the
        # file back (bounded; content-addressed, so never stale; cleared at each run).
        self._recent: OrderedDict[str, tuple[bytes, list[tuple[str, int]]]] = OrderedDict()
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        # The JSON text of each commit record this process wrote since the last index write,
        # as ``{sha: (rev, text)}``: the index embeds the same text instead of encoding it again.
        # Kept only where an index will be written from them (``keep_written``): a cluster
        # worker, which never writes the index, would otherwise gather them forever.
        self.keep_written = False
        self._written: dict[str, tuple[str, str]] = {}
        self._layout_ok = False  # experiment.json is known to say layout STORE_FORMAT (or is absent)

    def _remember(self, sha: str, data: bytes, blobs: list[tuple[str, int]]) -> None:
        size = len(data) + _ENTRY_OVERHEAD
        if size > _RECENT_MAX_BYTES // 16:
            return
        with self._recent_lock:
            if sha in self._recent:
                return
            self._recent[sha] = (data, blobs)
            self._recent_bytes += size
            while self._recent_bytes > _RECENT_MAX_BYTES:
                _, (old, _) = self._recent.popitem(last=False)
                self._recent_bytes -= len(old) + _ENTRY_OVERHEAD

    @property
    def blob_hash(self) -> str:
        """The algorithm that names this experiment's blobs (read once from ``experiment.json``)."""
        if self._blob_hash is None and self.read_experiment() is None:
            self._blob_hash = digest.DEFAULT  # a new experiment
        assert self._blob_hash is not None
        return self._blob_hash

    def forget_recent(self) -> None:
        """Drop what this process remembers of the store: recently saved pickles, the layout (at each run)."""
        with self._recent_lock:
            self._recent.clear()
            self._recent_bytes = 0
        self._written = {}
        self._layout_ok = False  # read experiment.json's layout again before carrying a pickle
        self._to_segments = self._segments_wanted
        made = getattr(self.store, "_made", None)
        if isinstance(made, set):
            made.clear()  # check the folders again for links put there since (see LocalStore._check_no_link)

    # ---- experiment record ---------------------------------------------------

    def read_experiment(self) -> dict[str, Any] | None:
        try:
            raw = self.store.get(EXPERIMENT_KEY)
        except FileNotFoundError:
            return None
        info = _parse_json(raw, EXPERIMENT_KEY)
        _check_format(info, EXPERIMENT_KEY, NEWEST_FORMAT)
        self._blob_hash = digest.check(info.get("blob_hash", digest.LEGACY), EXPERIMENT_KEY)
        self._layout_ok = info["format"] >= STORE_FORMAT
        return info

    def write_experiment(self, info: dict[str, Any]) -> None:
        self.store.put(EXPERIMENT_KEY, encode_json(info))
        self._layout_ok = info.get("format", 0) >= STORE_FORMAT

    def create_experiment(self, info: dict[str, Any]) -> dict[str, Any]:
        """Write ``experiment.json`` only if there is none; return the record the folder holds afterwards.

        The first writer wins: on a local folder the file is created with a hard link, which never
        replaces one (atomic); on an object store it is a check, then a write, then a read back, so
        a writer that lost a close race sees the winner's record. Callers compare the returned
        record with their own and refuse to go on when they differ.
        """
        stored = self.read_experiment()  # (a claimed folder needs no write: it may be read-only)
        if stored is None:
            self.store.put_if_absent(EXPERIMENT_KEY, encode_json(info))
            stored = self.read_experiment()
        return info if stored is None else stored

    def _mark_layout(self) -> None:
        """Before the first record that carries a pickle: say so in ``experiment.json`` (layout 2).

        An experiment begun by an older dagger is upgraded in place; a dagger that knows
        only layout 1 then refuses the folder (FormatVersionError) instead of reading it as
        if every pickle had its own file (and removing the blobs only carried pickles name).
        """
        info = self.read_experiment()
        if info is not None and info["format"] < STORE_FORMAT:
            self.write_experiment({**info, "format": STORE_FORMAT})
        self._layout_ok = True  # (no experiment.json: a bare store of records, nothing to mark)

    # ---- listing and metadata ------------------------------------------------

    def committed(self, entries: list[str] | None = None) -> dict[str, str]:
        """``{sha: newest rev}`` of every committed state: ``meta/`` files (one listing, or these
        file names) and segment records, the newest revision of each state winning (a tombstone
        newer than every record of a state removes it)."""
        if entries is None:
            entries = self._meta_names()
        out: dict[str, str] = {}
        # One regex pass over the whole listing (a match per name costs more at 10,000 states).
        for sha, rev in _META_LINE.findall("\n".join(entries)):
            if rev > out.get(sha, ""):
                out[sha] = rev
        for sha, record in self.segment_records().items():
            if record.rev > out.get(sha, ""):
                if record.deleted:
                    out.pop(sha, None)
                else:
                    out[sha] = record.rev
        return out

    def segment_records(self) -> dict[str, seglog.SegmentRecord]:
        """The newest segment record of each state (tombstones included), read up to date now."""
        if self._follower is None:
            self._follower = seglog.Follower(self.store)
        return self._follower.refresh()

    def segments_tag(self) -> list[str]:
        """Short strings that change whenever a segment gains a record (for a reader's "changed?" test)."""
        if self._follower is None:
            self._follower = seglog.Follower(self.store)
        return self._follower.tag()

    def record_bytes(self, sha: str, rev: str) -> bytes:
        """The bytes of ``sha``'s commit record at revision ``rev``, from a segment or its ``meta/`` file.

        FileNotFoundError if neither holds it (a newer revision replaced it, or it never was).
        """
        queued = self._unflushed.get(sha)
        if queued is not None and queued[0] == rev:
            return queued[1]
        if self._follower is not None:
            found = self._follower.records.get(sha)
            if found is not None and found.rev == rev and not found.deleted:
                return self._follower.payload(found)
        try:
            return self.store.get(meta_key(sha, rev))
        except FileNotFoundError:
            found = self.segment_records().get(sha)
            if found is not None and found.rev == rev and not found.deleted:
                return self._follower.payload(found)  # type: ignore[union-attr]
            raise

    def committed_now(self, sha: str) -> str | None:
        """The newest revision of ``sha`` if some process has committed it by now, else None.

        For the "committed meanwhile?" check before computing a state: a few probes, not a listing
        of every record. A state's first record has one known name; a state whose first record a
        newer revision replaced has a pickle file; in a segment experiment, the segments' new tails.
        """
        if self.store.exists(meta_key(sha, FIRST_REV)) or self.store.exists(state_key(sha)):
            return self.committed().get(sha)
        if self.writes_segments() or self._follower is not None:
            found = self.segment_records().get(sha)
            if found is not None and not found.deleted:
                return found.rev
        return None

    def remove_records(self, sha: str, names: list[str] | None = None) -> list[str]:
        """Remove every commit record of ``sha``: its ``meta/`` files, and in segments a tombstone.

        Returns what was removed (keys, and ``segments/<sha>`` for a tombstone). ``names``: the
        ``meta/`` listing, if the caller has it. The state then reads as never committed.
        """
        if names is None:
            names = self._meta_names()
        removed = []
        for name in names:
            if name.startswith(f"{sha}.") and _META_NAME.fullmatch(name):
                self.store.delete(f"meta/{name}")
                removed.append(f"meta/{name}")
        found = self.segment_records().get(sha)
        if found is not None and not found.deleted:
            rev = new_rev()
            if rev <= found.rev:
                rev = f"{int(found.rev[:16], 16) + 1:016x}{os.urandom(2).hex()}"
            with self._writer_lock:
                if self._writer is None:
                    self._writer = seglog.open_writer(self.store, on_flush=self._flushed)
                writer = self._writer
            writer.delete(sha, rev)
            writer.flush()
            if self._follower is not None and isinstance(writer, seglog.SegmentWriter):
                self._follower.note(writer.name, seglog.SegmentRecord(sha, rev, b"", True))
            self._unflushed.pop(sha, None)
            removed.append(f"{SEGMENTS}/{sha}")
        return removed

    def record_key(self, sha: str, rev: str) -> str:
        """Where ``sha``'s record at ``rev`` is, in words for people: its ``meta/`` file, or ``segments/<sha>.<rev>``."""
        found = self._follower.records.get(sha) if self._follower is not None else None
        if found is not None and found.rev == rev:
            return f"{SEGMENTS}/{sha}.{rev}"
        return meta_key(sha, rev)

    def record_file(self, sha: str, rev: str) -> str:
        """The key of the file that holds ``sha``'s record at ``rev``: its ``meta/`` file, or its segment.

        For people (``state.path``). The segments' map of where each record is comes from one
        read of every segment, kept while the folder's fingerprint stays the same.
        """
        key = meta_key(sha, rev)
        if self.store.exists(key):
            return key
        fingerprint = seglog.fingerprint(self.store)
        if self._where is None or fingerprint is None or self._where[0] != fingerprint:
            where: dict[str, tuple[str, str]] = {}
            for name, scan in seglog.scan_segments(self.store):
                for record in scan.records:
                    if record.rev > where.get(record.key, ("", ""))[0]:
                        where[record.key] = (record.rev, name)
            self._where = (fingerprint, where)
        found = self._where[1].get(sha)
        return f"{SEGMENTS}/{found[1]}" if found is not None and found[0] == rev else key

    def in_segments(self, sha: str) -> bool:
        """Whether a segment (or this process's queued batch) holds a record of ``sha`` (as last read)."""
        found = self._follower.records.get(sha) if self._follower is not None else None
        return sha in self._unflushed or (found is not None and not found.deleted)

    def _meta_names(self) -> list[str]:
        """The names of the files in ``meta/``."""
        names = getattr(self.store, "names", None)
        return names("meta") if names else [k.rsplit("/", 1)[-1] for k in self.store.list("meta")]

    def read_meta(self, sha: str, rev: str) -> dict[str, Any]:
        raw = self.record_bytes(sha, rev)
        key = self.record_key(sha, rev)  # (named as where it was read: its meta/ file or its segment record)
        meta = _parse_json(raw, key)
        meta.pop(INLINE_FIELD, None)  # the pickle a first record carries is no metadata
        _check_format(meta, key)
        if meta.get("sha") != sha:
            raise CorruptRecordError(f"{key} describes state {meta.get('sha')!r}, not {sha}")
        problem = meta_problem(meta)
        if problem is not None:
            raise CorruptRecordError(
                f"{key} is not a valid commit record: {problem}. The file was edited or damaged; "
                f"{_recompute_hint(sha).replace('Run', 'run', 1)}"
            )
        meta["rev"] = rev
        return meta

    def take_written(self) -> dict[str, tuple[str, str]]:
        """The ``{sha: (rev, text)}`` of the commit records written since the last call (then forgotten)."""
        written, self._written = self._written, {}
        return written

    def write_meta(self, meta: dict[str, Any], old_rev: str | None = None) -> str:
        """Write a new revision of a state's metadata (the commit record); return its rev.

        A state's first record (no ``old_rev``) is named :data:`FIRST_REV` and
        carries the pickle that :meth:`save_pickle` left pending in ``meta``.
        Before a later revision replaces it, that pickle moves to its own file.
        """
        sha = meta["sha"]
        pending = meta.pop(PENDING_PICKLE, None)
        queued = False
        try:  # any store failure on the way (moving a pickle out, the record itself) names the state
            old_in_file = old_rev is not None and not self.in_segments(sha)
            rev, text, queued = self._write_record(meta, sha, old_rev, pending)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(exc.errno, f"could not save state {sha[:12]}: {exc.strerror or exc}") from exc
        finally:
            if not queued:  # committed (or failed): its blobs need no lease any more
                self.release(sha)  # (a queued record's lease goes when its batch is written: _flushed)
        if self.keep_written:
            self._written[sha] = (rev, text)  # the index reuses the text (see write_index)
        if old_in_file:
            self.store.delete(meta_key(sha, old_rev))  # type: ignore[arg-type]
        meta["rev"] = rev
        return rev

    # ---- state pickles and blobs ----------------------------------------------

    def hold(self, sha: str) -> None:
        """Hold this process's writer lease for ``sha``: its blobs or pickle file go on the store now.

        Until :meth:`release` (which :meth:`write_meta` calls once the commit record is
        written), no ``gc`` in any process deletes a blob or pickle (see :mod:`dagger.store.leases`).
        """
        from dagger.store.leases import lease_for

        with self._holds_lock:
            first = sha not in self._holds
            self._holds[sha] = self._holds.get(sha, 0) + 1
        if first:
            try:
                lease_for(self.store).enter()
            except BaseException:
                with self._holds_lock:
                    self._holds.pop(sha, None)
                raise

    def release(self, sha: str) -> None:
        """Drop what :meth:`hold` took for ``sha`` (nothing if it holds nothing)."""
        with self._holds_lock:
            if self._holds.pop(sha, None) is None:
                return
        from dagger.store.leases import lease_for

        lease_for(self.store).exit()

    def _sink(self, view: memoryview) -> str:
        if view.nbytes >= _fastio.OVERLAP_MIN and _fastio.is_local(self.store):
            name, there = _fastio.put_blob(self.store, view, blob_key, self.blob_hash)  # hashes while writing
            if not there:
                self._known_blobs.add(name)
        else:
            name = digest.hexdigest(self.blob_hash, view)
            # Always ask the store: a blob seen earlier may have been removed since by
            # `gc` in another process, and a state must never commit without its blobs.
            key = blob_key(name)
            if not self.store.exists(key):
                self.store.put(key, view)
                self._known_blobs.add(name)
                return name
        if name not in self._known_blobs and not self._blob_intact(name, view.nbytes):
            # A blob already there that fails its hash (damaged on disk): this state's bytes replace it.
            self.store.put(blob_key(name), view)
        self._known_blobs.add(name)
        return name

    def _blob_intact(self, name: str, size: int) -> bool:
        """Whether the stored blob ``name``, found already there when saving, holds the right bytes.

        Checked once per blob and process (then remembered in ``_known_blobs``): on a
        local folder by its content hash, elsewhere by its size (reading it back costs a download).
        """
        key = blob_key(name)
        try:
            if _fastio.is_local(self.store):
                if size >= _fastio.OVERLAP_MIN:
                    _, found = _fastio.get_blob(self.store, key, self.blob_hash)
                else:
                    found = digest.hexdigest(self.blob_hash, self.store.get(key))
                return found == name
            return self.store.size(key) == size
        except FileNotFoundError:
            return False

    def _source(self, name: str, size: int) -> bytearray | memoryview:
        key = blob_key(name)
        found = None  # the content hash, where reading computed it already
        buf: bytearray | memoryview
        try:
            if size >= _fastio.OVERLAP_MIN and _fastio.is_local(self.store):
                buf, found = _fastio.get_blob(self.store, key, self.blob_hash if self.verify_blobs else None)
            else:
                buf = self.store.get_into(key)
        except FileNotFoundError:
            raise CorruptRecordError(
                f"blob {key} is missing from the store; the state cannot be restored"  # (load_pickle adds the fix)
            ) from None
        if len(buf) != size or (
            self.verify_blobs and (found or digest.hexdigest(self.blob_hash, memoryview(buf))) != name
        ):
            raise CorruptRecordError(
                f"blob {key} does not match its content hash (expected {size} bytes, found {len(buf)}): "
                "it was modified or truncated"  # (load_pickle adds how to recover)
            )
        return buf

    def _write_record(
        self, meta: dict[str, Any], sha: str, old_rev: str | None, pending: bytes | None
    ) -> tuple[str, str, bool]:
        """Write the new revision of ``sha``'s record: THE place where a commit record is written.

        Appended to this process's segment (or queued in its object-store batch), or put as
        ``meta/<sha>.<rev>.json`` (see :meth:`writes_segments`). Returns its rev, its JSON
        (without a carried pickle), and whether it waits in a batch (committed at the next flush).
        """
        to_segments = self.writes_segments()
        gone = self._follower.records.get(sha) if old_rev is None and self._follower is not None else None
        if gone is not None and gone.deleted:
            # Committed again after a tombstone (`verify --repair`, `gc --unreachable`): the record must sort
            # above the tombstone, so it cannot be the first record (FIRST_REV), nor carry the pickle.
            old_rev = gone.rev
        if old_rev is None:
            rev = FIRST_REV
            if pending is not None and not self._layout_ok:
                self._mark_layout()
        else:
            if old_rev == FIRST_REV:
                self.externalize_pickle(sha)
            if pending is not None:  # only a first record carries a pickle
                self.store.put(state_key(sha), pending)
                pending = None
            rev = new_rev()
            if rev <= old_rev:
                rev = f"{int(old_rev[:16], 16) + 1:016x}{os.urandom(2).hex()}"
        # (A computed state's metadata has no rev yet: encoded as it is, not copied first.)
        text = _JSON.encode(meta if "rev" not in meta else {k: v for k, v in meta.items() if k != "rev"})
        if pending is None:
            record = text.encode()
        else:  # the record's own JSON, plus one last field
            carried = base64.b64encode(pending).decode()
            record = f'{text[:-1]},"{INLINE_FIELD}":"{carried}"}}'.encode()
        if to_segments:
            return rev, text, self._append(sha, rev, record)
        self.store.put(meta_key(sha, rev), record)
        return rev, text, False

    def writes_segments(self) -> bool:
        """Whether this process writes commit records to segments (decided once per run, see ``__init__``)."""
        if self._to_segments is None:
            wanted = os.environ.get(SEGMENTS_ENV, "").strip() != "0"
            if not wanted:
                info = self.read_experiment()
                wanted = info is not None and info["format"] >= SEGMENT_FORMAT
            self._to_segments = wanted
        return self._to_segments

    def _append(self, sha: str, rev: str, record: bytes) -> bool:
        """Append ``record`` to this process's segment; True if it waits in a batch (object stores)."""
        # Under the lock: a run of another thread on this folder may close the writer at its end (see close).
        with self._writer_lock:
            if self._writer is None:
                info = self.read_experiment()
                if info is not None and info["format"] < SEGMENT_FORMAT:
                    self.write_experiment({**info, "format": SEGMENT_FORMAT})
                self._writer = seglog.open_writer(self.store, on_flush=self._flushed)
            writer = self._writer
            if isinstance(writer, seglog.BatchSegmentWriter):
                self._unflushed[sha] = (rev, record)  # readable here, and its lease held, until written
                try:
                    writer.append(record, key=sha, rev=rev)
                except BaseException:
                    self._unflushed.pop(sha, None)
                    raise
                return sha in self._unflushed
            at = writer.append(record, key=sha, rev=rev)
            if self._follower is not None:  # (this process's records need no reading back)
                self._follower.note(writer.name, seglog.SegmentRecord(sha, rev, record), at)
            return False

    def _flushed(self, keys: list[str]) -> None:
        """A batch of records was written (they are committed): their writer leases go."""
        for sha in keys:
            self._unflushed.pop(sha, None)
            self.release(sha)

    def flush(self) -> None:
        """Commit every record waiting in this process's batch (object stores; local appends are at once)."""
        writer = self._writer
        if writer is not None:
            writer.flush()

    def close(self) -> None:
        """Flush, seal and close this process's segment writer (a later record opens a new segment).

        Called at the end of every run, so that a process that runs many experiments holds no file
        open for each, and a run's segment is sealed (idle: compaction may take it) once it ends.
        """
        with self._writer_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.close()

    def externalize_pickle(self, sha: str) -> None:
        """Give a pickle carried by the first commit record its own file, before that record goes.

        Called before any newer revision replaces the first one, so that at every
        instant either that record or the pickle file holds the pickle.
        """
        key = state_key(sha)
        if self.store.exists(key):
            try:
                _unpack(key, self.store.get(key), sha, True)
                return
            except FormatVersionError:
                return  # written by a newer dagger: not ours to replace
            except (CorruptRecordError, FileNotFoundError):  # a stray or torn file: never keep it over a good pickle
                carried = self._intact_carried(sha)
                if carried is not None:
                    self.store.put(key, carried)
                return
        try:
            raw = self._inline_pickle(sha)
        except FileNotFoundError:
            return  # moved out meanwhile by another process: the file exists now
        if raw is not None:
            # Never over a file that appeared meanwhile: a rerun's new pickle (on_code_change="rerun"
            # in another process) must not be replaced by the one this record carried.
            self.store.put_if_absent(key, raw)

    def _intact_carried(self, sha: str) -> bytes | None:
        """The pickle ``sha``'s first record carries, if there is one and it is intact (header and checksum)."""
        try:
            raw = self._inline_pickle(sha)
            if raw is not None:
                _unpack(meta_key(sha, FIRST_REV), raw, sha, True)
            return raw
        except (FileNotFoundError, CorruptRecordError):
            return None

    def carries_pickle(self, sha: str) -> bool:
        """Whether ``sha``'s first commit record exists and carries its pickle."""
        try:
            return self._inline_pickle(sha) is not None
        except FileNotFoundError:
            return False

    def _inline_pickle(self, sha: str) -> bytes | None:
        """The pickle file's bytes carried by ``sha``'s first commit record (None if it carries none)."""
        raw = self.record_bytes(sha, FIRST_REV)
        key = self.record_key(sha, FIRST_REV)
        payload = _parse_json(raw, key).get(INLINE_FIELD)
        if payload is None:
            return None
        try:
            return base64.b64decode(payload, validate=True)
        except (TypeError, ValueError) as exc:
            raise CorruptRecordError(f"{key}: the pickle it carries is not valid base64 ({exc})") from None

    def read_pickle(self, sha: str) -> tuple[str, bytes]:
        """Where ``sha``'s pickle is kept and its bytes (JSON header line + pickle); FileNotFoundError if nowhere.

        A pickle file, else the first commit record that carries it. Looked up
        in that order, then the file once more: a reader that finds neither
        looked while another process moved the pickle out of the record.
        """
        key = state_key(sha)
        try:
            return key, self.store.get(key)
        except FileNotFoundError:
            pass
        try:
            raw = self._inline_pickle(sha)
            if raw is not None:
                return self.record_key(sha, FIRST_REV), raw
        except FileNotFoundError:
            pass
        return key, self.store.get(key)

    def read_pickle_carried(self, sha: str) -> tuple[str, bytes]:
        """The key and bytes of the pickle ``sha``'s first commit record carries; FileNotFoundError if none."""
        raw = self._inline_pickle(sha)
        if raw is None:
            raise FileNotFoundError(meta_key(sha, FIRST_REV))
        return self.record_key(sha, FIRST_REV), raw

    def save_pickle(self, sha: str, obj: Any, inline: bool = False) -> dict[str, Any]:
        """Write a state's pickle and blobs; return what its metadata records about them.

        With ``inline=True`` a pickle of at most :data:`INLINE_MAX` bytes is not
        written here: it is returned under :data:`PENDING_PICKLE`, and the
        state's first commit record (:meth:`write_meta`) carries it.
        """
        held = False

        def sink(view: memoryview) -> str:
            nonlocal held
            if not held:  # before the first blob is looked up: see dagger.store.leases
                self.hold(sha)
                held = True
            return self._sink(view)

        try:
            data, blobs = pickling.dumps(obj, sink, self.blob_threshold)
            # The pickle's own checksum: any damage to it (not only truncation) is caught on restore.
            algorithm = self.blob_hash
            checksum = digest.hexdigest(algorithm, data)
            # The header is JSON; written by hand (no encoder call per state), as `_parse_json` reads it.
            listed = encode_json(blobs).decode() if blobs else "[]"
            # It names its state (a copy in another state's record is refused), and with a key, is signed.
            signed = "" if self.signing_key is None else (
                f',"hmac":"{signing.signature(self.signing_key, sha, listed, data)}"'
            )
            header = f'{{"format":{FORMAT_VERSION},"blobs":{listed},"{algorithm}":"{checksum}","sha":"{sha}"{signed}}}\n'.encode()
            out: dict[str, Any] = {"pickle_bytes": len(header) + len(data), "blobs": blobs}
            if inline and len(header) + len(data) <= INLINE_MAX:
                out[PENDING_PICKLE] = header + data  # for write_meta: one file for the state, not two
            else:
                if not held:
                    self.hold(sha)
                    held = True
                self.store.put(state_key(sha), header + data)
        except BaseException as exc:
            if held:
                self.release(sha)
            if isinstance(exc, OSError) and not isinstance(exc, StoreError):
                raise StoreError(exc.errno, f"could not save state {sha[:12]}: {exc.strerror or exc}") from exc
            raise
        self._remember(sha, data, blobs)
        return out

    def load_pickle(self, sha: str, map_location: Any = None) -> Any:
        key = state_key(sha)
        recent = self._recent.get(sha)
        data: bytes | memoryview
        if recent is not None:
            data, blobs = recent[0], recent[1]
        else:
            try:
                key, raw = self.read_pickle(sha)
            except FileNotFoundError:
                raise CorruptRecordError(
                    f"{key} is missing although state {sha[:12]} is committed. {_recompute_hint(sha)}"
                ) from None
            try:
                header, blobs, data = _unpack(key, raw, sha, self.verify_blobs)
            except FormatVersionError:
                raise
            except CorruptRecordError:
                # A stray or torn pickle file never shadows an intact pickle that the first record carries.
                carried = self._intact_carried(sha) if key == state_key(sha) else None
                if carried is None:
                    raise
                key = self.record_key(sha, FIRST_REV)
                header, blobs, data = _unpack(key, carried, sha, self.verify_blobs)
            signing.check(header, sha, data, self.signing_key, key)  # before anything is unpickled
        try:
            return pickling.loads(data, blobs, self._source, map_location)
        except CorruptRecordError as exc:
            raise CorruptRecordError(f"{key}: {str(exc).rstrip('.')}. {_recompute_hint(sha)}") from exc
        except (ImportError, AttributeError) as exc:
            if isinstance(exc, AttributeError) and not str(exc).startswith("Can't get attribute"):
                raise
            raise CodeNotFoundError(
                f"state {sha[:12]} cannot be restored here: its pickle refers to code that cannot be imported "
                f"({type(exc).__name__}: {exc}). Make the module that defined its class (and any function it "
                "holds) importable in this environment (install it, or add its folder to sys.path), then "
                "restore again. Browsing the experiment slim needs no such code."
            ) from exc

    # ---- index ------------------------------------------------------------------

    def load_index(self, on_corrupt: Any = None) -> SlimIndex:
        """Every committed state, from the index, refreshed where stale.

        The index is derived: entries whose revision no longer matches the
        listing are re-read from their records, missing ones are added,
        removed ones dropped, and a corrupt index is rebuilt from scratch.
        When the index is up to date, only what browsing needs is parsed and
        each state's full metadata is decoded on first use
        (:meth:`SlimIndex.meta`), so opening a large experiment is quick.
        """
        names = self._meta_names()
        fingerprint = seglog.fingerprint(self.store)
        try:
            raw: bytes | None = self.store.get(INDEX_KEY)
        except OSError:  # missing, or not a readable file
            raw = None
        with paused_gc():
            index = SlimIndex.parse(self, raw)
        if index.lazy and fingerprint is not None and index.segments == fingerprint and not names:
            return index  # the segments are as they were when the index was written: no record to read
        if index.lazy and not self.segment_records() and index.lists(names):
            return index
        listing = self.committed(names)  # other files in meta/, or a leftover older revision
        if index.lazy and index.matches(listing):
            return index
        known = index.all_meta()
        out: dict[str, dict[str, Any]] = {}
        for sha, rev in listing.items():
            meta = known.get(sha)
            if meta is not None and meta.get("rev") == rev:
                out[sha] = meta
                continue
            try:
                out[sha] = self.read_meta(sha, rev)
            except FileNotFoundError:
                continue  # replaced by a newer revision since the listing
            except FormatVersionError:
                raise  # written by a newer dagger: never skip it (a rerun would overwrite it)
            except CorruptRecordError as exc:
                if on_corrupt is None:
                    raise
                on_corrupt(sha, self.record_key(sha, rev), exc)
        self.write_index(out.values())
        return SlimIndex.of(out, self)

    def load_all_meta(self, on_corrupt: Any = None) -> dict[str, dict[str, Any]]:
        """Every committed state's full metadata, by hash (see :meth:`load_index`)."""
        return self.load_index(on_corrupt).all_meta()

    def write_index(
        self,
        metas: Iterable[dict[str, Any]] | StoredMetas,
        written: dict[str, tuple[str, str]] | None = None,
        peer: Records | None = None,
    ) -> None:
        """Rewrite the index of ``metas`` (or of a run's :class:`StoredMetas`, copying unchanged states).

        ``written`` adds commit-record texts that another Records wrote (see take_written).
        ``peer``: another Records of this store in this process (the one a run's tasks wrote
        with), whose view of the segments is used to check the index against them.
        """
        written = {**self.take_written(), **(written or {})}
        try:
            segments = (peer if peer is not None and peer.store.url == self.store.url else self)._segments_now()
            if isinstance(metas, StoredMetas):
                text = metas.index_bytes(written, segments)
            else:
                text = index_bytes(metas, written, segments)
            self.store.put(INDEX_KEY, text)
        except OSError:
            pass  # the index is an optimisation; the records are the truth

    def keep_fingerprint(self, index: SlimIndex) -> None:
        """Write ``index`` again (as text, nothing decoded) if it is current but names an older fingerprint.

        For a writer that changed the segments without changing what they hold (a compaction):
        the next reader then trusts the index without reading every record.
        """
        if index.lazy and index.segments != seglog.fingerprint(self.store):
            self.write_index(StoredMetas(index))

    def _segments_now(self) -> tuple[str, dict[str, str]] | None:
        """The segments' fingerprint and every committed state read after it (for the index to keep).

        Only for a folder whose records are all in segments (no ``meta/`` file), where the
        fingerprint says whether anything changed since: see :func:`dagger.store.segments.fingerprint`.
        """
        fingerprint = seglog.fingerprint(self.store)
        if fingerprint is None or self._meta_names():
            return None
        return fingerprint, self.committed([])


def _unpack(
    key: str, raw: bytes, sha: str, check: bool
) -> tuple[dict[str, Any], list[tuple[str, int]], memoryview]:
    """The header, blob list and pickle bytes of a state pickle file's content (header line + pickle).

    CorruptRecordError if it is truncated, its header unreadable, or (``check``) its bytes
    do not match the checksum in its header.
    """
    newline = raw.find(b"\n")
    if newline < 0:
        raise CorruptRecordError(f"{key} is truncated: it has no header. {_recompute_hint(sha)}")
    header = _parse_json(raw[:newline], key)
    _check_format(header, key)
    blobs = _blob_list(header.get("blobs", []), key)
    data = memoryview(raw)[newline + 1 :]
    if check and not checksum_matches(header, data):
        raise CorruptRecordError(
            f"{key} does not match its checksum ({len(data)} bytes of pickle): it was modified or "
            f"truncated. {_recompute_hint(sha)}"
        )
    return header, blobs, data


#: How to recover from damaged files, as errors and docs/storage.md say it.
RECOVERY = (
    "run `dagger verify --repair DIR` (it removes damaged blobs and pickles and the records of the states "
    "that need them), then run the experiment again: it recomputes those states"
)


def _recompute_hint(sha: str) -> str:
    return f"To recompute state {sha[:12]} and every other damaged state, {RECOVERY}"


def _blob_list(value: Any, key: str) -> list[tuple[str, int]]:
    """The header's ``[[name, size], ...]``, each name checked to be a hash (never a path)."""
    out: list[tuple[str, int]] = []
    for item in value if isinstance(value, list) else [value]:
        if not (isinstance(item, list) and len(item) == 2 and is_blob_name(item[0]) and isinstance(item[1], int)):
            raise CorruptRecordError(
                f"{key} lists {item!r} as a blob, which is not a blob name and size (64 hex digits, bytes): "
                "the file was edited or forged. Do not restore states from this folder; run `dagger verify`."
            )
        out.append((item[0], item[1]))
    return out


def _parse_json(raw: bytes, key: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise CorruptRecordError(
            f"{key} is not valid JSON ({exc}); the file is truncated or was edited. To list every damaged file, "
            f"run `dagger verify DIR`; to recompute what they held, {RECOVERY}"
        ) from None
    if not isinstance(data, dict):
        raise CorruptRecordError(f"{key} does not hold a JSON object")
    return data


def _check_format(data: dict[str, Any], key: str, newest: int = FORMAT_VERSION) -> None:
    fmt = data.get("format")
    if not isinstance(fmt, int):
        raise CorruptRecordError(f"{key} has no format version: it was not written by dagger")
    if fmt > newest:
        raise FormatVersionError(
            f"{key} was written by a newer dagger (format {fmt}; this one reads up to {newest}). "
            "Upgrade dagger (pip install -U dagger-experiments) to read it."
        )
