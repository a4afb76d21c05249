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
import threading
from collections import OrderedDict
from typing import Any, TypeGuard

from dagger.store import digest
from dagger.store._local import LocalStore
from dagger.store.base import Store, check_key

#: Blobs at least this large take the overlapped path.
OVERLAP_MIN = 4 * 1024 * 1024
#: Read in chunks of at most this size, each hashed while the next are read. Large chunks keep
#: BLAKE3's threads busy and the readers' system calls few: a 512 MiB blob on 2 cores restored in
#: 0.26 s with 64 MiB chunks against 0.37 s with 16 MiB ones (medians of 5, interleaved).
CHUNK = 64 * 1024 * 1024
#: ... and at least this size: a blob is cut into about 8 chunks, so hashing starts early.
MIN_CHUNK = 4 * 1024 * 1024

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


#: Threads that read a large blob's chunks at once (each into its own part of the final buffer).
READERS = max(1, min(4, os.cpu_count() or 1))


def _verify_hasher(algorithm: str) -> digest.Hasher:
    """A hasher for verifying a blob; BLAKE3's hashes each chunk on all cores (it releases the GIL)."""
    h = digest.hasher(algorithm)
    if algorithm == "blake3":
        cls: Any = type(h)
        return cls(max_threads=cls.AUTO)  # type: ignore[no-any-return]
    return h


def _new_buffer(size: int) -> memoryview:
    """Anonymous memory for a blob of ``size`` bytes, asked for in huge pages where the kernel offers them.

    Reading into it faults every page in; with 2 MiB pages (transparent huge
    pages in ``madvise`` mode, the common default) that is 512 faults per GiB
    instead of 262,144. Nothing is zero-filled ahead of the read.
    """
    mm = mmap.mmap(-1, size)
    advise = getattr(mmap, "MADV_HUGEPAGE", None)
    if advise is not None:
        try:
            mm.madvise(advise)
        except OSError:
            pass
    return memoryview(mm)


def get_blob(store: LocalStore, key: str, algorithm: str | None) -> tuple[memoryview, str | None]:
    """Read the blob at ``key`` into a writable buffer, and its ``algorithm`` hash (hashed while reading; None: skip).

    The blob is read straight into its final buffer (no copy after the read),
    in chunks of :data:`CHUNK`: :data:`READERS` threads each ``preadv`` the next
    unread chunk into its place, while this thread hashes the chunks in order
    as each one lands (BLAKE3 on all cores). Reading, hashing and placement
    overlap, and each is parallel where the machine has the cores; the result
    is the same hash as one pass over the file.
    """
    path = _path(store, key)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        size = os.fstat(fd).st_size
        if not size:
            return memoryview(bytearray()), (digest.hexdigest(algorithm, b"") if algorithm else None)
        view = _new_buffer(size)
        h = _verify_hasher(algorithm) if algorithm else None
        if not hasattr(os, "preadv"):  # pragma: no cover - Linux and the BSDs have it
            _read_serially(fd, view, path, h)
        else:
            _read_parallel(fd, view, path, h)
    finally:
        os.close(fd)
    name = h.hexdigest() if h is not None else None
    if name is not None:
        _remember(_fingerprint(view), name)
    return view, name


def _read_parallel(fd: int, view: memoryview, path: str, h: digest.Hasher | None) -> None:
    size = view.nbytes
    chunk = min(CHUNK, max(MIN_CHUNK, size // 8))
    n_chunks = -(-size // chunk)
    landed = [threading.Event() for _ in range(n_chunks)]
    errors: list[BaseException] = []
    claim = iter(range(n_chunks)).__next__  # one C call: two threads never get the same chunk
    stop = threading.Event()

    def read_chunks() -> None:
        while not stop.is_set():
            try:
                i = claim()
            except StopIteration:
                return
            pos, end = i * chunk, min(size, (i + 1) * chunk)
            try:
                while pos < end:
                    n = os.preadv(fd, [view[pos:end]], pos)
                    if not n:
                        raise OSError(f"{path} shrank while being read")
                    pos += n
            except BaseException as exc:  # noqa: BLE001 - re-raised by the hashing thread
                errors.append(exc)
                stop.set()
            finally:
                landed[i].set()

    threads = [
        threading.Thread(target=read_chunks, name="dagger-blob-read", daemon=True)
        for _ in range(min(READERS, n_chunks))
    ]
    for t in threads:
        t.start()
    try:
        for i in range(n_chunks):
            landed[i].wait()
            if errors:
                break
            if h is not None:
                h.update(view[i * chunk : min(size, (i + 1) * chunk)])
    finally:
        stop.set()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


def _read_serially(fd: int, view: memoryview, path: str, h: digest.Hasher | None) -> None:
    size, done = view.nbytes, 0
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while done < size:
            n = f.readinto(view[done : done + CHUNK])
            if not n:
                raise OSError(f"{path} shrank while being read")
            if h is not None:
                h.update(view[done : done + n])
            done += n
