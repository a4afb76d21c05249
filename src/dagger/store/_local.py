"""The local-directory store: plain files, atomic through write-then-rename."""

from __future__ import annotations

import builtins
import errno
import itertools
import os
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from dagger.errors import StoreError
from dagger.store.base import Store, check_key
from dagger.store.locks import RANGE_LOCKS, RANGES_KEY, FileLock, RangeLock

_TMP_PREFIX = uuid.uuid4().hex[:12]
_TMP_COUNTER = itertools.count()
_PID = os.getpid()


def current_pid() -> int:
    """This process's id, kept up to date across fork (``os.getpid`` is a system call each time)."""
    return _PID


def _after_fork_in_child() -> None:
    global _PID
    _PID = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class LocalStore(Store):
    """A store in a local folder.

    Every write goes to ``tmp/<uuid>`` first and is moved into place with
    ``os.replace``, which is atomic on POSIX file systems: a process killed at
    any instant leaves the old value, the new value, or a stray temporary file
    that ``gc`` removes, never a torn file. ``fsync=True`` also flushes each
    file to the device before the rename, for durability across power loss.
    """

    def __init__(self, path: str, fsync: bool = False) -> None:
        self.root = os.path.abspath(os.path.expanduser(path))
        self.url = self.root
        self.fsync = fsync
        self._tmp = os.path.join(self.root, "tmp")
        self._ranges = os.path.join(self.root, RANGES_KEY)
        self._made: set[str] = set()
        self._tmp_pid = -1
        self._tmp_prefix = ""

    def _path(self, key: str) -> str:
        return f"{self.root}{os.sep}{check_key(key)}"  # os.path.join, minus its cost on every call

    def _ensure_dir(self, path: str) -> None:
        if path not in self._made:
            os.makedirs(path, exist_ok=True)
            self._check_no_link(path)
            self._made.add(path)

    def _check_no_link(self, path: str) -> None:
        """Refuse ``path``, a folder inside the experiment, if it or a folder above it (below the root) is a link.

        dagger never makes links; one there was put by someone else, and writing or
        deleting through it would touch files outside the experiment folder.
        (The experiment folder itself may be a link: only what is inside it is checked.)
        """
        rel = path[len(self.root) + 1 :] if path.startswith(self.root + os.sep) else ""
        here = self.root
        for part in rel.split(os.sep) if rel else ():
            here = f"{here}{os.sep}{part}"
            try:
                mode = os.lstat(here).st_mode
            except FileNotFoundError:
                return  # not made yet (dagger makes it a real folder)
            if stat.S_ISLNK(mode):
                raise linked_folder_error(self.root, here)

    def links(self) -> builtins.list[str]:
        """Every symbolic link inside the experiment folder (paths), for ``gc`` to refuse the folder."""
        found: builtins.list[str] = []
        stack = [self.root]
        while stack:
            try:
                entries = os.scandir(stack.pop())
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    if entry.is_symlink():
                        found.append(entry.path)
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        return sorted(found)

    def _tmp_path(self) -> str:
        # Unique across hosts (random prefix), processes (pid, also after fork) and threads (counter).
        pid = _PID
        if pid != self._tmp_pid or self._tmp not in self._made:
            self._ensure_dir(self._tmp)
            self._tmp_pid, self._tmp_prefix = pid, f"{self._tmp}{os.sep}{_TMP_PREFIX}{pid:x}-"
        return f"{self._tmp_prefix}{next(_TMP_COUNTER):x}"

    def get(self, key: str) -> bytes:
        with open(self._path(key), "rb") as f:
            return f.read()

    def get_into(self, key: str) -> bytearray:
        with open(self._path(key), "rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            buf = bytearray(size)
            view = memoryview(buf)
            done = 0
            while done < size:
                n = f.readinto(view[done:])
                if not n:
                    raise OSError(f"{self._path(key)} shrank while being read")
                done += n
            return buf

    def size(self, key: str) -> int:
        return os.stat(self._path(key)).st_size

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        if type(self).open_write is not LocalStore.open_write:  # a subclass hooks every write there
            with self.open_write(key) as f:
                f.write(data)
            return
        # What open_write does, in plain system calls: a buffered file object costs three more
        # (fstat, ioctl, lseek) and a context manager, per small file.
        tmp, final = self._begin(key)
        try:
            self._write_tmp(tmp, data)
            os.replace(tmp, final)
        except BaseException:
            _discard(tmp)
            raise

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store ``data`` unless ``key`` exists, atomically: a hard link never replaces a file."""
        if type(self).open_write is not LocalStore.open_write:  # a subclass hooks every write there
            return super().put_if_absent(key, data)
        tmp, final = self._begin(key)
        try:
            self._write_tmp(tmp, data)
            try:
                os.link(tmp, final)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: check, then write
                return super().put_if_absent(key, data)
            return True
        finally:
            _discard(tmp)

    def _write_tmp(self, tmp: str, data: bytes | bytearray | memoryview) -> None:
        fd = os.open(tmp, _CREATE, 0o666)
        try:
            _write_all(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        tmp, final = self._begin(key)
        try:
            with open(tmp, "wb") as f:
                yield f
                self._finish(f)
            os.replace(tmp, final)
        except BaseException:
            _discard(tmp)
            raise

    def _begin(self, key: str) -> tuple[str, str]:
        """A fresh temporary path, and the final path (its folder made) for ``key``."""
        final = self._path(key)
        self._ensure_dir(final.rpartition(os.sep)[0])
        return self._tmp_path(), final

    def _finish(self, f: BinaryIO) -> None:
        if self.fsync:
            f.flush()
            os.fsync(f.fileno())

    def exists(self, key: str) -> bool:
        # access() answers a missing file with False; stat() (os.path.exists) builds an exception first.
        return os.access(self._path(key), os.F_OK)

    def delete(self, key: str) -> None:
        path = self._path(key)
        folder = path.rpartition(os.sep)[0]
        if folder not in self._made:  # (a folder this store made or checked already is known safe)
            self._check_no_link(folder)
        try:
            os.remove(path)
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        out: list[str] = []
        prefix = prefix.rstrip("/")
        stack = [(base, prefix)]
        while stack:
            path, rel = stack.pop()
            try:
                entries = os.scandir(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            with entries:
                for entry in entries:
                    name = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, name))
                    else:
                        out.append(name)
        return out

    def temp_keys(self, older_than: float = 0.0) -> builtins.list[str]:
        now = time.time()
        out: builtins.list[str] = []
        try:
            entries = os.scandir(self._tmp)
        except FileNotFoundError:
            return out
        with entries:
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= older_than:
                        out.append(f"tmp/{entry.name}")
                except FileNotFoundError:  # renamed into place meanwhile
                    continue
        return out

    def names(self, folder: str) -> builtins.list[str]:
        """File names directly in ``folder`` (fast path for flat folders)."""
        try:
            return os.listdir(self._path(folder))
        except FileNotFoundError:
            return []

    def lock(self, key: str, stale_after: float):  # type: ignore[override]
        def file_lock() -> FileLock:
            self._ensure_dir(os.path.dirname(self._path(key)))
            return FileLock(self._path(key), stale_after)

        if RANGE_LOCKS:
            self._ensure_dir(os.path.dirname(self._ranges))  # never a lock file created through a link
            return RangeLock(self._ranges, key, file_lock)
        return file_lock()


def linked_folder_error(root: str, link: str) -> StoreError:
    """The error for a link found inside an experiment folder: what it points to, and the fix."""
    try:
        target = os.path.realpath(link)
    except OSError:
        target = "?"
    return StoreError(
        errno.ELOOP,
        f"refusing to write or delete through {link}: it is a symbolic link (to {target}), and dagger never "
        f"follows a link out of the experiment folder {root}. dagger never makes links; replace it with a "
        "real folder (move the files back in), or remove it, then try again.",
    )


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` (``os.write`` may write less than asked, e.g. over 2 GiB at once)."""
    done = os.write(fd, data)
    size = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
    if done < size:
        view = memoryview(data).cast("B")
        while done < size:
            done += os.write(fd, view[done:])


def _discard(path: str) -> None:
    """Remove an abandoned temporary file (it may already be gone)."""
    try:
        os.remove(path)
    except OSError:
        pass
