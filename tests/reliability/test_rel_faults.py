"""Faults: SIGKILL at random moments, a killed concurrent runner, a full or broken disk, orphan locks."""

from __future__ import annotations

import errno
import os
import random

import pytest
import records_io
import rel_scenarios as sc

import dagger as dg
from dagger.store import LocalStore
from dagger.store.pickling import DEFAULT_THRESHOLD
from dagger.store.records import Records, meta_key, state_key

TRIALS = 10
SEED = 20261128


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """How long one uninterrupted run takes here: kills land uniformly inside it."""
    return sc.calibrate(str(tmp_path_factory.mktemp("calibrate")))


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path, window, layout):
    rng = random.Random(SEED)
    # odd trials time the kill from the first commit, so some kills surely land mid-run under load
    results = [
        sc.kill_trial(str(tmp_path / f"trial{i}"), rng, window, after_first_commit=i % 2 == 1) for i in range(TRIALS)
    ]
    for r in results:
        assert r["problems"] == []
        assert r["corrupt"] == 0
        assert r["lost"] == 0
        assert r["finished"] == sc.n_states()
    assert {sc.layout_of(str(tmp_path / f"trial{i}")) for i in range(TRIALS)} == {layout}
    # The kills really interrupted runs (not all before the first state or after the last).
    assert sum(r["killed_exit"] == -9 for r in results) >= TRIALS // 2
    assert any(0 < r["committed_at_kill"] < sc.n_states() for r in results)


@pytest.mark.slow
def test_sigkill_one_of_four_concurrent_runners(tmp_path, window, layout):
    rng = random.Random(SEED + 1)
    r = sc.concurrent_kill_trial(str(tmp_path / "exp"), rng, window, workers=4)
    assert r["survivor_exits"] == [0, 0, 0]
    assert sc.layout_of(str(tmp_path / "exp")) == layout
    assert r["problems"] == []
    assert r["finished"] == sc.n_states()
    assert r["lost"] == 0


def test_lock_left_by_a_killed_process_does_not_block(tmp_path):
    directory = str(tmp_path / "exp")
    exp = sc.define(directory, branches=1, depth=1)
    child = next(p for p in exp._promises.values() if p.parent is not None)
    assert sc.orphan_lock(directory, child._sha) == 1  # held until its owner was killed
    report = exp.run(progress=False)  # would wait 6 hours if the dead owner's lock were honoured
    assert {s.sha for s in report.computed} == set(exp._promises)
    assert sc.live_locks(directory) == 0
    assert not os.path.exists(os.path.join(directory, "locks", f"{child._sha}.lock"))


@pytest.mark.parametrize("code", ["ENOSPC", "EIO"])
@pytest.mark.parametrize("kind", ["blob", "pickle", "carried"])
def test_disk_failure_mid_write(tmp_path, kind, code, layout):
    directory = str(tmp_path / "exp")
    # A small pickle travels in its state's first commit record, and no pickle file is written. For the
    # "pickle" fault the weights stay in band (just under the blob threshold), so every state's pickle
    # exceeds records.INLINE_MAX and is written to its own file under states/, where the disk fails.
    # The "carried" fault fails the write of a first commit record that carries a small pickle: its
    # meta/ file, or (segments) the append of its frame to the process's segment.
    shape = {"size": DEFAULT_THRESHOLD // 8 - 1} if kind == "pickle" else {}
    fault = "meta" if kind == "carried" else kind
    with sc.FaultyStore(directory, kind=fault, nth=3, code=sc.ERRNOS[code]) as store:
        exp = sc.define(store, **shape)
        with pytest.raises(dg.RunFailedError) as info:
            exp.run(progress=False)
    failures = info.value.failures
    assert len(failures) == 1
    bad = failures[0].sha
    message = str(info.value)
    # A clear error that names the state and the cause.
    assert bad[:12] in message
    assert f"could not save state {bad[:12]}" in message
    assert os.strerror(sc.ERRNOS[code]) in message
    assert "run again" in message
    # Nothing partial: the half-written file never appeared under its key (the half-appended frame was cut
    # off its segment), no temp file is left.
    assert len(store.failed_keys) == 1
    if kind == "carried":
        assert store.failed_keys[0].startswith(f"{'segments' if layout == 'segments' else 'meta'}/{bad}.")
        assert records_io.revs(directory, bad) == []
    assert not os.path.exists(os.path.join(directory, store.failed_keys[0]))
    assert sc.segment_damage(directory) == []
    assert os.listdir(os.path.join(directory, "tmp")) == []
    plain = Records(LocalStore(directory))
    assert bad not in plain.committed()
    assert not plain.store.exists(state_key(bad))
    assert sc.layout_of(directory) == layout
    # Other branches are unaffected: everything not below the failed state is committed and sound.
    skipped = {s.sha for s in info.value.report.skipped}
    assert skipped == _descendants(exp, bad)
    audit = sc.audit(directory)
    assert audit["problems"] == []
    assert audit["committed"] == sc.n_states() - 1 - len(skipped)
    # Once the disk is fine again, running again finishes the tree, recomputing only what failed.
    report, _ = sc.recover(directory, **shape)
    assert {s.sha for s in report.computed} == {bad} | skipped
    assert sc.audit(directory)["committed"] == sc.n_states()


def test_failed_commit_record_leaves_no_trace(tmp_path, layout):
    """A disk failure on the commit record itself (a meta/ file, or its append to a segment): the state simply
    does not exist."""
    directory = str(tmp_path / "exp")
    with sc.FaultyStore(directory, kind="meta", nth=2) as store:
        exp = sc.define(store, branches=2, depth=1)
        with pytest.raises(dg.RunFailedError) as info:
            exp.run(progress=False)
    bad = info.value.failures[0].sha
    assert store.failed_keys and store.failed_keys[0].startswith(
        f"{'segments' if layout == 'segments' else 'meta'}/{bad}."
    )
    meta = os.path.join(directory, "meta")
    assert not any(name.startswith(bad) for name in (os.listdir(meta) if os.path.isdir(meta) else []))
    assert records_io.revs(directory, bad) == []  # no record of it in meta/ nor in any segment
    assert sc.segment_damage(directory) == []  # and no part of one: the half frame was cut off
    assert os.listdir(os.path.join(directory, "tmp")) == []
    assert not os.path.exists(os.path.join(directory, meta_key(bad, "0" * 20)))
    assert bad not in sc.committed(directory)
    assert sc.audit(directory)["problems"] == []


def _descendants(exp, sha):
    out = set()
    for other, promise in exp._promises.items():
        node = promise.parent
        while node is not None:
            if node._sha == sha:
                out.add(other)
                break
            node = node.parent
    return out


def test_a_segment_that_fills_the_disk_loses_no_committed_state(tmp_path, monkeypatch):
    """The disk fills up under a segment (the kernel cuts a write short, then refuses it: EFBIG, as ENOSPC would).

    The state whose record did not fit fails with a clear error; no partial record is ever read;
    every state committed before is intact; running again once there is room computes exactly the rest.
    """
    monkeypatch.setenv("DAGGER_SEGMENTS", "1")
    directory = str(tmp_path / "exp")
    out = sc.run_until_full(directory, limit=12_000)
    assert out["failures"], "the segment never reached the limit"
    for sha in out["failures"]:
        assert f"could not save state {sha[:12]}" in out["message"]
    assert os.strerror(errno.EFBIG) in out["message"]
    assert "run again" in out["message"]
    assert sc.layout_of(directory) == "segments"
    seg = os.path.join(directory, "segments")
    sizes = [os.path.getsize(os.path.join(seg, n)) for n in os.listdir(seg) if n.endswith(".seg")]
    assert sizes and max(sizes) <= 12_000
    before = sc.committed(directory)
    assert 0 < len(before) < sc.n_states()
    audit = sc.audit(directory)
    assert audit["problems"] == [] and audit["committed"] == len(before)
    report, _ = sc.recover(directory, size=64)
    assert {s.sha for s in report.computed} == {sha for sha in sc.define(directory, size=64)._promises} - set(before)
    assert sc.audit(directory) == {"committed": sc.n_states(), "corrupt": 0, "problems": []}
