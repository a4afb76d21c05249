"""A store on any fsspec file system: ``s3://``, ``gs://``, ``memory://``, ...

Object stores write each object atomically, so ``put`` is a single
``pipe_file``. Listing caches are invalidated before every listing so that
several writers (cluster workers, concurrent processes) see each other.
"""

from __future__ import annotations

import builtins
from typing import Any

from dagger.store.base import Store, check_key


class FsspecStore(Store):
    """A store at an fsspec URL, e.g. ``s3://bucket/experiments/prune``."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        self.root = self.root.rstrip("/")
        self.storage_options = storage_options

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        path = self._path(key)
        if not isinstance(data, bytes):
            data = bytes(data)
        self.fs.pipe_file(path, data)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        self.fs.invalidate_cache(path)
        return bool(self.fs.exists(path))

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix.rstrip("/"))
        self.fs.invalidate_cache(base)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return [p[cut:] if p.startswith(self.root) else p for p in found]

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def names(self, folder: str) -> builtins.list[str]:
        return [k.rsplit("/", 1)[-1] for k in self.list(folder)]
