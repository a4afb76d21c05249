"""Crash safety: SIGKILL a running experiment at 30 random moments, including mid-write of a large blob.

Run with commit records in meta/ files and in segments (the ``layout`` fixture).

After every kill the store verifies clean (temporary files may be left; gc
removes them), and a rerun computes exactly the states that were missing.
Children are forked from a forkserver that has dagger, numpy and the
definitions imported, so each start costs milliseconds, not an interpreter.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import shutil
import signal
import time

import pytest
import storedefs
from damage import left_long_ago
from storedefs import build, read_calls

from dagger.store import LocalStore
from dagger.store.maintenance import gc, verify
from dagger.store.records import Records


def rel_layout(directory: str) -> str:
    """Where the folder's commit records are: "files" (``meta/``) or "segments" (never both here)."""
    meta = os.path.join(directory, "meta")
    files = os.path.isdir(meta) and bool(os.listdir(meta))
    segs = os.path.isdir(os.path.join(directory, "segments"))
    return "both" if files and segs else "segments" if segs else "files"


SHAPE = {"data_mb": 6.0, "model_mb": 2.0, "width": 3, "depth": 2}
SLEEP = 0.03
KILLS = 30


@pytest.fixture(scope="module")
def ctx():
    methods = multiprocessing.get_all_start_methods()
    if "forkserver" not in methods:  # pragma: no cover - Windows
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["numpy", "dask", "dask.local", "dagger", "storedefs"])
    return context


def _start(ctx, directory, run_id, calls, layout="files"):
    proc = ctx.Process(target=storedefs.run_child_in, args=(layout, directory, run_id, calls, SLEEP, SHAPE))
    proc.start()
    return proc


def _wait_for_blob_write(directory: str, proc, limit: float) -> bool:
    """Poll until a large file is being written under tmp/ (True), or the child ends or time runs out."""
    tmp = os.path.join(directory, "tmp")
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.is_alive():
        try:
            with os.scandir(tmp) as entries:
                for entry in entries:
                    try:
                        if entry.stat().st_size >= 64 * 1024:
                            return True
                    except FileNotFoundError:
                        pass
        except FileNotFoundError:
            pass
    return False


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_at_random_moments_never_corrupts(tmp_path, ctx, layout):
    rng = random.Random(20261128)
    _, root, leaves = build(str(tmp_path / "shapes"), **SHAPE)
    everything = {root.sha()} | {p.sha() for leaf in leaves for p in (leaf, leaf.parent)}
    calls = str(tmp_path / "calls")

    # Uninterrupted runs tell how long a whole run takes here (the first also starts the forkserver).
    for attempt in range(2):
        t0 = time.monotonic()
        proc = _start(ctx, str(tmp_path / f"calibrate{attempt}"), "calibrate", calls, layout)
        proc.join(60)
        full_run = time.monotonic() - t0
        assert proc.exitcode == 0
        shutil.rmtree(tmp_path / f"calibrate{attempt}")

    stats = collections.Counter()
    i = 0
    while stats["killed"] < KILLS:
        i += 1
        assert i <= 2 * KILLS, f"only {stats['killed']} of {i} kills landed while the run was going"
        directory = str(tmp_path / f"run{i}")
        records = Records(LocalStore(directory))
        mode = "blob" if i % 3 == 1 else "time"
        run_id = f"k{i}"
        proc = _start(ctx, directory, run_id, calls, layout)
        if mode == "blob":
            caught = _wait_for_blob_write(directory, proc, limit=full_run * 2)
            stats["blob-write caught"] += caught
        else:
            time.sleep(rng.uniform(0.0, full_run))
        proc.kill()  # a no-op when the run already ended (the forkserver may have reaped it)
        proc.join(30)
        killed = proc.exitcode == -signal.SIGKILL
        stats["killed"] += killed
        tmp = os.path.join(directory, "tmp")
        stats["kills leaving tmp files"] += os.path.isdir(tmp) and bool(os.listdir(tmp))

        report = verify(records)
        assert report.ok, f"kill {i} ({mode}): {report}"
        before = set(records.committed())
        assert before <= everything
        # nothing the killed run started was already committed when it started (fresh folder)
        started = [sha for run, _, sha in read_calls(calls) if run == run_id]
        assert len(started) == len(set(started))

        # the rerun computes exactly what is missing, once each
        rerun = f"r{i}"
        proc = _start(ctx, directory, rerun, calls, layout)
        proc.join(60)
        assert proc.exitcode == 0, f"rerun after kill {i} failed"
        recomputed = [sha for run, _, sha in read_calls(calls) if run == rerun]
        assert sorted(recomputed) == sorted(everything - before), f"kill {i} ({mode})"
        assert set(records.committed()) == everything
        assert rel_layout(directory) == layout
        stats["states recomputed"] += len(recomputed)

        # gc removes every leftover of the kill (run later: it leaves files written in the last
        # minute to a writer that may be renaming them); the store stays clean and whole
        for name in os.listdir(tmp) if os.path.isdir(tmp) else []:
            left_long_ago(os.path.join(tmp, name))
        freed = gc(records)
        assert not freed.skipped
        assert freed.counts()["unreachable_states"] == 0
        assert not os.path.isdir(os.path.join(directory, "tmp")) or not os.listdir(os.path.join(directory, "tmp"))
        assert set(os.listdir(os.path.join(directory, "locks"))) <= {"states.ranges"}  # no lock file left
        stats["tmp files removed by gc"] += freed.counts()["tmp"]
        stats["uncommitted pickles removed by gc"] += freed.counts()["orphan_pickles"]
        after = verify(records)
        assert after.ok and after.states == len(everything) and not after.notes, str(after)
        shutil.rmtree(directory)

    print(f"\ncrash test: whole run {full_run:.2f}s; {i} starts; {dict(stats)}")
    assert stats["blob-write caught"] >= 1
    assert stats["tmp files removed by gc"] >= 1
