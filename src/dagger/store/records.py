"""How one experiment is laid out in a store, built on the five store operations.

::

    experiment.json                 what the experiment is (format, state class, root)
    meta/<sha>.<rev>.json           the commit record and slim metadata of a state
    states/ab/<sha>.pkl             a state's pickle (header line + pickle), where it has a file
    blobs/cd/<hash>                 content-addressed large buffers, shared by all states
                                    (named by BLAKE3, or SHA-256 in older experiments)
    index.json                      derived: every state's metadata in one file
    locks/states.ranges             advisory per-state locks (kernel byte ranges; see dagger.store.locks)
    tmp/                            in-flight writes (removed by gc)

A state exists once its ``meta`` record exists. The record is written last,
after the pickle and its blobs, so a crash leaves a complete state or none.
Metadata that changes later (tags, Function results, timings) is written as a
new revision ``<rev>`` and the older one removed; readers take the highest.
Because revisions are in file names, one directory listing tells which
entries of the index are stale, so restoring 10,000 states reads two files
and one listing instead of 10,000 files.

A state's first record has the fixed revision :data:`FIRST_REV`. When its
pickle is small (after large buffers left as blobs: the usual case) that
record carries it, base64 in its last field, so committing a state writes one
file. Before a newer revision replaces the first record, the pickle moves to
``states/ab/<sha>.pkl``; readers look there first, then in the first record.
Older experiments, with a pickle file for every state, read the same way.
"""

from __future__ import annotations

import base64
import gc
import json
import operator
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dagger.errors import (
    CodeNotFoundError,
    CorruptRecordError,
    FormatVersionError,
    StateNotFoundError,
    StoreError,
)
from dagger.hashing import FORMAT_VERSION
from dagger.store import _fastio, digest, pickling, signing
from dagger.store.base import Store
from dagger.store.validate import meta_problem

# Bound of the in-memory copies of recently saved pickles (see Records._remember).
_RECENT_MAX_BYTES = 32 * 1024 * 1024
_ENTRY_OVERHEAD = 256

EXPERIMENT_KEY = "experiment.json"
INDEX_KEY = "index.json"
_SHA = re.compile(r"[0-9a-f]{64}")
_META_NAME = re.compile(r"([0-9a-f]{64})\.([0-9a-f]{20})\.json")
_META_LINE = re.compile(r"^([0-9a-f]{64})\.([0-9a-f]{20})\.json$", re.MULTILINE)


def is_sha(text: str) -> bool:
    return isinstance(text, str) and bool(_SHA.fullmatch(text))


def is_blob_name(text: str) -> bool:
    """Whether ``text`` can name a blob (a 256-bit hash in hex); stored names are checked before use."""
    return is_sha(text)


def state_key(sha: str) -> str:
    return f"states/{sha[:2]}/{sha}.pkl"


def blob_key(name: str) -> str:
    return f"blobs/{name[:2]}/{name}"


def meta_key(sha: str, rev: str) -> str:
    return f"meta/{sha}.{rev}.json"


#: The revision of every state's first commit record: fixed (and lower than any later one), so
#: whether a state was committed is one probe for one known name.
FIRST_REV = "0" * 20
#: A pickle file of at most this many bytes (header line included) travels inside its state's
#: first commit record, as the record's last field: one file written per state instead of two.
#: Bounded so that records stay small for the readers that read them all (an index rebuild).
INLINE_MAX = 16 * 1024
INLINE_FIELD = "pickle"
#: Where save_pickle leaves a pickle for write_meta to carry (never written as metadata).
PENDING_PICKLE = "_pending_pickle"
#: The layout version in ``experiment.json``: 2 since first commit records may carry pickles.
#: (Records, pickle headers and hashes keep ``FORMAT_VERSION``: the layout changed, not they.)
#: A dagger that reads only layout 1 refuses the folder instead of missing those pickles.
STORE_FORMAT = 2


def new_rev() -> str:
    return f"{time.time_ns():016x}{os.urandom(2).hex()}"


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=str)


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
    ):
        self.store = store
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
        _check_format(info, EXPERIMENT_KEY, STORE_FORMAT)
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
        """``{sha: newest rev}`` of every committed state, from one listing (or these file names)."""
        if entries is None:
            entries = self._meta_names()
        out: dict[str, str] = {}
        # One regex pass over the whole listing (a match per name costs more at 10,000 states).
        for sha, rev in _META_LINE.findall("\n".join(entries)):
            if rev > out.get(sha, ""):
                out[sha] = rev
        return out

    def _meta_names(self) -> list[str]:
        """The names of the files in ``meta/``."""
        names = getattr(self.store, "names", None)
        return names("meta") if names else [k.rsplit("/", 1)[-1] for k in self.store.list("meta")]

    def read_meta(self, sha: str, rev: str) -> dict[str, Any]:
        key = meta_key(sha, rev)
        meta = _parse_json(self.store.get(key), key)
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
        try:  # any store failure on the way (moving a pickle out, the record itself) names the state
            rev, text = self._write_record(meta, sha, old_rev, pending)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(exc.errno, f"could not save state {sha[:12]}: {exc.strerror or exc}") from exc
        finally:
            self.release(sha)  # committed (or failed): its blobs need no lease any more
        if self.keep_written:
            self._written[sha] = (rev, text)  # the index reuses the text (see write_index)
        if old_rev is not None:
            self.store.delete(meta_key(sha, old_rev))
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
    ) -> tuple[str, str]:
        """Write the new revision of ``sha``'s record; return its rev and its JSON (without a carried pickle)."""
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
            self.store.put(meta_key(sha, rev), text.encode())
        else:  # the record's own JSON, plus one last field
            carried = base64.b64encode(pending).decode()
            self.store.put(meta_key(sha, rev), f'{text[:-1]},"{INLINE_FIELD}":"{carried}"}}'.encode())
        return rev, text

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
        key = meta_key(sha, FIRST_REV)
        payload = _parse_json(self.store.get(key), key).get(INLINE_FIELD)
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
                return meta_key(sha, FIRST_REV), raw
        except FileNotFoundError:
            pass
        return key, self.store.get(key)

    def read_pickle_carried(self, sha: str) -> tuple[str, bytes]:
        """The key and bytes of the pickle ``sha``'s first commit record carries; FileNotFoundError if none."""
        raw = self._inline_pickle(sha)
        if raw is None:
            raise FileNotFoundError(meta_key(sha, FIRST_REV))
        return meta_key(sha, FIRST_REV), raw

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
                key = meta_key(sha, FIRST_REV)
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
        try:
            raw: bytes | None = self.store.get(INDEX_KEY)
        except OSError:  # missing, or not a readable file
            raw = None
        with paused_gc():
            index = SlimIndex.parse(self, raw)
        if index.lazy and index.lists(names):
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
                on_corrupt(sha, meta_key(sha, rev), exc)
        self.write_index(out.values())
        return SlimIndex.of(out, self)

    def load_all_meta(self, on_corrupt: Any = None) -> dict[str, dict[str, Any]]:
        """Every committed state's full metadata, by hash (see :meth:`load_index`)."""
        return self.load_index(on_corrupt).all_meta()

    def write_index(
        self, metas: Iterable[dict[str, Any]] | StoredMetas, written: dict[str, tuple[str, str]] | None = None
    ) -> None:
        """Rewrite the index of ``metas`` (or of a run's :class:`StoredMetas`, copying unchanged states).

        ``written`` adds commit-record texts that another Records wrote (see take_written).
        """
        written = {**self.take_written(), **(written or {})}
        try:
            text = metas.index_bytes(written) if isinstance(metas, StoredMetas) else index_bytes(metas, written)
            self.store.put(INDEX_KEY, text)
        except OSError:
            pass  # the index is an optimisation; the records are the truth


# ---- the index file ---------------------------------------------------------------
#
# index.json is one JSON object, written as
#
#   {"format":"F+index2","states":{sha:{"rev":R,"at":N},...},
#    "columns":{"properties":[P,...],"parent":[...],"depth":[...],"p":[...],"tags":[[...],...],
#               "sources":[S,...],"src":[...]},
#    "metas":[META,...]}
#
# States are in tree order (depth, then creation). "columns" hold, in that
# order, what browsing needs: the parent's place (-1 for a root, -2 when the
# parent is not indexed), the depth, the root properties (a place in the table
# of distinct ones) and the tags; then what a cached rerun needs: the recorded
# source hash of the recipe that made the state (a place in the table of
# distinct ones, -1 for none; optional, as indexes written before it lack it).
# "at" is where the state's full metadata
# starts, counted from just after "metas":[ (the text is ASCII, so characters
# and bytes agree). Opening an experiment parses the head only and decodes a
# state's metadata on first use; a decoded record must name its state and
# revision, else the meta record itself is read. A file in any other shape
# (edited, reformatted, an older layout) is read as plain JSON and rewritten.
# "format" is not the plain format number, so that a dagger that only knows the
# first layout (full metadata per state) ignores this file and rebuilds it.

@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many objects that all stay alive.

    Each collection on the way would scan them again for nothing (a third of
    the time of opening a 10,000-state experiment). It runs again afterwards,
    unless it was off already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@contextmanager
def long_lived_build() -> Iterator[None]:
    """Build many objects that all live until the run ends: collector paused, then none of them scanned.

    Afterwards they go straight to the oldest generation (``gc.freeze`` then
    ``gc.unfreeze``: two list splices). Left young, the collector would scan all
    of them in each younger generation and then count them towards a full
    collection (in a cold run of 2,000 states, 55 ms: a tenth of the run).
    Nothing is pinned: any full collection (a recipe's ``gc.collect()``) still
    scans them. Young garbage made before is collected first, as it soon would
    have been. Skipped when the process uses ``gc.freeze`` itself.
    """
    if not gc.isenabled():
        yield
        return
    gc.collect(0)
    with paused_gc():
        yield
        if not gc.get_freeze_count():  # (a build that raised leaves its objects young)
            gc.freeze()
            gc.unfreeze()


_INDEX_FORMAT = f"{FORMAT_VERSION}+index2"
_INDEX_HEAD = f'{{"format":"{_INDEX_FORMAT}","states":'
_DECODER = json.JSONDecoder()
_METAS_START = b',"metas":['
_NO_PARENT = -1
_UNINDEXED_PARENT = -2


def recorded_source(meta: dict[str, Any]) -> str | None:
    """The source hash of the recipe that made a state, as its metadata records it (None if none)."""
    recipe = meta.get("recipe")
    source = recipe.get("source") if type(recipe) is dict else None
    return source if type(source) is str and source else None


_first = operator.itemgetter(0)

# One state of the index as the writer needs it: (order, sha, rev, depth, parent sha, root
# properties, tags, recipe source hash, the state's metadata as JSON text).
_Row = tuple[Any, str, Any, Any, Any, Any, Any, "str | None", str]


def _meta_row(meta: dict[str, Any], written: dict[str, tuple[str, str]], order: Any) -> _Row:
    sha, rev = meta["sha"], meta.get("rev")
    known = written.get(sha)
    if known is not None and known[0] == rev and len(known[1]) > 2:
        text = f'{known[1][:-1]},"rev":"{rev}"}}'
    else:
        text = _JSON.encode(meta)
    depth = meta.get("depth", 0)
    return (order, sha, rev, depth, meta.get("parent"), meta.get("properties"), meta.get("tags") or [], recorded_source(meta), text)


def index_bytes(metas: Iterable[dict[str, Any]], written: dict[str, tuple[str, str]] | None = None) -> bytes:
    """The text of ``index.json`` for these metadata records (see the layout above).

    ``written`` maps a sha to ``(rev, text)``, the JSON of its commit record as just written
    (without its rev): a record of the same rev is embedded from that text, not encoded again.
    """
    written = written or {}
    with paused_gc():
        rows = [_meta_row(m, written, (m.get("depth", 0), m.get("created", 0))) for m in metas]
        return _index_text(rows)


def _index_text(rows: list[_Row]) -> bytes:
    encode = _JSON.encode
    rows.sort(key=_first)
    place = {row[1]: i for i, row in enumerate(rows)}
    table: dict[str, int] = {}
    states: dict[str, dict[str, Any]] = {}
    parent: list[int] = []
    depth: list[Any] = []
    props: list[int] = []
    tags: list[Any] = []
    parts: list[str] = []
    offset = 0
    last: Any = object()
    p = 0
    sources: dict[str, int] = {}
    src: list[int] = []
    for _, sha, rev, level, up, root, labels, source, text in rows:
        states[sha] = {"rev": rev, "at": offset}
        parent.append(_NO_PARENT if up is None else place.get(up, _UNINDEXED_PARENT))
        depth.append(level)
        if root is not last and root != last:  # states of one tree share their root's properties
            p = table.setdefault(encode(root), len(table))
            last = root
        props.append(p)
        tags.append(labels)
        src.append(-1 if source is None else sources.setdefault(source, len(sources)))
        parts.append(text)
        offset += len(text) + 1  # and the comma
    columns = encode({"parent": parent, "depth": depth, "p": props, "tags": tags, "sources": list(sources), "src": src})
    head = f'{_INDEX_HEAD}{encode(states)},"columns":{{"properties":[{",".join(table)}],{columns[1:]},"metas":['
    return (head + ",".join(parts) + "]}").encode()


def _ints(column: Any, n: int, low: int, high: int) -> bool:
    """Whether ``column`` is a list of ``n`` ints in ``[low, high)``."""
    if type(column) is not list or len(column) != n:
        return False
    return not n or (set(map(type, column)) == {int} and low <= min(column) and max(column) < high)


def _describes(meta: Any, sha: str, rev: Any) -> bool:
    """Whether ``meta`` (decoded from the index) is the metadata of ``sha`` at revision ``rev``."""
    return type(meta) is dict and meta.get("sha") == sha and meta.get("rev") == rev and meta_problem(meta) is None


class SlimIndex:
    """Every state of an experiment, with each state's full metadata decoded on demand.

    ``lazy``: parsed from an up-to-date index file; ``shas`` lists the states
    in tree order and the columns (``parent``, ``depth``, ``p``, ``tags``,
    ``properties``) hold what browsing needs, in the same order. Otherwise
    ``decoded`` holds every state's full metadata. :meth:`meta` gives one
    state's full metadata, :meth:`entry` its browsing fields.
    """

    def __init__(self, records: Records) -> None:
        self.records = records
        self.lazy = False
        self.states: dict[str, dict[str, Any]] = {}  # from the file: {"rev", "at"} by hash
        self.shas: list[str] = []
        self.properties: list[Any] = []
        self.parent: list[int] = []
        self.depth: list[int] = []
        self.p: list[int] = []
        self.tags: list[list[str]] = []
        self.sources: list[str] = []
        self.src: list[int] | None = None  # absent from indexes written before it
        self.decoded: dict[str, dict[str, Any]] = {}
        self._raw = b""
        self._text = ""
        self._base = 0
        self._place: dict[str, int] | None = None

    @classmethod
    def of(cls, metas: dict[str, dict[str, Any]], records: Records) -> SlimIndex:
        """An index of metadata already in memory."""
        index = cls(records)
        index.decoded = dict(metas)
        return index

    @classmethod
    def parse(cls, records: Records, raw: bytes | None) -> SlimIndex:
        """The index in ``raw`` (the bytes of index.json); empty when it is missing or unreadable."""
        index = cls(records)
        if not raw:
            return index
        if raw.startswith(_INDEX_HEAD.encode()):
            try:
                if index._parse_head(raw):
                    return index
            except (ValueError, TypeError):
                pass
            index = cls(records)  # damaged after its head: read it as plain JSON
        try:
            index._parse_any(raw.decode())
        except UnicodeDecodeError:
            pass
        return index

    def _parse_head(self, raw: bytes) -> bool:
        # The head ends where the metadata starts: that text cannot occur earlier, as JSON escapes
        # every quote inside a string. Only the head is decoded now; the rest on first use.
        end = raw.find(_METAS_START)
        if end < 0 or not raw.endswith(b"]}"):
            return False
        text = raw[:end].decode() + _METAS_START.decode()
        states, pos = _DECODER.raw_decode(text, len(_INDEX_HEAD))
        if not text.startswith(',"columns":', pos):
            return False
        columns, pos = _DECODER.raw_decode(text, pos + 11)
        if pos != end:
            return False
        if type(states) is not dict or type(columns) is not dict or set(map(type, states.values())) - {dict}:
            return False
        n = len(states)
        props, tags = columns.get("properties"), columns.get("tags")
        if not (
            type(props) is list
            and type(tags) is list
            and len(tags) == n
            and not set(map(type, tags)) - {list}
            and all(type(t) is str for labels in tags for t in labels)
            and _ints(columns.get("parent"), n, _UNINDEXED_PARENT, n)
            and _ints(columns.get("depth"), n, 0, 1 << 62)
            and _ints(columns.get("p"), n, 0, len(props))
        ):
            return False
        self.states = states
        self.shas = list(states)
        self.properties = props
        self.parent, self.depth, self.p, self.tags = columns["parent"], columns["depth"], columns["p"], tags
        sources, src = columns.get("sources"), columns.get("src")
        if type(sources) is list and not set(map(type, sources)) - {str} and _ints(src, n, -1, len(sources)):
            self.sources, self.src = sources, src
        self._raw = raw
        self._base = end + len(_METAS_START)
        self.lazy = True
        return True

    def _parse_any(self, text: str) -> None:
        """Any other shape of the file: plain JSON, this layout or the first (full metadata per state)."""
        try:
            data = json.loads(text)
        except ValueError:
            return
        if type(data) is not dict or type(data.get("states")) is not dict:
            return
        if data.get("format") == _INDEX_FORMAT:
            metas = data.get("metas")
        elif data.get("format") == FORMAT_VERSION:  # the first layout
            metas = list(data["states"].values())
        else:
            return
        if type(metas) is not list:
            return
        for (sha, entry), meta in zip(data["states"].items(), metas, strict=False):
            if type(entry) is dict and _describes(meta, sha, entry.get("rev")):
                self.decoded[sha] = meta

    def matches(self, listing: dict[str, str]) -> bool:
        """Whether the index holds exactly these states at these revisions."""
        if len(listing) != len(self.states):
            return False
        get = listing.get
        return all(get(sha) == entry.get("rev") for sha, entry in self.states.items())

    def lists(self, names: list[str]) -> bool:
        """Whether the index holds exactly the states and revisions that these ``meta/`` file names do."""
        if len(names) != len(self.states):
            return False
        return set(names) == {f"{sha}.{entry.get('rev')}.json" for sha, entry in self.states.items()}

    def __len__(self) -> int:
        return len(self.shas) if self.lazy else len(self.decoded)

    def __contains__(self, sha: object) -> bool:
        return sha in (self.states if self.lazy else self.decoded)

    def _position(self, sha: str) -> int:
        if self._place is None:
            self._place = {s: i for i, s in enumerate(self.shas)}
        return self._place[sha]

    def source(self, sha: str) -> str | None:
        """The recorded source hash of the recipe that made ``sha`` (from the column, else its metadata)."""
        if self.lazy and self.src is not None and sha not in self.decoded:
            k = self.src[self._position(sha)]
            return None if k < 0 else self.sources[k]
        return recorded_source(self.meta(sha))

    def meta(self, sha: str) -> dict[str, Any]:
        """The full metadata of state ``sha``, decoded once (or read from its record)."""
        meta = self.decoded.get(sha)
        if meta is None:
            entry = self.states[sha]
            meta = self._from_text(sha, entry) or self._from_record(sha, entry.get("rev"))
            self.decoded[sha] = meta
        return meta

    def entry(self, sha: str) -> dict[str, Any]:
        """What browsing reads of a state (``parent``, ``depth``, ``tags``), without decoding it."""
        if not self.lazy or sha in self.decoded:
            return self.meta(sha)
        i = self._position(sha)
        up = self.parent[i]
        if up == _UNINDEXED_PARENT:
            return self.meta(sha)
        return {"parent": None if up < 0 else self.shas[up], "depth": self.depth[i], "tags": self.tags[i]}

    def spliced_rows(self, skip: set[str]) -> tuple[list[_Row], list[str]]:
        """Index rows for the states not in ``skip``, their metadata taken as text from this file.

        Each state's text is checked to start as its own record does (format and hash) and
        to end where the next begins; the hashes whose text or columns do not serve are
        returned apart, for their metadata to be decoded. Order: depth, then place here.
        """
        if not self.lazy or self.src is None:
            return [], [sha for sha in self.shas if sha not in skip]
        text = self._decoded_text()
        base, n = self._base, len(self.shas)
        starts: list[Any] = [entry.get("at") for entry in self.states.values()]
        rows: list[_Row] = []
        rest: list[str] = []
        shas, parent, depth, props, p, tags, sources, src = (
            self.shas, self.parent, self.depth, self.properties, self.p, self.tags, self.sources, self.src
        )
        for i, sha in enumerate(shas):
            if sha in skip:
                continue
            at = starts[i]
            following = len(text) - 1 - base if i == n - 1 else starts[i + 1]  # after "]" or ","
            end = base + following - 1 if type(following) is int else -1
            up = parent[i]
            if (
                type(at) is not int
                or up == _UNINDEXED_PARENT
                or not text.startswith(f'{{"format":{FORMAT_VERSION},"sha":"{sha}"', base + at)
                or text[end - 1 : end + 1] not in ("},", "}]")
            ):
                rest.append(sha)
                continue
            k = src[i]
            rows.append(
                (
                    (depth[i], 0, i),
                    sha,
                    self.states[sha].get("rev"),
                    depth[i],
                    None if up < 0 else shas[up],
                    props[p[i]],
                    tags[i],
                    None if k < 0 else sources[k],
                    text[base + at : end],
                )
            )
        return rows, rest

    def all_meta(self) -> dict[str, dict[str, Any]]:
        """Every state's full metadata, by hash (the undecoded ones decoded in one pass)."""
        if not self.lazy:
            return dict(self.decoded)
        decoded = self.decoded
        if len(decoded) < len(self.shas):
            try:
                metas, _ = _DECODER.raw_decode(self._decoded_text(), self._base - 1)
            except ValueError:
                metas = []
            for (sha, entry), meta in zip(self.states.items(), metas if type(metas) is list else [], strict=False):
                if sha not in decoded and _describes(meta, sha, entry.get("rev")):
                    decoded[sha] = meta
        return {sha: self.meta(sha) for sha in self.shas}

    def _from_text(self, sha: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        at = entry.get("at")
        if not (self._raw or self._text) or type(at) is not int or at < 0:
            return None
        try:
            text = self._decoded_text()
            meta, end = _DECODER.raw_decode(text, self._base + at)
        except ValueError:  # UnicodeDecodeError included
            return None
        if text[end : end + 1] not in (",", "]") or not _describes(meta, sha, entry.get("rev")):
            return None
        return meta

    def _decoded_text(self) -> str:
        """The whole index as text (decoded on first use; ASCII, so offsets in bytes hold)."""
        if not self._text:
            self._text = self._raw.decode()
            self._raw = b""
        return self._text

    def _from_record(self, sha: str, rev: Any) -> dict[str, Any]:
        try:
            return self.records.read_meta(sha, str(rev))
        except FileNotFoundError:
            newest = self.records.committed().get(sha)
            if newest is None:
                msg = f"state {sha[:12]} was removed from the store after the experiment was opened"
                raise StateNotFoundError(msg) from None
            return self.records.read_meta(sha, newest)


class StoredMetas:
    """The committed states' metadata for one run, decoded from the index only where needed.

    A fully cached rerun asks only which states exist, their tags and the
    recorded source hashes of their recipes, which the index's columns hold;
    a state's full metadata is decoded when a run needs it (to compute or
    evaluate the state, or to rewrite the index).
    """

    def __init__(self, index: SlimIndex) -> None:
        self.index = index
        self.added: dict[str, dict[str, Any]] = {}

    def __contains__(self, sha: object) -> bool:
        return sha in self.added or sha in self.index

    def get(self, sha: str, default: Any = None) -> Any:
        meta = self.added.get(sha)
        if meta is not None:
            return meta
        return self.index.meta(sha) if sha in self.index else default

    def __getitem__(self, sha: str) -> dict[str, Any]:
        meta = self.get(sha)
        if meta is None:
            raise KeyError(sha)
        return meta  # type: ignore[no-any-return]

    def __setitem__(self, sha: str, meta: dict[str, Any]) -> None:
        self.added[sha] = meta

    def tags(self, sha: str) -> list[str]:
        meta = self.added.get(sha)
        return list((meta if meta is not None else self.index.entry(sha)).get("tags") or [])

    def source(self, sha: str) -> str | None:
        """The recorded source hash of the recipe that made ``sha`` (None if none, or not stored)."""
        meta = self.added.get(sha)
        if meta is not None:
            return recorded_source(meta)
        return self.index.source(sha) if sha in self.index else None

    def values(self) -> Iterable[dict[str, Any]]:
        """Every state's full metadata (all decoded)."""
        metas = self.index.all_meta()
        metas.update(self.added)
        return metas.values()

    def index_bytes(self, written: dict[str, tuple[str, str]]) -> bytes:
        """The new index: states whose metadata did not change are copied from the old one as text.

        Adding a few states to a large experiment then neither decodes nor encodes the
        metadata of the others. Changed states (added, or given a new revision by this
        run) are written from their metadata, as :func:`index_bytes` does.
        """
        index = self.index
        if not index.lazy:
            return index_bytes(self.values(), written)
        changed = set(self.added)
        changed.update(sha for sha, meta in index.decoded.items() if meta.get("rev") != index.states[sha].get("rev"))
        with paused_gc():
            rows, rest = index.spliced_rows(changed)
            for sha in rest + sorted(changed):  # sorted: the same index whatever the set's order
                meta = self.get(sha)
                level = meta.get("depth", 0)
                order = (level, 0, index._position(sha)) if sha in index else (level, 1, meta.get("created", 0))
                rows.append(_meta_row(meta, written, order))
            return _index_text(rows)


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
