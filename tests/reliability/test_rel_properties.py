"""Property-based tests: hashing of recipe properties, and the store under random operations and crashes."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import rel_scenarios as sc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dagger as dg
from dagger.hashing import digest
from dagger.store import LocalStore
from dagger.store import segments as seglog
from dagger.store.layout import SEGMENTS_ENV
from dagger.store.maintenance import gc
from dagger.store.records import Records, meta_key, state_key

# ---- strategies for recipe properties -------------------------------------------------------

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 0.1, 0.1000000001]
)
ints = (
    st.integers()
    | st.integers(min_value=2**62, max_value=2**300)
    | st.integers(min_value=-(2**300), max_value=-(2**62))
)
text = st.text(max_size=12) | st.sampled_from(["", "é", "e\u0301", "日本語", "🙂", "1", "True"])
hashable = st.recursive(
    st.none() | st.booleans() | ints | st.floats(allow_nan=False) | text | st.binary(max_size=8),
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
values = st.recursive(
    st.none() | st.booleans() | ints | floats | text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(hashable, inner, max_size=4)
        | st.sets(hashable, max_size=4)
        | st.frozensets(hashable, max_size=4)
    ),
    max_leaves=12,
)


def canon(v: Any) -> Any:
    """What makes two values the same identity: exact type and exact value, order-free for dicts and sets."""
    t = type(v)
    if t is float:
        return ("float", "nan" if v != v else struct.pack(">d", v))
    if t in (list, tuple):
        return (t.__name__, tuple(canon(x) for x in v))
    if t in (set, frozenset):
        return (t.__name__, tuple(sorted(repr(canon(x)) for x in v)))
    if t is dict:
        return ("dict", tuple(sorted(repr((canon(k), canon(x))) for k, x in v.items())))
    return (t.__name__, v)


def reordered(v: Any) -> Any:
    """The same value built in another order: dicts and sets filled back to front."""
    t = type(v)
    if t is dict:
        return {reordered(k): reordered(x) for k, x in reversed(list(v.items()))}
    if t in (set, frozenset):
        return t(reordered(x) for x in reversed(list(v)))
    if t in (list, tuple):
        return t(reordered(x) for x in v)
    return v


# ---- hashing: deterministic across processes, order-free, distinct --------------------------

_WORKER = """
import pickle, struct, sys
from dagger.hashing import digest
read, write = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = read.read(8)
    if len(head) < 8:
        break
    batch = pickle.loads(read.read(struct.unpack(">Q", head)[0]))
    out = pickle.dumps([digest(v) for v in batch])
    write.write(struct.pack(">Q", len(out)) + out)
    write.flush()
"""


@pytest.fixture(scope="module")
def other_process():
    """A second interpreter, with another PYTHONHASHSEED, that hashes batches of values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env["PYTHONHASHSEED"] = "4242"
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def hash_there(batch: list[Any]) -> list[str]:
        data = pickle.dumps(batch)
        proc.stdin.write(struct.pack(">Q", len(data)) + data)
        proc.stdin.flush()
        size = struct.unpack(">Q", proc.stdout.read(8))[0]
        return pickle.loads(proc.stdout.read(size))

    yield hash_there
    proc.stdin.close()
    proc.wait(10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(values, min_size=1, max_size=8))
def test_hash_is_the_same_in_another_process(other_process, batch):
    assert other_process(batch) == [digest(v) for v in batch]


@settings(max_examples=150, deadline=None)
@given(values)
def test_hash_is_order_free_for_dicts_and_sets(value):
    assert digest(reordered(value)) == digest(value)


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_hash_differs_exactly_when_values_differ(a, b):
    assert (digest(a) == digest(b)) == (canon(a) == canon(b))


@settings(max_examples=60, deadline=None)
@given(values)
def test_recipe_identity_follows_its_properties(value):
    class Probe(dg.Recipe):
        PROPERTIES = ["x"]

    assert Probe(x=value).identity()[1] == Probe(x=reordered(value)).identity()[1]
    assert Probe(x=value).identity()[1] != Probe(x=[value]).identity()[1]


# ---- the store under random operations and crashes ----------------------------------------------


class _Crash(BaseException):
    """The process died here (a SIGKILL): nothing after this point runs, nothing is cleaned up."""


class _HalfThenDie:
    def __init__(self, f: Any) -> None:
        self.f = f

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view[: view.nbytes // 2])
        self.f.close()
        raise _Crash()


class CrashingStore(LocalStore):
    """A LocalStore that dies at its ``crash_at``-th write or delete, leaving a half temp file behind.

    Under the segments layout the append of a commit record to this process's segment is a write too:
    dying there leaves half its frame at the segment's tail (a torn tail), and the segment file closed
    (its lock gone), as the kernel leaves it when a process is killed.
    """

    crash_at: int | None = None

    def _armed(self) -> bool:
        if self.crash_at is None:
            return False
        self.crash_at -= 1
        return self.crash_at == 0

    @contextmanager
    def open_write(self, key: str) -> Any:
        if self._armed():
            f = open(self._tmp_path(), "wb")
            yield _HalfThenDie(f)
            return
        with super().open_write(key) as f:
            yield f

    def append_frame(self, fd: int, frame: Any) -> int:
        """One append of a commit record to a segment (see ``rel_scenarios.watch_segment_appends``)."""
        if self._armed():
            view = memoryview(frame).cast("B")
            os.write(fd, view[: view.nbytes // 2])
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)  # the segment file closes (its lock goes); the dead writer's descriptor leads nowhere
            os.close(null)
            raise _Crash()
        return os.write(fd, frame)

    def delete(self, key: str) -> None:
        if self._armed():
            raise _Crash()
        super().delete(key)


SHAS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(6)]


def payload(i: int) -> dict[str, Any]:
    """State ``i``'s content: a big array shared by states with the same ``i % 3`` (one blob), and its own list."""
    return {"weights": np.full(3000, float(i % 3)), "own": np.arange(2000) * i, "history": [i] * i}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


class StoreMachine(RuleBasedStateMachine):
    """Random put/get/delete/gc/crash sequences against a dict model of the committed states.

    Commit records go to segments (``SEGMENTS`` is the value of ``DAGGER_SEGMENTS`` while it runs);
    :class:`FilesStoreMachine` runs the same machine with records in ``meta/`` files.
    """

    SEGMENTS = "1"

    @initialize()
    def setup(self) -> None:
        self.env = os.environ.get(SEGMENTS_ENV)
        os.environ[SEGMENTS_ENV] = self.SEGMENTS
        self.dir = tempfile.mkdtemp(prefix="dagger-sm-")
        self.restart()
        self.model: dict[str, int] = {}

    def restart(self) -> None:
        """A new process opens the folder (its caches start empty)."""
        if hasattr(self, "records"):
            sc.unwatch_segment_appends(self.records.store)
        self.records = Records(CrashingStore(self.dir), blob_threshold=4096)
        sc.watch_segment_appends(self.records.store)

    def save(self, i: int) -> None:
        sha = SHAS[i]
        info = self.records.save_pickle(sha, payload(i))
        old = self.records.committed().get(sha)
        self.records.write_meta({"format": 1, "sha": sha, **info}, old_rev=old)

    @rule(i=st.integers(0, 5))
    def put(self, i: int) -> None:
        self.save(i)
        self.model[SHAS[i]] = i

    @rule(i=st.integers(0, 5), at=st.integers(1, 5))
    def crash_during_put(self, i: int, at: int) -> None:
        self.records.store.crash_at = at
        try:
            self.save(i)
        except _Crash:
            self.restart()
            if SHAS[i] in self.records.committed():  # died after its commit record (dropping its writer lease)
                self.model[SHAS[i]] = i
        else:  # fewer writes than ``at``: the put completed
            self.model[SHAS[i]] = i
        self.records.store.crash_at = None

    @rule(i=st.integers(0, 5))
    def get(self, i: int) -> None:
        sha = SHAS[i]
        if sha in self.model:
            assert same(self.records.load_pickle(sha), payload(self.model[sha]))
        else:
            assert sha not in self.records.committed()

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: Any) -> None:
        sha = data.draw(st.sampled_from(sorted(self.model)))
        self.records.remove_records(sha)  # the commit record goes first (its meta/ files, or a tombstone)
        self.records.store.delete(state_key(sha))
        del self.model[sha]

    @rule()
    def gc_here(self) -> None:
        gc(self.records)

    @rule()
    def gc_in_another_process(self) -> None:
        gc(Records(LocalStore(self.dir)))

    @invariant()
    def committed_states_match_the_model(self) -> None:
        if not hasattr(self, "model"):
            return
        fresh = Records(LocalStore(self.dir))
        assert set(fresh.committed()) == set(self.model)
        for sha, i in self.model.items():
            assert same(fresh.load_pickle(sha), payload(i))
        for name in os.listdir(os.path.join(self.dir, "meta")) if os.path.isdir(os.path.join(self.dir, "meta")) else []:
            assert name.endswith(".json")
        # Records are where the machine's layout puts them; a crash tears at most a segment's tail.
        if self.SEGMENTS == "0" or self.model:
            assert sc.layout_of(self.dir) == ("files" if self.SEGMENTS == "0" else "segments")
        for _, scan in seglog.scan_segments(LocalStore(self.dir)):
            assert scan.damaged_bytes == 0

    def teardown(self) -> None:
        if hasattr(self, "records"):
            sc.unwatch_segment_appends(self.records.store)
        if hasattr(self, "env"):
            if self.env is None:
                os.environ.pop(SEGMENTS_ENV, None)
            else:
                os.environ[SEGMENTS_ENV] = self.env
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)


class FilesStoreMachine(StoreMachine):
    """The same machine with commit records in ``meta/`` files (``DAGGER_SEGMENTS=0``)."""

    SEGMENTS = "0"


StoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
FilesStoreMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_store_state_machine = StoreMachine.TestCase
test_store_state_machine_files_layout = FilesStoreMachine.TestCase


def test_meta_key_layout_is_what_the_machine_deletes():
    # In the files layout a state's commit records are the meta/ files named after it (remove_records deletes them).
    assert meta_key(SHAS[0], "0" * 20).startswith(f"meta/{SHAS[0]}.")
