"""Storage: a small abstract store, its local and fsspec backends, and the state layout."""

from __future__ import annotations

import os
from typing import Any

from dagger.errors import StoreError
from dagger.store._fsspec import FsspecStore
from dagger.store._local import LocalStore
from dagger.store.base import Store
from dagger.store.records import Records

__all__ = ["Store", "LocalStore", "FsspecStore", "Records", "open_store"]


def open_store(location: str | os.PathLike[str] | Store, fsync: bool = False, **storage_options: Any) -> Store:
    """The store for ``location``: a local path (or ``file://`` URL), any fsspec URL, or a Store."""
    if isinstance(location, Store):
        return location
    try:
        text = os.fsdecode(location)  # a str, a bytes path or an os.PathLike of either
    except TypeError:
        raise StoreError(
            f"an experiment folder is a path (str, bytes or pathlib.Path), a URL or a dagger Store, not a "
            f"{type(location).__name__} ({location!r})"
        ) from None
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text and not text.startswith("simplecache::"):
        _check_folder(text)
        return LocalStore(text, fsync=fsync)
    return FsspecStore(text, **storage_options)


def _check_folder(path: str) -> None:
    """Refuse, in one clear line, a local path that is (or lies under) a file rather than a folder."""
    here = os.path.abspath(os.path.expanduser(path))
    while not os.path.exists(here):
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent
    if not os.path.isdir(here):
        what = f"{path} is a file" if here == os.path.abspath(os.path.expanduser(path)) else f"{here} is a file"
        raise StoreError(
            f"{path} cannot be an experiment folder: {what}. Give the path of a folder (one that holds "
            "experiment.json, or a new one)."
        )
