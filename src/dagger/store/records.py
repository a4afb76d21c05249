"""How one experiment is laid out in a store, built on the five store operations.

::

    experiment.json                 what the experiment is (format, state class, root)
    states/ab/<sha>.pkl             one pickle per state (header line + pickle)
    blobs/cd/<sha256>               content-addressed large buffers, shared by all states
    meta/<sha>.<rev>.json           the commit record and slim metadata of a state
    index.json                      derived: every state's metadata in one file
    locks/<sha>.lock                advisory per-state locks
    tmp/                            in-flight writes (removed by gc)

A state exists once its ``meta`` record exists. The record is written last,
after the pickle and its blobs, so a crash leaves a complete state or none.
Metadata that changes later (tags, Function results, timings) is written as a
new revision ``<rev>`` and the older one removed; readers take the highest.
Because revisions are in file names, one directory listing tells which
entries of the index are stale, so restoring 10,000 states reads two files
and one listing instead of 10,000 files.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from dagger.errors import CodeNotFoundError, CorruptRecordError, FormatVersionError, StoreError
from dagger.hashing import FORMAT_VERSION
from dagger.store import _fastio, pickling
from dagger.store.base import Store

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
    """Whether ``text`` can name a blob (a SHA-256 in hex); stored names are checked before use."""
    return is_sha(text)


def state_key(sha: str) -> str:
    return f"states/{sha[:2]}/{sha}.pkl"


def blob_key(name: str) -> str:
    return f"blobs/{name[:2]}/{name}"


def meta_key(sha: str, rev: str) -> str:
    return f"meta/{sha}.{rev}.json"


def new_rev() -> str:
    return f"{time.time_ns():016x}{os.urandom(2).hex()}"


_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=str)


def encode_json(data: Any) -> bytes:
    return _JSON.encode(data).encode()


class Records:
    """The experiment layout on top of a :class:`~dagger.store.base.Store`."""

    def __init__(self, store: Store, blob_threshold: int = pickling.DEFAULT_THRESHOLD, verify_blobs: bool = True):
        self.store = store
        self.blob_threshold = blob_threshold
        self.verify_blobs = verify_blobs
        self._known_blobs: set[str] = set()
        # Pickles this process saved lately, so a child loads its parent without reading the
        # file back (bounded; content-addressed, so never stale; cleared at each run).
        self._recent: OrderedDict[str, tuple[bytes, list[tuple[str, int]]]] = OrderedDict()
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()

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

    def forget_recent(self) -> None:
        """Drop the in-memory copies of recently saved pickles (the next loads read the store)."""
        with self._recent_lock:
            self._recent.clear()
            self._recent_bytes = 0

    # ---- experiment record ---------------------------------------------------

    def read_experiment(self) -> dict[str, Any] | None:
        try:
            raw = self.store.get(EXPERIMENT_KEY)
        except FileNotFoundError:
            return None
        info = _parse_json(raw, EXPERIMENT_KEY)
        _check_format(info, EXPERIMENT_KEY)
        return info

    def write_experiment(self, info: dict[str, Any]) -> None:
        self.store.put(EXPERIMENT_KEY, encode_json(info))

    # ---- listing and metadata ------------------------------------------------

    def committed(self) -> dict[str, str]:
        """``{sha: newest rev}`` of every committed state, from one listing."""
        names = getattr(self.store, "names", None)
        entries = names("meta") if names else [k.rsplit("/", 1)[-1] for k in self.store.list("meta")]
        out: dict[str, str] = {}
        # One regex pass over the whole listing (a match per name costs more at 10,000 states).
        for sha, rev in _META_LINE.findall("\n".join(entries)):
            if rev > out.get(sha, ""):
                out[sha] = rev
        return out

    def read_meta(self, sha: str, rev: str) -> dict[str, Any]:
        key = meta_key(sha, rev)
        meta = _parse_json(self.store.get(key), key)
        _check_format(meta, key)
        if meta.get("sha") != sha:
            raise CorruptRecordError(f"{key} describes state {meta.get('sha')!r}, not {sha}")
        meta["rev"] = rev
        return meta

    def write_meta(self, meta: dict[str, Any], old_rev: str | None = None) -> str:
        """Write a new revision of a state's metadata (the commit record); return its rev."""
        rev = new_rev()
        if old_rev is not None and rev <= old_rev:
            rev = f"{int(old_rev[:16], 16) + 1:016x}{os.urandom(2).hex()}"
        body = {k: v for k, v in meta.items() if k != "rev"}
        self.store.put(meta_key(meta["sha"], rev), encode_json(body))
        if old_rev is not None:
            self.store.delete(meta_key(meta["sha"], old_rev))
        meta["rev"] = rev
        return rev

    # ---- state pickles and blobs ----------------------------------------------

    def _sink(self, view: memoryview) -> str:
        if view.nbytes >= _fastio.OVERLAP_MIN and _fastio.is_local(self.store):
            name = _fastio.put_blob(self.store, view, blob_key)  # hashes while writing
            self._known_blobs.add(name)
            return name
        name = pickling.sha256_of(view)
        # Always ask the store: a blob seen earlier may have been removed since by
        # `gc` in another process, and a state must never commit without its blobs.
        key = blob_key(name)
        if not self.store.exists(key):
            self.store.put(key, view)
        self._known_blobs.add(name)
        return name

    def _source(self, name: str, size: int) -> bytearray | memoryview:
        key = blob_key(name)
        digest = None
        buf: bytearray | memoryview
        try:
            if size >= _fastio.OVERLAP_MIN and _fastio.is_local(self.store):
                buf, digest = _fastio.get_blob(self.store, key, self.verify_blobs)  # hashes while reading
            else:
                buf = self.store.get_into(key)
        except FileNotFoundError:
            raise CorruptRecordError(
                f"blob {key} is missing from the store; the state cannot be restored. "
                "Run `dagger verify` to list every affected state, then recompute them."
            ) from None
        if len(buf) != size or (self.verify_blobs and (digest or pickling.sha256_of(memoryview(buf))) != name):
            raise CorruptRecordError(
                f"blob {key} does not match its content hash (expected {size} bytes, found {len(buf)}): "
                "it was modified or truncated. Run `dagger verify` and recompute the affected states."
            )
        return buf

    def save_pickle(self, sha: str, obj: Any) -> dict[str, Any]:
        """Write a state's pickle and blobs; return what its metadata records about them."""
        try:
            data, blobs = pickling.dumps(obj, self._sink, self.blob_threshold)
            # The pickle's own checksum: any damage to it (not only truncation) is caught on restore.
            checksum = pickling.sha256_of(memoryview(data))
            header = encode_json({"format": FORMAT_VERSION, "blobs": blobs, "sha256": checksum}) + b"\n"
            self.store.put(state_key(sha), header + data)
        except OSError as exc:
            raise StoreError(exc.errno, f"could not save state {sha[:12]}: {exc.strerror or exc}") from exc
        self._remember(sha, data, blobs)
        return {"pickle_bytes": len(header) + len(data), "blobs": blobs}

    def load_pickle(self, sha: str, map_location: Any = None) -> Any:
        key = state_key(sha)
        recent = self._recent.get(sha)
        if recent is not None:
            data, blobs = recent[0], recent[1]
        else:
            try:
                raw = self.store.get(key)
            except FileNotFoundError:
                raise CorruptRecordError(f"{key} is missing although state {sha[:12]} is committed") from None
            newline = raw.find(b"\n")
            if newline < 0:
                raise CorruptRecordError(f"{key} is truncated: it has no header. {_recompute_hint(sha)}")
            header = _parse_json(raw[:newline], key)
            _check_format(header, key)
            blobs = _blob_list(header.get("blobs", []), key)
            data = memoryview(raw)[newline + 1 :]
            checksum = header.get("sha256")
            if self.verify_blobs and checksum is not None and pickling.sha256_of(memoryview(data)) != checksum:
                raise CorruptRecordError(
                    f"{key} does not match its checksum ({len(data)} bytes of pickle): it was modified or "
                    f"truncated. {_recompute_hint(sha)}"
                )
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

    def load_all_meta(self, on_corrupt: Any = None) -> dict[str, dict[str, Any]]:
        """Every committed state's metadata: the index, refreshed where stale.

        The index is derived: entries whose revision no longer matches the
        listing are re-read from their records, missing ones are added,
        removed ones dropped, and a corrupt index is rebuilt from scratch.
        """
        listing = self.committed()
        index: dict[str, dict[str, Any]] = {}
        try:
            raw = json.loads(self.store.get(INDEX_KEY))
            if raw.get("format") == FORMAT_VERSION and isinstance(raw.get("states"), dict):
                index = raw["states"]
        except FileNotFoundError:
            pass
        except (ValueError, AttributeError, OSError):
            index = {}
        stale = False
        out: dict[str, dict[str, Any]] = {}
        for sha, rev in listing.items():
            meta = index.get(sha)
            if meta is not None and meta.get("rev") == rev:
                out[sha] = meta
                continue
            stale = True
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
        if stale or len(index) != len(out):
            self.write_index(out.values())
        return out

    def write_index(self, metas: Iterable[dict[str, Any]]) -> None:
        states = {m["sha"]: m for m in metas}
        try:
            self.store.put(INDEX_KEY, encode_json({"format": FORMAT_VERSION, "states": states}))
        except OSError:
            pass  # the index is an optimisation; the records are the truth


def _recompute_hint(sha: str) -> str:
    return (
        f"Run `dagger verify` to list every damaged state; to recompute this one, delete meta/{sha}.*.json "
        "and run the experiment again"
    )


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
            f"{key} is not valid JSON ({exc}); the file is truncated or was edited. Run `dagger verify` to list "
            "damaged files; a damaged meta/ record can be deleted, and its state is recomputed on the next run"
        ) from None
    if not isinstance(data, dict):
        raise CorruptRecordError(f"{key} does not hold a JSON object")
    return data


def _check_format(data: dict[str, Any], key: str) -> None:
    fmt = data.get("format")
    if not isinstance(fmt, int):
        raise CorruptRecordError(f"{key} has no format version: it was not written by dagger")
    if fmt > FORMAT_VERSION:
        raise FormatVersionError(
            f"{key} was written by a newer dagger (format {fmt}; this one reads up to {FORMAT_VERSION}). "
            "Upgrade dagger (pip install -U dagger-experiments) to read it."
        )
