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



def test_local_put_that_fails_mid_write_keeps_the_old_value(tmp_path, monkeypatch):
    import errno
    import os

    from dagger.store import _local

    store = LocalStore(str(tmp_path / "store"))
    store.put("states/b.pkl", b"old value")
    real_write = os.write

    def disk_full(fd, data):
        real_write(fd, bytes(memoryview(data)[:10]))  # part of it reached the temporary file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_local.os, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.put("states/b.pkl", b"x" * 1000)
    monkeypatch.undo()
    assert store.get("states/b.pkl") == b"old value"
    assert store.temp_keys() == []


def test_local_put_writes_all_of_a_large_value_written_in_parts(tmp_path, monkeypatch):
    import os

    from dagger.store import _local

    store = LocalStore(str(tmp_path / "store"))
    real_write = os.write
    monkeypatch.setattr(_local.os, "write", lambda fd, data: real_write(fd, bytes(memoryview(data)[:7])))
    data = bytes(range(256)) * 40
    store.put("big", memoryview(data))  # os.write may write less than asked: the rest follows
    monkeypatch.undo()
    assert store.get("big") == data
