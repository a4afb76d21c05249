"""Kernel byte-range locks of local stores: exclusion between threads and processes, death, fallback."""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import threading

import pytest

from dagger.store import LocalStore
from dagger.store import locks as lk

pytestmark = pytest.mark.skipif(not lk.RANGE_LOCKS, reason="kernel range locks are used on Linux only")

FORK = multiprocessing.get_context("fork")


def _try_in_child(root: str, key: str, timeout: float, out) -> None:
    out.send(LocalStore(root).lock(key, stale_after=3600).acquire(timeout=timeout))


def _other_process_can_take(root: str, key: str, timeout: float = 0.3) -> bool:
    parent_end, child_end = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_try_in_child, args=(root, key, timeout, child_end))
    proc.start()
    got = parent_end.recv() if parent_end.poll(30) else None
    proc.join(30)
    return bool(got)


def _hold(root: str, key: str, ready) -> None:
    assert LocalStore(root).lock(key, stale_after=3600).acquire(timeout=10)
    ready.send(True)
    threading.Event().wait(600)


def test_local_stores_take_range_locks_that_write_no_file_per_key(tmp_path):
    store = LocalStore(str(tmp_path))
    lock = store.lock("locks/" + "ab" * 32 + ".lock", stale_after=3600)
    assert isinstance(lock, lk.RangeLock)
    assert lock.acquire(timeout=5)
    assert os.listdir(tmp_path / "locks") == ["states.ranges"]
    assert os.path.getsize(tmp_path / "locks" / "states.ranges") == 0
    lock.release()


def test_threads_of_one_process_exclude_each_other_per_key(tmp_path):
    store = LocalStore(str(tmp_path))
    first = store.lock("locks/x.lock", stale_after=3600)
    assert first.acquire(timeout=5)
    results = {}

    def contend(name: str, key: str, timeout: float) -> None:
        results[name] = store.lock(key, stale_after=3600).acquire(timeout=timeout)

    same = threading.Thread(target=contend, args=("same", "locks/x.lock", 0.3))
    other = threading.Thread(target=contend, args=("other", "locks/y.lock", 5))
    same.start(), other.start()
    same.join(), other.join()
    assert results == {"same": False, "other": True}

    waiter = threading.Thread(target=contend, args=("after", "locks/x.lock", 10))
    waiter.start()
    first.release()
    waiter.join()
    assert results["after"] is True


def test_another_process_waits_and_takes_the_lock_the_moment_its_holder_is_killed(tmp_path):
    root, key = str(tmp_path), "locks/state.lock"
    parent_end, child_end = FORK.Pipe(duplex=False)
    holder = FORK.Process(target=_hold, args=(root, key, child_end), daemon=True)
    holder.start()
    assert parent_end.poll(30) and parent_end.recv()
    assert lk.range_holders(os.path.join(root, lk.RANGES_KEY)) == 1
    assert not _other_process_can_take(root, key)
    assert not LocalStore(root).lock(key, stale_after=3600).acquire(timeout=0.3)  # this process too
    holder.kill()  # SIGKILL: the kernel drops its locks, no stale-lock timeout involved
    holder.join()
    assert lk.range_holders(os.path.join(root, lk.RANGES_KEY)) == 0
    mine = LocalStore(root).lock(key, stale_after=3600)
    assert mine.acquire(timeout=5)
    assert not _other_process_can_take(root, key)
    mine.release()
    assert _other_process_can_take(root, key)


def test_a_lock_file_made_again_is_reopened(tmp_path):
    root, key = str(tmp_path), "locks/state.lock"
    store = LocalStore(root)
    lock = store.lock(key, stale_after=3600)
    assert lock.acquire(timeout=5)
    lock.release()
    shutil.rmtree(tmp_path / "locks")  # e.g. an experiment folder deleted and started again
    assert lock.acquire(timeout=5)
    assert os.path.exists(tmp_path / "locks" / "states.ranges")
    assert not _other_process_can_take(root, key)  # held on the new file, which others open
    lock.release()


def test_file_systems_without_posix_locks_fall_back_to_lock_files(tmp_path, monkeypatch):
    def no_locks(*args, **kwargs):
        raise OSError(errno.ENOLCK, "No locks available")  # as on an NFS mount without a lock daemon

    monkeypatch.setattr(lk.fcntl, "lockf", no_locks)
    store = LocalStore(str(tmp_path))
    lock = store.lock("locks/s.lock", stale_after=3600)
    assert lock.acquire(timeout=5)
    assert isinstance(lock.delegate, lk.FileLock)
    assert os.path.exists(tmp_path / "locks" / "s.lock")
    assert not store.lock("locks/s.lock", stale_after=3600).acquire(timeout=0.2)
    lock.release()
    assert not os.path.exists(tmp_path / "locks" / "s.lock")


def test_gc_counts_the_locks_this_process_holds_too(tmp_path):
    store = LocalStore(str(tmp_path))
    held = [store.lock(f"locks/{i}.lock", stale_after=3600) for i in range(3)]
    assert all(lock.acquire(timeout=5) for lock in held)
    assert lk.range_holders(os.path.join(str(tmp_path), lk.RANGES_KEY)) == 3
    for lock in held:
        lock.release()
    assert lk.range_holders(os.path.join(str(tmp_path), lk.RANGES_KEY)) == 0
