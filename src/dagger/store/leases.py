"""Writer leases and the gc handshake: no ``gc`` ever deletes a file that a state being saved needs.

A state's blobs (and a large pickle's file) are written *before* its commit
record, so for a moment they are on the store and referenced by nothing. A
``gc`` running beside the writer, in any process on any host, must not take
them for garbage. The writer may also *reuse* a blob already there (same
content, same name) without writing it: that blob, too, must outlive gc.

Two kinds of small files in ``leases/`` make this hold, with no clock and no
lock shared between the processes, on any store whose operations are
linearizable (a local folder, S3, GCS, ``memory://``):

- a **writer lease** ``leases/w-<token>.json``: present while the process
  saves a state that writes blobs or a pickle file, from before its first
  blob is looked up until after its commit record is written (threads of one
  process share it; a heartbeat rewrites it every :data:`HEARTBEAT_S`);
- a **gc marker** ``leases/gc-<token>.json``: present while a ``gc`` decides
  and deletes in-flight-able files (unreferenced blobs, uncommitted pickles,
  temporary files).

Writer: (1) write the lease, (2) wait while a live gc marker exists, (3) look
up / write blobs and the pickle, (4) write the commit record, (5) drop the lease.
gc: (a) list the files and read the records, (g) write its marker, (c) read
the leases: any live one, and it deletes none of those files; else (b) list
the records again and add the blobs of states committed meanwhile,
(d) delete what is still unreferenced, then remove the marker.

Why no blob in use is ever deleted: take a writer's lease written at ``p``
and the gc's lease read at ``c``. If ``p < c``, gc sees the lease unless it
was already dropped (5), and then the commit record (4) came before ``c`` and
so before the second listing (b): the blob is referenced. If ``p > c``, the
writer looks for markers (2) after ``p > c > g``: it finds gc's marker and
waits until gc has deleted all it will, so the writer's look-up (3) sees the
store as gc left it and writes whatever blob is missing. Either way no blob
the writer relies on is deleted. Markers and leases carry their owner (host,
pid, time): one whose process is gone (same host), or older than
:data:`STALE_S` without a heartbeat, is stale and ignored, so a killed
writer or gc blocks nobody for long.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import weakref
from typing import Any

from dagger.store.base import Store
from dagger.store.locks import _is_stale

#: The folder of writer leases and gc markers.
FOLDER = "leases"
WRITER_PREFIX = "w-"
GC_PREFIX = "gc-"
#: How often a writer process rewrites its lease while it saves (its heartbeat).
HEARTBEAT_S = 30.0
#: A lease or marker not rewritten for this long is stale (its owner hung or died on another host).
STALE_S = 600.0
#: How long a writer waits at most for a live gc marker before it goes on regardless.
WAIT_FOR_GC_S = STALE_S

_HOST = socket.gethostname()


def _owner(token: str) -> bytes:
    return json.dumps({"host": _HOST, "pid": os.getpid(), "time": time.time(), "token": token}).encode()


def _key(prefix: str, token: str) -> str:
    """The file of one lease or marker: its kind, host, process and token."""
    return f"{FOLDER}/{prefix}{_HOST.replace('/', '_')}-{os.getpid()}-{token[:12]}.json"


def _entries(store: Store, prefix: str) -> list[str]:
    """Keys of the leases (``w-``) or markers (``gc-``) in the store."""
    return [k for k in store.list(FOLDER) if k.rsplit("/", 1)[-1].startswith(prefix) and k.endswith(".json")]


def live(store: Store, prefix: str, stale: list[str] | None = None) -> int:
    """How many live leases (``prefix="w-"``) or gc markers (``"gc-"``) the store holds; stale keys go to ``stale``."""
    count = 0
    for key in _entries(store, prefix):
        try:
            raw = store.get(key)
        except FileNotFoundError:
            continue
        # An empty or unreadable one is being written right now (or its writer died in that instant).
        if _is_stale(raw, STALE_S, file_age=0.0 if raw else None):
            if stale is not None:
                stale.append(key)
        else:
            count += 1
    return count


class WriterLease:
    """This process's lease on one store: held while any of its threads saves a state."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.token = uuid.uuid4().hex
        self.key = _key(WRITER_PREFIX, self.token)
        self.count = 0
        self.mutex = threading.Lock()
        self._beat: threading.Thread | None = None

    def enter(self) -> None:
        """Announce a save in progress (1), then wait while a gc is deleting (2). Pair with :meth:`exit`."""
        with self.mutex:
            self.count += 1
            if self.count == 1:
                try:
                    self.store.put(self.key, _owner(self.token))
                except BaseException:
                    self.count -= 1
                    raise
                if self._beat is None:
                    self._beat = threading.Thread(target=self._heartbeat, name="dagger-lease", daemon=True)
                    self._beat.start()
        # Every save looks, even when the lease was up already: a gc may have read the leases
        # before it was written, and be deleting now.
        deadline = time.monotonic() + WAIT_FOR_GC_S
        delay = 0.005
        while live(self.store, GC_PREFIX) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def exit(self) -> None:
        """The save that :meth:`enter` announced is committed (or failed): drop the lease when none is left."""
        with self.mutex:
            self.count -= 1
            if self.count == 0:
                self.store.delete(self.key)

    def _heartbeat(self) -> None:
        """Rewrite the lease every HEARTBEAT_S while it is held; end once it is not (the next enter starts another)."""
        while True:
            time.sleep(HEARTBEAT_S)
            with self.mutex:
                if self.count == 0:
                    self._beat = None
                    return
                try:
                    self.store.put(self.key, _owner(self.token))
                except Exception:  # noqa: BLE001 - the next beat tries again
                    pass


_LEASES: weakref.WeakKeyDictionary[Store, WriterLease] = weakref.WeakKeyDictionary()
_LEASES_LOCK = threading.Lock()


def lease_for(store: Store) -> WriterLease:
    """The lease of this process on ``store`` (one per store object and process, also after fork)."""
    lease = _LEASES.get(store)
    if lease is None:
        with _LEASES_LOCK:
            lease = _LEASES.get(store)
            if lease is None:
                lease = _LEASES[store] = WriterLease(store)
    return lease


def _after_fork_in_child() -> None:
    # A forked child holds none of its parent's leases (its saves take their own, under its own pid).
    global _LEASES, _LEASES_LOCK
    _LEASES = weakref.WeakKeyDictionary()
    _LEASES_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class GcMarker:
    """A gc's marker (g): written before it reads the leases, removed once it has deleted."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.token = uuid.uuid4().hex
        self.key = _key(GC_PREFIX, self.token)
        self.written = 0.0

    def __enter__(self) -> GcMarker:
        self.store.put(self.key, _owner(self.token))
        self.written = time.monotonic()
        return self

    def refresh(self) -> None:
        """Rewrite the marker when it gets old, so writers never take a long gc for a dead one."""
        if time.monotonic() - self.written > HEARTBEAT_S:
            self.store.put(self.key, _owner(self.token))
            self.written = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        self.store.delete(self.key)
