"""Fast paths for large blobs on a local store: hash while writing, hash while reading.

A blob is named by its content hash (see :mod:`dagger.store.digest`), so the plain way to save one is to hash it,
then write it; to load one, to read it, then hash it to verify it. For a
buffer of hundreds of MB both steps take about as long as the disk, so doing
them one after the other halves the throughput. Here they overlap: one thread
hashes while the other writes or reads (both release the GIL), so a blob
costs about ``max(hash, I/O)`` instead of their sum.

Writing before the name is known means writing to a staging file in
``tmp/`` and renaming it once the hash is done (still atomic: the blob
appears whole or not at all). If the blob turns out to exist already, the
staging file is dropped. To avoid paying that wasted write for data that is
merely carried along unchanged (a dataset in every state), a cheap
fingerprint (size and a few sampled slices) of every blob this process wrote
or read is remembered; a buffer whose fingerprint matches one is hashed
first, then written only if it really is new.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import queue
import threading
from collections import OrderedDict
from typing import Any, TypeGuard

from dagger.store import digest
from dagger.store._local import LocalStore
from dagger.store.base import Store, check_key

#: Blobs at least this large take the overlapped path.
OVERLAP_MIN = 4 * 1024 * 1024
#: Read in chunks of this size, each hashed while the next is read.
CHUNK = 16 * 1024 * 1024

_SAMPLES = 16
_SAMPLE = 4096
_FINGERPRINTS: OrderedDict[tuple[int, bytes], str] = OrderedDict()
_FP_MAX = 4096
_FP_LOCK = threading.Lock()


def is_local(store: Store) -> TypeGuard[LocalStore]:
    return isinstance(store, LocalStore)


def _fingerprint(view: memoryview) -> tuple[int, bytes]:
    n = view.nbytes
    h = hashlib.sha256()
    step = max(n // _SAMPLES, 1)
    for i in range(_SAMPLES):
        start = min(i * step, max(n - _SAMPLE, 0))
        h.update(view[start : start + _SAMPLE])
    h.update(view[max(n - _SAMPLE, 0) :])
    return n, h.digest()


def _remember(fp: tuple[int, bytes], name: str) -> None:
    with _FP_LOCK:
        _FINGERPRINTS[fp] = name
        _FINGERPRINTS.move_to_end(fp)
        while len(_FINGERPRINTS) > _FP_MAX:
            _FINGERPRINTS.popitem(last=False)


def _path(store: LocalStore, key: str) -> str:
    return os.path.join(store.root, check_key(key))


def put_blob(store: LocalStore, view: memoryview, key_of: Any, algorithm: str) -> tuple[str, bool]:
    """Store ``view`` as a blob; return its name (its ``algorithm`` hash) and whether it was there already.

    ``key_of(name)`` is the blob's key.
    """
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    fp = _fingerprint(view)
    with _FP_LOCK:
        seen = _FINGERPRINTS.get(fp)
    if seen is not None and os.path.exists(_path(store, key_of(seen))):
        # Probably data carried along unchanged: hash first, write only if it is new after all.
        name = digest.hexdigest(algorithm, view)
        there = os.path.exists(_path(store, key_of(name)))
        if not there:
            store.put(key_of(name), view)
        _remember(fp, name)
        return name, there

    names: list[str] = []
    errors: list[BaseException] = []

    def hash_it() -> None:
        try:
            names.append(digest.hexdigest(algorithm, view))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    staging = store._tmp_path()  # (its folder made, and checked to be no link out of the experiment)
    thread = threading.Thread(target=hash_it, name="dagger-blob-hash", daemon=True)
    thread.start()
    try:
        with open(staging, "wb") as f:
            f.write(view)
            if store.fsync:
                f.flush()
                os.fsync(f.fileno())
        thread.join()
        if errors:
            raise errors[0]
        name = names[0]
        final = _path(store, key_of(name))
        there = os.path.exists(final)
        if there:
            os.remove(staging)
        else:
            store._ensure_dir(os.path.dirname(final))  # (made, and checked to be no link out)
            os.replace(staging, final)
    except BaseException:
        thread.join()
        try:
            os.remove(staging)
        except OSError:
            pass
        raise
    _remember(fp, name)
    return name, there


def get_blob(store: LocalStore, key: str, algorithm: str | None) -> tuple[memoryview, str | None]:
    """Read the blob at ``key`` into a writable buffer, and its ``algorithm`` hash (hashed while reading; None: skip).

    The buffer is anonymous memory that the kernel maps in as the file is read
    into it (no separate zero-filling pass), so that work overlaps the hashing too.
    """
    with open(_path(store, key), "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        view = memoryview(mmap.mmap(-1, size)) if size else memoryview(bytearray())
        h = digest.hasher(algorithm) if algorithm else None
        chunks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()

        def hash_chunks() -> None:
            while True:
                chunk = chunks.get()
                if chunk is None:
                    return
                h.update(chunk)  # type: ignore[union-attr]

        thread = threading.Thread(target=hash_chunks, name="dagger-blob-verify", daemon=True) if h else None
        if thread is not None:
            thread.start()
        done = 0
        try:
            while done < size:
                n = f.readinto(view[done : done + CHUNK])
                if not n:
                    raise OSError(f"{_path(store, key)} shrank while being read")
                if thread is not None:
                    chunks.put(view[done : done + n])
                done += n
        finally:
            if thread is not None:
                chunks.put(None)
                thread.join()
    name = h.hexdigest() if h is not None else None
    if name is not None:
        _remember(_fingerprint(view), name)
    return view, name
