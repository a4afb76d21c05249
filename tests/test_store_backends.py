"""Every store backend passes the shared suite in dagger.testing.store (one short subclass each)."""

from __future__ import annotations

import uuid

import pytest

from dagger.store import FsspecStore, LocalStore
from dagger.testing.store import StoreTests


class TestLocalStore(StoreTests):
    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(str(tmp_path / "store"))


class TestLocalStoreFsync(StoreTests):
    max_examples = 10

    @pytest.fixture
    def store(self, tmp_path):
        return LocalStore(str(tmp_path / "store"), fsync=True)


class TestMemoryStore(StoreTests):
    @pytest.fixture
    def store(self):
        return FsspecStore(f"memory://dagger-tests/{uuid.uuid4().hex}")


class TestS3Store(StoreTests):
    max_examples = 5
    atomic_value_size = 256 * 1024

    @pytest.fixture
    def store(self, s3_location):
        url, options = s3_location
        return FsspecStore(url, **options)


def test_local_uncommitted_write_skips_the_rename_only_for_a_new_key(tmp_path, monkeypatch):
    import os

    store = LocalStore(str(tmp_path / "store"))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    store.put_uncommitted("states/a.pkl", b"new")  # written in place: one file, no rename
    assert renames == []
    assert store.get("states/a.pkl") == b"new"
    store.put_uncommitted("states/a.pkl", b"replaced")  # already there: tmp file + atomic rename
    assert renames == [str(tmp_path / "store" / "states" / "a.pkl")]
    assert store.get("states/a.pkl") == b"replaced"
    assert store.temp_keys() == []
