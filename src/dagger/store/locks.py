"""Advisory per-state locks, so that concurrent runs compute each state once.

A lock is a small file holding its owner (host, pid, time). Locks are only an
optimisation: states are written atomically and content-addressed, so two
writers of one hash are harmless. A lock whose owner died (its pid is gone on
this host) or that is older than ``stale_after`` seconds is broken, so a
killed process never blocks anyone forever.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

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
        delay = 0.005
        while not self._try():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        self.held = True
        return True

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
        while not self._try():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def release(self) -> None:
        if self.token is not None:
            self.token = None
            self.store.delete(self.key)
