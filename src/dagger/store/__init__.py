"""Storage: a small abstract store, its local and fsspec backends, and the state layout."""

from __future__ import annotations

import os
from typing import Any

from dagger.store._fsspec import FsspecStore
from dagger.store._local import LocalStore
from dagger.store.base import Store
from dagger.store.records import Records

__all__ = ["Store", "LocalStore", "FsspecStore", "Records", "open_store"]


def open_store(location: str | os.PathLike[str] | Store, fsync: bool = False, **storage_options: Any) -> Store:
    """The store for ``location``: a local path (or ``file://`` URL), any fsspec URL, or a Store."""
    if isinstance(location, Store):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text and not text.startswith("simplecache::"):
        return LocalStore(text, fsync=fsync)
    return FsspecStore(text, **storage_options)
