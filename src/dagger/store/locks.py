"""Advisory per-state locks, so that concurrent runs compute each state once.

Locks are only an optimisation: states are written atomically and
content-addressed, so two writers of one hash are harmless. Two kinds:

- :class:`RangeLock` (local folders on Linux): a POSIX byte-range lock on one
  shared file, ``locks/states.ranges``, at an offset derived from the state's
  key. Taking and releasing it writes nothing to disk (a lock file per state
  cost as much as writing the state's pickle), and the kernel drops the locks
  of a process that dies, so a killed run never leaves a lock behind.
- :class:`FileLock` / :class:`KeyLock`: a small file holding its owner (host,
  pid, time), for other platforms and remote stores. A lock whose owner died
  (its pid is gone on this host) or that is older than ``stale_after`` seconds
  is broken, so a killed process never blocks anyone forever.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: lock files only
    fcntl = None  # type: ignore[assignment]

from dagger.store.base import Lock, Store

_HOST = socket.gethostname()


def _owner() -> bytes:
    return json.dumps({"host": _HOST, "pid": os.getpid(), "time": time.time(), "token": uuid.uuid4().hex}).encode()


#: A lock file that cannot be parsed is being written right now (it exists, empty, between
#: its exclusive creation and the write of its owner) unless it is older than this.
UNREADABLE_GRACE_S = 10.0


def _is_stale(raw: bytes, stale_after: float, file_age: float | None = None) -> bool:
    try:
        info = json.loads(raw)
        age = time.time() - float(info["time"])
        if age > stale_after:
            return True
        if info.get("host") == _HOST:
            pid = int(info["pid"])
            if pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False
    except (ValueError, KeyError, TypeError):
        # Unreadable: either its owner is between creating and writing it (young),
        # or its owner crashed in that instant (old). Only the old one is stale.
        return file_age is None or file_age > UNREADABLE_GRACE_S


def _retry(attempt: Callable[[], bool], deadline: float | None, delay: float = 0.005, longest: float = 0.2) -> bool:
    """Call ``attempt`` until it succeeds (True) or ``deadline`` (monotonic) passes (False), backing off."""
    while not attempt():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, longest)
    return True


class FileLock(Lock):
    """A lock file created with ``O_CREAT | O_EXCL`` (atomic on local file systems)."""

    def __init__(self, path: str, stale_after: float) -> None:
        self.path = path
        self.stale_after = stale_after
        self.held = False

    def _try(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(self.path, "rb") as f:
                    raw = f.read()
                    age = time.time() - os.fstat(f.fileno()).st_mtime
            except FileNotFoundError:
                return False
            if _is_stale(raw, self.stale_after, age):
                # Break it by renaming: only one breaker wins the rename.
                grave = f"{self.path}.{uuid.uuid4().hex}.stale"
                try:
                    os.rename(self.path, grave)
                    os.remove(grave)
                except FileNotFoundError:
                    pass
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(_owner())
        return True

    def acquire(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.held = _retry(self._try, deadline)
        return self.held

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass


class KeyLock(Lock):
    """Best-effort lock on a generic store: write a token, read it back to confirm."""

    def __init__(self, store: Store, key: str, stale_after: float) -> None:
        self.store = store
        self.key = key
        self.stale_after = stale_after
        self.token: bytes | None = None

    def _try(self) -> bool:
        try:
            raw = self.store.get(self.key)
        except FileNotFoundError:
            raw = None
        if raw is not None:
            if not _is_stale(raw, self.stale_after):
                return False
            self.store.delete(self.key)
        token = _owner()
        self.store.put(self.key, token)
        time.sleep(0.01)
        try:
            won = self.store.get(self.key) == token
        except FileNotFoundError:
            return False
        if won:
            self.token = token
        return won

    def acquire(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _retry(self._try, deadline, delay=0.05, longest=0.05)

    def release(self) -> None:
        if self.token is not None:
            self.token = None
            self.store.delete(self.key)


# ---- kernel byte-range locks -------------------------------------------------------------------

#: The file whose byte ranges lock states, relative to the store's root.
RANGES_KEY = "locks/states.ranges"
#: Where kernel range locks are used (F_GETLK's struct layout below is Linux's).
RANGE_LOCKS = sys.platform.startswith("linux") and fcntl is not None
_NOT_SUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_FLOCK = "hhqqi4x"  # struct flock on Linux: type, whence, start, len, pid


class _Unsupported(Exception):
    """The file system has no POSIX locks."""


class _RangeFile:
    """This process's one descriptor of a range-lock file, and which offsets its threads hold.

    POSIX locks belong to a process, not a thread, and closing any descriptor
    of the file drops all of them; so the file is opened once per process and
    never closed, and threads of one process exclude each other here.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.ro_fd = -1  # see read_only_descriptor
        self.busy: set[int] = set()
        self._threads()

    def _threads(self) -> None:
        """The mutex over ``busy``, and the condition that threads waiting for an offset wait on.

        ``waiting`` counts them, so that a release wakes no one (and costs no
        notify) when no thread waits, the usual case.
        """
        self.mutex = threading.Lock()
        self.cond = threading.Condition(self.mutex)
        self.waiting = 0

    def descriptor(self) -> int:
        """The open descriptor, reopened if the file was removed (a folder deleted and made again).

        ``fstat`` on the open descriptor tells (no link left) without walking the path each time.
        """
        if self.fd >= 0 and os.fstat(self.fd).st_nlink > 0:
            return self.fd
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        # The old descriptor stays open: closing it would drop this process's other locks on it.
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        return self.fd

    def read_only_descriptor(self) -> int:
        """A read-only descriptor, for asking who holds locks in a folder this process cannot write.

        Opened once and never closed, like the other (closing it would drop this process's locks).
        """
        if self.ro_fd < 0:
            self.ro_fd = os.open(self.path, os.O_RDONLY)
        return self.ro_fd


_RANGE_FILES: dict[str, _RangeFile] = {}
_RANGE_FILES_LOCK = threading.Lock()


def _range_file(path: str) -> _RangeFile:
    rf = _RANGE_FILES.get(path)
    if rf is not None:
        return rf
    with _RANGE_FILES_LOCK:
        rf = _RANGE_FILES.get(path)
        if rf is None:
            rf = _RANGE_FILES[path] = _RangeFile(path)
        return rf


def _after_fork_in_child() -> None:
    # A forked child holds none of its parent's POSIX locks, nor its threads' claims.
    global _RANGE_FILES_LOCK
    _RANGE_FILES_LOCK = threading.Lock()
    for rf in _RANGE_FILES.values():
        rf.busy = set()
        rf._threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def range_offset(key: str) -> int:
    """The byte that locks ``key`` (62 bits of its hash: distinct keys practically never share one)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 2


class RangeLock(Lock):
    """A kernel byte-range lock at ``range_offset(key)`` of the file ``path``.

    Where the file system does not support POSIX locks (some network file
    systems), it falls back to ``fallback()``, a :class:`FileLock`.
    """

    def __init__(self, path: str, key: str, fallback: Callable[[], Lock]) -> None:
        self.path = path
        self.offset = range_offset(key)
        self.fallback = fallback
        self.delegate: Lock | None = None
        self.fd = -1
        self.held = False

    def acquire(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        rf = _range_file(self.path)
        with rf.mutex:
            while self.offset in rf.busy:  # another thread of this process holds it
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                rf.waiting += 1
                try:
                    rf.cond.wait(0.2 if remaining is None else min(remaining, 0.2))
                finally:
                    rf.waiting -= 1
            rf.busy.add(self.offset)
        try:
            self.held = self._try(rf) or _retry(lambda: self._try(rf), deadline)
        except _Unsupported:
            self._release_claim(rf)
            self.delegate = self.fallback()
            return self.delegate.acquire(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except BaseException:
            self._release_claim(rf)
            raise
        if not self.held:
            self._release_claim(rf)
        return self.held

    def _try(self, rf: _RangeFile) -> bool:
        fd = rf.descriptor()
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, self.offset, os.SEEK_SET)
        except OSError as exc:
            if exc.errno in _NOT_SUPPORTED:
                raise _Unsupported from exc
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return False
        self.fd = fd
        return True

    def _release_claim(self, rf: _RangeFile) -> None:
        with rf.mutex:
            rf.busy.discard(self.offset)
            if rf.waiting:
                rf.cond.notify_all()

    def release(self) -> None:
        if self.delegate is not None:
            self.delegate.release()
            self.delegate = None
            return
        if not self.held:
            return
        self.held = False
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self.offset, os.SEEK_SET)
        finally:
            self._release_claim(_range_file(self.path))


def range_holders(path: str, limit: int = 100_000) -> int:
    """How many state locks are held in ``path``: by this process's threads and by other processes."""
    if not (RANGE_LOCKS and os.path.exists(path)):
        return 0
    rf = _range_file(path)
    try:
        fd = rf.descriptor()  # never a new descriptor: closing one would drop our own locks
    except PermissionError:  # a folder we may only read (gc --dry-run): F_GETLK needs no write access
        fd = rf.read_only_descriptor()
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        fd = rf.read_only_descriptor()
    with rf.mutex:
        count = len(rf.busy)  # the kernel does not report this process's own locks
    start = 0
    while count < limit:  # other processes' locks, one F_GETLK per lock found
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, 0, 0)
        kind, _, found, length, _ = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, query))
        if kind == fcntl.F_UNLCK:
            break
        count += 1
        start = found + max(length, 1)
    return count
