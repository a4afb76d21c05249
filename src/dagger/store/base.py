"""The abstract store: five low-level operations, everything else built on them.

Keys are ``/``-separated paths relative to the experiment's root, e.g.
``"meta/ab12....json"``. A backend implements :meth:`get`, :meth:`put`,
:meth:`exists`, :meth:`delete` and :meth:`list`; ``put`` must be atomic (a
reader sees the whole value or nothing), so that a crash at any instant never
leaves a half-written file under a real key.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from dagger.errors import CorruptRecordError


def check_key(key: str) -> str:
    """``key`` itself, if it stays inside the experiment folder; else :class:`CorruptRecordError`.

    Keys are built from stored values (hashes, blob names); a record that was
    edited or forged must never make dagger read, write or delete elsewhere.
    """
    if type(key) is str and ".." not in key and key[:1] not in ("/", "\\", ""):
        return key  # the common case, decided without splitting the key
    if not isinstance(key, str) or key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/"):
        raise CorruptRecordError(
            f"refusing the store key {key!r}: it would point outside the experiment folder. It comes from a "
            "record that was edited or forged; run `dagger verify` and do not restore states from this folder."
        )
    return key


class Store(abc.ABC):
    """A flat key-value view of one experiment folder."""

    #: Where the store lives: a local path or an fsspec URL.
    url: str

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The value at ``key``; ``FileNotFoundError`` if there is none."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        """Atomically store ``data`` at ``key`` (replacing any value there)."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` holds a value."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under the folder ``prefix`` (recursively), as full keys."""

    # ---- built on the five above; backends may override for speed ----------

    def size(self, key: str) -> int:
        """Size in bytes of the value at ``key``."""
        return len(self.get(key))

    def get_into(self, key: str) -> bytearray:
        """The value at ``key`` as a writable buffer (zero-copy where the backend can)."""
        return bytearray(self.get(key))

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        """Stream a large value to ``key``; it appears atomically when the block exits."""
        import io

        buf = io.BytesIO()
        yield buf
        self.put(key, buf.getbuffer())

    def put_if_absent(self, key: str, data: bytes | bytearray | memoryview) -> bool:
        """Store ``data`` unless ``key`` exists; return whether it was written."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def temp_keys(self, older_than: float = 0.0) -> builtins.list[str]:
        """Leftovers of interrupted writes, for ``gc``: those not written to for ``older_than`` seconds.

        A backend that cannot tell a file's age lists them all (object stores write
        each value in one request and leave no temporary files).
        """
        return [k for k in self.list("tmp")]

    def lock(self, key: str, stale_after: float) -> Lock:
        """An advisory lock at ``key`` (see :mod:`dagger.store.locks`)."""
        from dagger.store.locks import KeyLock

        return KeyLock(self, key, stale_after)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Lock(abc.ABC):
    @abc.abstractmethod
    def acquire(self, timeout: float | None = None) -> bool: ...

    @abc.abstractmethod
    def release(self) -> None: ...
