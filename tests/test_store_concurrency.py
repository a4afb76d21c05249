"""Several processes on one experiment folder: each state computed once, nothing corrupt, no deadlock."""

from __future__ import annotations

import collections
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time

import pytest
from storedefs import build, expected_states, read_calls

import dagger as dg
from dagger.store.locks import RANGES_KEY
from dagger.store.records import FIRST_REV, state_key

HERE = os.path.dirname(__file__)
SHAPE = {"data_mb": 1.0, "model_mb": 0.25, "width": 3, "depth": 2}

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    from storedefs import build
    go = {go!r}
    while not os.path.exists(go):  # start together
        time.sleep(0.002)
    exp, _, _ = build({directory!r}, **{shape!r})
    report = exp.run(progress=False)
    print(len(report.computed), len(report.cached))
    """
)


def _start(script: str, calls: str, run_id: str, sleep: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, DAGGER_TEST_CALLS=calls, DAGGER_TEST_RUN=run_id, DAGGER_TEST_SLEEP=str(sleep))
    return subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.timeout(180)
def test_four_processes_start_the_same_experiment_at_once(tmp_path, layout):
    directory = str(tmp_path / "exp")
    calls = str(tmp_path / "calls")
    go = str(tmp_path / "go")
    script = SCRIPT.format(here=HERE, go=go, directory=directory, shape=SHAPE)
    procs = [_start(script, calls, f"p{i}", sleep=0.05) for i in range(4)]
    time.sleep(0.3)
    open(go, "w").close()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err

    n = expected_states(**SHAPE)
    exp = dg.Experiment(directory)
    report = exp.verify()
    assert report.ok, str(report)
    assert report.states == n

    # every state exactly once: one committed record and one readable pickle per state, nothing else
    # (a pickle is carried by the state's first commit record, or has its own file once that was replaced)
    committed = exp.records.committed()
    assert len(committed) == n
    for sha in committed:
        key, raw = exp.records.read_pickle(sha)
        assert key in (state_key(sha), exp.records.record_key(sha, FIRST_REV)) and raw.endswith(b".")
    assert set(exp.store.list("states")) <= {state_key(sha) for sha in committed}  # no pickle without a commit
    assert set(exp.store.list("locks")) <= {RANGES_KEY}  # no lock file is left behind
    assert exp.gc(dry_run=True).live_locks == 0
    # blobs are shared by content: dataset once, one model per state
    assert report.blobs == n + 1

    ran = collections.Counter((name, sha) for _, name, sha in read_calls(calls))
    by_process = collections.Counter(run for run, _, _ in read_calls(calls))
    computed_per_process = [int(out.split()[0]) for out, _ in outputs]
    print(f"\nrecipe runs per state ({n} states, 4 processes):")
    for (name, sha), count in sorted(ran.items(), key=lambda kv: kv[0]):
        print(f"  {name:8s} {sha[:12]} ran {count}x")
    print(f"  calls by process: {dict(by_process)}; states computed by each process: {computed_per_process}")
    assert {sha for _, sha in ran} == set(committed)  # every state was computed by someone
    assert all(count == 1 for count in ran.values()), ran  # and, with per-state locks, only once
    assert sum(computed_per_process) == n

    # every process sees the whole tree with Function results; the tree restores in full
    again = dg.Experiment.restore(directory, slim=False)
    leaves = again.graph.leaves()
    assert len(leaves) == SHAPE["width"]
    assert all("model_sum" in leaf.results for leaf in leaves)
    # concurrent Function updates may leave superseded revisions behind; gc removes exactly those
    gc = exp.gc()
    assert gc.counts()["blobs"] == 0 and gc.counts()["unreachable_states"] == 0
    if layout == "files":
        assert len(exp.store.list("meta")) == n
    else:  # no file per state; compaction leaves one segment besides any still open
        assert exp.store.list("meta") == []
        assert len([k for k in exp.store.list("segments") if k.endswith(".seg")]) == 1
    assert set(exp.records.committed()) == set(committed)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _hold_locks_until_killed(directory: str, keys: list[str], ready) -> None:
    store = dg.Experiment(directory).store
    locks = [store.lock(key, stale_after=3600) for key in keys]
    assert all(lock.acquire(timeout=10) for lock in locks)
    ready.send(len(locks))
    time.sleep(600)


@pytest.mark.timeout(120)
def test_locks_of_a_killed_process_do_not_block(tmp_path):
    directory = str(tmp_path / "exp")
    exp, root, leaves = build(directory, data_mb=0.1, model_mb=0.1, width=1, depth=1)
    keys = [f"locks/{promise.sha()}.lock" for promise in (root, leaves[0])]
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe(duplex=False)
    holder = ctx.Process(target=_hold_locks_until_killed, args=(directory, keys, child_end), daemon=True)
    holder.start()
    assert parent_end.poll(30) and parent_end.recv() == 2
    assert exp.gc(dry_run=True).live_locks == 2  # both held by a live process
    holder.kill()  # SIGKILL while it holds them, as a run killed mid-recipe would
    holder.join()
    assert exp.gc(dry_run=True).live_locks == 0
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {HERE!r})
        from storedefs import build
        exp, _, _ = build({directory!r}, data_mb=0.1, model_mb=0.1, width=1, depth=1)
        print(len(exp.run(progress=False).computed))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2"]
    assert set(exp.store.list("locks")) <= {RANGES_KEY}
    assert set(exp.records.committed()) == {root.sha(), leaves[0].sha()}
    assert exp.verify().ok


@pytest.mark.timeout(120)
def test_live_lock_makes_the_other_process_wait_then_reuse(tmp_path):
    """A state locked by a live process is not computed twice: the waiter takes the stored result."""
    directory = str(tmp_path / "exp")
    calls = str(tmp_path / "calls")
    exp, root, leaves = build(directory, data_mb=0.1, model_mb=0.1, width=1, depth=1)
    exp.run(targets=[root], progress=False)
    lock = exp.store.lock(f"locks/{leaves[0].sha()}.lock", stale_after=3600)
    assert lock.acquire(timeout=5)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {HERE!r})
        from storedefs import build
        exp, _, _ = build({directory!r}, data_mb=0.1, model_mb=0.1, width=1, depth=1)
        r = exp.run(progress=False)
        print(len(r.computed), len(r.cached))
        """
    )
    waiter = _start(script, calls, "waiter")
    try:
        time.sleep(1.5)
        assert waiter.poll() is None  # blocked on the live lock
        # meanwhile the lock's holder (this process) computes the state, bypassing the lock it holds
        holder, _, _ = build(directory, data_mb=0.1, model_mb=0.1, width=1, depth=1, locking=False)
        assert len(holder.run(progress=False).computed) == 1
    finally:
        lock.release()
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert [run for run, name, _ in read_calls(calls) if name == "perturb"] == []
    assert out.split()[0] == "0"


def test_a_lock_being_written_is_not_broken(tmp_path):
    """Between O_EXCL creation and the owner write a lock file is empty: it must not look stale."""
    from dagger.store.locks import UNREADABLE_GRACE_S, FileLock

    path = str(tmp_path / "x.lock")
    open(path, "wb").close()  # a competitor has just created it and not yet written its owner
    contender = FileLock(path, stale_after=3600)
    assert contender.acquire(timeout=0.2) is False
    assert os.path.exists(path)  # still the competitor's
    old = os.path.getmtime(path) - UNREADABLE_GRACE_S - 5
    os.utime(path, (old, old))  # ...but an empty lock that old belongs to a process that died writing it
    assert contender.acquire(timeout=5) is True
    contender.release()
    assert not os.path.exists(path)
