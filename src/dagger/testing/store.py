"""The conformance suite every dagger store backend must pass.

A backend's tests are one short subclass that provides a ``store`` fixture
returning an empty store::

    from dagger.store import LocalStore
    from dagger.testing.store import StoreTests

    class TestLocalStore(StoreTests):
        @pytest.fixture
        def store(self, tmp_path):
            return LocalStore(str(tmp_path / "store"))

The suite checks the five primitive operations (``get``, ``put``,
``exists``, ``delete``, ``list``), the ones built on them (``size``,
``get_into``, ``open_write``, ``put_if_absent``), locks, that ``put`` is
atomic (a concurrent reader sees the old or the new value, never a mix; a
failed streamed write leaves the old value and no temporary file), and, with
hypothesis, that random sequences of operations agree with a plain dict.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dagger.store.base import Store


class StoreTests:
    """Mix into a ``Test...`` class that defines a ``store`` fixture (an empty store)."""

    #: Examples for the random-operations test; slow backends may lower it.
    max_examples: int = 30
    #: Size of the values used by the concurrent-reader atomicity test.
    atomic_value_size: int = 1 << 20

    @pytest.fixture
    def store(self) -> Store:  # pragma: no cover - always overridden
        raise NotImplementedError("a StoreTests subclass must define a `store` fixture")

    # ---- get / put ------------------------------------------------------------------

    def test_get_missing_raises_file_not_found(self, store: Store) -> None:
        with pytest.raises(FileNotFoundError):
            store.get("nothing/here")

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_put_get_roundtrip(self, store: Store, kind: Any) -> None:
        data = bytes(range(256)) * 3
        store.put("a/b/c.bin", kind(data))
        out = store.get("a/b/c.bin")
        assert out == data
        assert isinstance(out, bytes)

    def test_put_empty_value(self, store: Store) -> None:
        store.put("empty", b"")
        assert store.exists("empty")
        assert store.get("empty") == b""
        assert store.size("empty") == 0

    def test_put_replaces(self, store: Store) -> None:
        store.put("k", b"first value")
        store.put("k", b"second")
        assert store.get("k") == b"second"
        assert store.size("k") == len(b"second")

    # ---- exists / delete --------------------------------------------------------------

    def test_exists(self, store: Store) -> None:
        assert not store.exists("x/y")
        store.put("x/y", b"1")
        assert store.exists("x/y")
        assert not store.exists("x/z")

    def test_delete(self, store: Store) -> None:
        store.put("d/one", b"1")
        store.put("d/two", b"2")
        store.delete("d/one")
        assert not store.exists("d/one")
        assert store.get("d/two") == b"2"
        with pytest.raises(FileNotFoundError):
            store.get("d/one")

    def test_delete_missing_is_not_an_error(self, store: Store) -> None:
        store.delete("never/written")
        assert not store.exists("never/written")

    # ---- list ------------------------------------------------------------------------

    def test_list_is_recursive_and_returns_full_keys(self, store: Store) -> None:
        keys = {"meta/a.json", "meta/b.json", "blobs/ab/abc", "blobs/cd/cde", "experiment.json"}
        for k in keys:
            store.put(k, k.encode())
        assert sorted(store.list("blobs")) == ["blobs/ab/abc", "blobs/cd/cde"]
        assert sorted(store.list("meta")) == ["meta/a.json", "meta/b.json"]
        assert sorted(store.list("blobs/")) == ["blobs/ab/abc", "blobs/cd/cde"]
        for k in store.list("blobs"):
            assert store.get(k) == k.encode()

    def test_list_missing_folder_is_empty(self, store: Store) -> None:
        assert store.list("nowhere") == []

    def test_list_does_not_match_name_prefixes(self, store: Store) -> None:
        store.put("state/x", b"1")
        store.put("states/y", b"2")
        assert store.list("state") == ["state/x"]
        assert store.list("states") == ["states/y"]

    def test_list_after_delete(self, store: Store) -> None:
        store.put("f/a", b"1")
        store.put("f/b", b"2")
        store.delete("f/a")
        assert store.list("f") == ["f/b"]

    def test_names(self, store: Store) -> None:
        names = getattr(store, "names", None)
        if names is None:
            pytest.fail("backend has no names(); the index relies on it for one-listing restores")
        store.put("meta/a.1.json", b"{}")
        store.put("meta/b.2.json", b"{}")
        assert sorted(names("meta")) == ["a.1.json", "b.2.json"]
        assert list(names("missing")) == []

    # ---- size / get_into ----------------------------------------------------------------

    def test_size(self, store: Store) -> None:
        store.put("s", b"x" * 12345)
        assert store.size("s") == 12345
        with pytest.raises(FileNotFoundError):
            store.size("missing")

    def test_get_into_is_writable_copy(self, store: Store) -> None:
        data = os.urandom(300_000)
        store.put("big", data)
        buf = store.get_into("big")
        assert isinstance(buf, bytearray)
        assert bytes(buf) == data
        buf[0] ^= 0xFF  # writable, and writing to it does not change the store
        assert store.get("big") == data

    def test_get_into_missing(self, store: Store) -> None:
        with pytest.raises(FileNotFoundError):
            store.get_into("missing")

    # ---- open_write / put_if_absent -------------------------------------------------------

    def test_open_write_appears_on_exit(self, store: Store) -> None:
        with store.open_write("w/stream") as f:
            f.write(b"part one, ")
            f.write(memoryview(b"part two"))
            assert not store.exists("w/stream")
        assert store.get("w/stream") == b"part one, part two"
        assert store.temp_keys() == []

    def test_open_write_failure_keeps_old_value(self, store: Store) -> None:
        store.put("w/keep", b"old value")
        with pytest.raises(RuntimeError):
            with store.open_write("w/keep") as f:
                f.write(b"half of a new va")
                raise RuntimeError("killed mid-write")
        assert store.get("w/keep") == b"old value"
        assert store.temp_keys() == []

    def test_open_write_failure_creates_nothing(self, store: Store) -> None:
        with pytest.raises(RuntimeError):
            with store.open_write("w/new") as f:
                f.write(b"x" * 1000)
                raise RuntimeError("boom")
        assert not store.exists("w/new")
        assert store.list("w") == []

    def test_put_if_absent(self, store: Store) -> None:
        assert store.put_if_absent("p", b"first") is True
        assert store.put_if_absent("p", b"second") is False
        assert store.get("p") == b"first"

    # ---- atomicity ---------------------------------------------------------------------------

    def test_put_is_atomic_for_concurrent_readers(self, store: Store) -> None:
        n = self.atomic_value_size
        values = (b"a" * n, b"b" * (n // 2 + 7))
        store.put("atom", values[0])
        stop = threading.Event()
        seen: list[bytes] = []
        errors: list[BaseException] = []

        def reader() -> None:
            try:
                while not stop.is_set():
                    try:
                        seen.append(store.get("atom"))
                    except FileNotFoundError:
                        seen.append(b"<missing>")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            for i in range(20):
                store.put("atom", values[i % 2])
        finally:
            stop.set()
            thread.join()
        assert not errors, errors
        assert seen, "the reader never got a value"
        torn = [len(v) for v in seen if v not in values]
        assert not torn, f"readers saw {len(torn)} torn or missing values (sizes {torn[:5]})"

    # ---- locks ---------------------------------------------------------------------------------

    def test_lock_excludes_a_second_holder(self, store: Store) -> None:
        first = store.lock("locks/s.lock", stale_after=3600)
        second = store.lock("locks/s.lock", stale_after=3600)
        assert first.acquire(timeout=5)
        assert not second.acquire(timeout=0.2)
        first.release()
        assert second.acquire(timeout=5)
        second.release()
        assert not store.exists("locks/s.lock")

    @staticmethod
    def _file_lock(store: Store, key: str, stale_after: float) -> Any:
        """The owner-file lock at ``key``: the store's own, or the one its kernel locks fall back to."""
        from dagger.store.locks import RangeLock

        lock = store.lock(key, stale_after=stale_after)
        return lock.fallback() if isinstance(lock, RangeLock) else lock

    def test_stale_lock_of_dead_process_is_broken(self, store: Store) -> None:
        import socket
        import subprocess
        import sys
        import time

        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()  # a pid that no longer runs
        owner = {"host": socket.gethostname(), "pid": proc.pid, "time": time.time(), "token": "dead"}
        store.put("locks/d.lock", json.dumps(owner).encode())
        lock = self._file_lock(store, "locks/d.lock", stale_after=3600)
        assert lock.acquire(timeout=10)
        lock.release()

    def test_old_lock_is_broken(self, store: Store) -> None:
        import time

        owner = {"host": "another-host", "pid": 1, "time": time.time() - 10, "token": "old"}
        store.put("locks/o.lock", json.dumps(owner).encode())
        assert not self._file_lock(store, "locks/o.lock", stale_after=3600).acquire(timeout=0.1)
        lock = self._file_lock(store, "locks/o.lock", stale_after=5)
        assert lock.acquire(timeout=10)
        lock.release()

    # ---- random sequences of operations agree with a dict --------------------------------------

    def test_random_operations_match_a_dict(self, store: Store) -> None:
        keys = st.sampled_from(["a", "b", "d/a", "d/e/f", "d/e/g", "z/1"])
        values = st.binary(max_size=64)
        op = st.one_of(
            st.tuples(st.just("put"), keys, values),
            st.tuples(st.just("delete"), keys, st.just(b"")),
            st.tuples(st.just("put_if_absent"), keys, values),
        )

        @settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            database=None,
        )
        @given(st.lists(op, max_size=12))
        def run(ops: list[tuple[str, str, bytes]]) -> None:
            base = f"r{uuid.uuid4().hex[:8]}"
            model: dict[str, bytes] = {}
            for name, key, value in ops:
                full = f"{base}/{key}"
                if name == "put":
                    store.put(full, value)
                    model[key] = value
                elif name == "delete":
                    store.delete(full)
                    model.pop(key, None)
                else:
                    wrote = store.put_if_absent(full, value)
                    assert wrote == (key not in model)
                    model.setdefault(key, value)
            for key in ["a", "b", "d/a", "d/e/f", "d/e/g", "z/1"]:
                full = f"{base}/{key}"
                assert store.exists(full) == (key in model)
                if key in model:
                    assert store.get(full) == model[key]
                    assert store.size(full) == len(model[key])
            listed = sorted(k[len(base) + 1 :] for k in store.list(base))
            assert listed == sorted(model)
            nested = sorted(k[len(base) + 1 :] for k in store.list(f"{base}/d"))
            assert nested == sorted(k for k in model if k.startswith("d/"))

        run()
