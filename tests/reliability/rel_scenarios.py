"""Fault scenarios shared by the reliability tests and ``benchmarks/reliability.py``.

Every scenario runs a real experiment in real processes on a real folder, hurts
it (SIGKILL at a random moment, a full disk, ...), then audits the folder: each
committed state must restore to exactly the values its lineage implies, every
blob file must hash to its name, and no pickle may be torn. A recovery run then
finishes the tree and reports which states it had to recompute: a state that
was committed before the fault and is recomputed (or gone) afterwards is lost.
"""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any

import numpy as np

import dagger as dg
from dagger.store import LocalStore, digest
from dagger.store import segments as seglog
from dagger.store.maintenance import gc
from dagger.store.records import Records, is_sha

FORK = multiprocessing.get_context("fork")


# ---- the workload ---------------------------------------------------------------------


class RelState(dg.ExperimentState):
    PROPERTIES = ["name", "size"]
    NONHASHED_ATTRIBUTES = ["weights", "history"]

    def initialize_state(self, **kwargs: Any) -> None:
        self.weights = np.arange(self.size, dtype=np.float64)
        self.history = []


class Step(dg.Recipe):
    """Writes a new buffer (a new blob) and appends to a small list, so states differ."""

    PROPERTIES = ["k"]

    def run(self, state: RelState) -> RelState:
        state.weights = state.weights * 0.5 + self.k
        state.history.append(self.k)
        return state


@dg.Function
def summary(state: RelState) -> dict[str, Any]:
    return {"total": float(state.weights.sum()), "steps": len(state.history)}


def expected_weights(size: int, history: list[int]) -> np.ndarray:
    w = np.arange(size, dtype=np.float64)
    for k in history:
        w = w * 0.5 + k
    return w


def define(directory: Any, branches: int = 4, depth: int = 4, size: int = 100_000) -> dg.Experiment:
    """``branches`` chains of ``depth`` Steps under one root: ``1 + branches * depth`` states."""
    exp = dg.Experiment(directory, state_class=RelState)
    root = exp.spawn_new_tree(name="reliability", size=size)
    for b in range(branches):
        s = root
        with exp.tag(f"branch:{b}"):
            for d in range(depth):
                s = Step(k=100 * b + d)(s)
            summary(s)
    return exp


def n_states(branches: int = 4, depth: int = 4) -> int:
    return 1 + branches * depth


# ---- auditing a folder ------------------------------------------------------------------


def committed(directory: str) -> dict[str, str]:
    return Records(LocalStore(directory)).committed()


def layout_of(directory: str) -> str:
    """Where the folder's commit records are: "files" (``meta/``), "segments", or "both"."""
    def has(folder: str) -> bool:
        path = os.path.join(directory, folder)
        return os.path.isdir(path) and any(not n.startswith(".") for n in os.listdir(path))

    files, segs = has("meta"), has("segments")
    return "both" if files and segs else "segments" if segs else "files"


def audit(directory: str) -> dict[str, Any]:
    """Check every file of an experiment folder; return counts and a list of problems.

    - every committed state restores, and its weights equal what its history implies;
    - every blob file (referenced or not) hashes to its own name;
    - every state pickle (committed or not) loads: nothing is ever torn.
    """
    store = LocalStore(directory)
    records = Records(store)
    problems: list[str] = []
    states = records.committed()
    for sha, rev in states.items():
        try:
            meta = records.read_meta(sha, rev)
            state = records.load_pickle(sha)
            want = expected_weights(state.size, state.history)
            if meta.get("sha") != sha or not np.array_equal(state.weights, want):
                problems.append(f"state {sha[:12]} restores to wrong values")
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            problems.append(f"state {sha[:12]}: {type(exc).__name__}: {exc}")
    for key in store.list("blobs"):
        name = key.rsplit("/", 1)[-1]
        if not is_sha(name) or digest.hexdigest(records.blob_hash, store.get(key)) != name:
            problems.append(f"{key} does not hash to its name")
    for key in store.list("states"):
        sha = key.rsplit("/", 1)[-1].removesuffix(".pkl")
        if sha in states:
            continue
        try:
            records.load_pickle(sha)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"uncommitted {key} is torn: {type(exc).__name__}: {exc}")
    return {"committed": len(states), "corrupt": len(problems), "problems": problems}


# ---- processes ------------------------------------------------------------------------


def _child_run(directory: str, ready: Any, kwargs: dict[str, Any]) -> None:
    os.environ["DAGGER_PROGRESS"] = "0"
    try:
        exp = define(directory, **kwargs)
        ready.send("ready")
        exp.run(progress=False)
    except BaseException:  # noqa: BLE001 - the parent judges by the folder and the exit code
        os._exit(3)
    os._exit(0)


def start_runner(directory: str, **kwargs: Any) -> tuple[Any, Any]:
    """Fork a process that defines the workload, signals, then runs it."""
    parent_end, child_end = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_child_run, args=(directory, child_end, kwargs), daemon=True)
    proc.start()
    child_end.close()
    return proc, parent_end


def wait_ready(proc: Any, conn: Any, timeout: float = 60.0) -> None:
    if not conn.poll(timeout):
        proc.kill()
        raise RuntimeError("the experiment process never got ready")
    conn.recv()


def kill(proc: Any) -> None:
    """SIGKILL and reap (a reaped pid is gone, so its locks are visibly stale)."""
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.join()


def calibrate(directory: str, repeats: int = 3, **kwargs: Any) -> float:
    """The window for random kills: 70% of the fastest of ``repeats`` uninterrupted runs.

    A first run in this process imports everything a run needs, so forked
    runners start warm. Taking the fastest run, and only its first 70%, keeps
    kills inside a run even when a later run goes faster than the timed ones.
    """
    recover(os.path.join(directory, "warm"), **kwargs)
    timings = []
    for i in range(repeats):
        proc, conn = start_runner(os.path.join(directory, f"timed{i}"), **kwargs)
        wait_ready(proc, conn)
        t0 = time.perf_counter()
        proc.join()
        if proc.exitcode != 0:
            raise RuntimeError(f"calibration run failed with exit code {proc.exitcode}")
        timings.append(time.perf_counter() - t0)
    return 0.7 * min(timings)


def recover(directory: str, **kwargs: Any) -> tuple[dg.RunReport, float]:
    """Open the folder again and finish the tree; return the report and the seconds it took."""
    t0 = time.perf_counter()
    exp = define(directory, **kwargs)
    report = exp.run(progress=False)
    return report, time.perf_counter() - t0


def kill_trial(
    directory: str, rng: random.Random, window: float, after_first_commit: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Run the workload, SIGKILL it after a random delay, audit the folder, then recover.

    With ``after_first_commit`` the delay starts when the first state is committed
    (and is at most half the window), so the kill lands mid-run however much
    slower than the calibration runs this one goes on a loaded machine.
    """
    proc, conn = start_runner(directory, **kwargs)
    wait_ready(proc, conn)
    delay = rng.uniform(0.0, window / 2 if after_first_commit else window)
    if after_first_commit:
        while proc.is_alive() and not committed(directory):
            time.sleep(0.0005)
    time.sleep(delay)
    kill(proc)
    before = committed(directory)
    after_kill = audit(directory)
    report, seconds = recover(directory, **kwargs)
    recomputed = {s.sha for s in report.computed}
    after = committed(directory)
    lost = [sha for sha in before if sha in recomputed or sha not in after]
    final = audit(directory)
    return {
        "delay": delay,
        "killed_exit": proc.exitcode,
        "committed_at_kill": len(before),
        "finished": len(after),
        "lost": len(lost),
        "corrupt": after_kill["corrupt"] + final["corrupt"],
        "problems": after_kill["problems"] + final["problems"],
        "recover_s": seconds,
    }


def concurrent_kill_trial(
    directory: str, rng: random.Random, window: float, workers: int = 4, **kwargs: Any
) -> dict[str, Any]:
    """``workers`` processes run the same tree at once; one is SIGKILLed; the others must finish."""
    runners = [start_runner(directory, **kwargs) for _ in range(workers)]
    for proc, conn in runners:
        wait_ready(proc, conn)
    victim = rng.randrange(workers)
    time.sleep(rng.uniform(0.0, window))
    t0 = time.perf_counter()
    kill(runners[victim][0])
    exits = []
    for i, (proc, _) in enumerate(runners):
        if i != victim:
            proc.join(120)
            exits.append(proc.exitcode)
    seconds = time.perf_counter() - t0
    result = audit(directory)
    return {
        "survivor_exits": exits,
        "finished": result["committed"],
        "lost": n_states(**_shape(kwargs)) - result["committed"],
        "corrupt": result["corrupt"],
        "problems": result["problems"],
        "recover_s": seconds,
    }


def _shape(kwargs: dict[str, Any]) -> dict[str, int]:
    return {k: kwargs[k] for k in ("branches", "depth") if k in kwargs}


def _hold_lock_then_wait(directory: str, sha: str, ready: Any) -> None:
    store = LocalStore(directory)
    lock = store.lock(f"locks/{sha}.lock", 6 * 3600.0)
    lock.acquire()
    ready.send("held")
    time.sleep(600)
    os._exit(0)


def live_locks(directory: str) -> int:
    """How many state locks live processes hold (as ``gc`` counts them)."""
    return gc(Records(LocalStore(directory)), dry_run=True).live_locks


def orphan_lock(directory: str, sha: str) -> int:
    """Leave behind the lock of ``sha`` as a process killed while computing it would.

    Returns how many locks were live just before the kill (1: the holder really held it).
    """
    parent_end, child_end = FORK.Pipe(duplex=False)
    proc = FORK.Process(target=_hold_lock_then_wait, args=(directory, sha, child_end), daemon=True)
    proc.start()
    child_end.close()
    wait_ready(proc, parent_end)
    held = live_locks(directory)
    kill(proc)
    return held


# ---- a store whose disk fails -------------------------------------------------------------


class _FailingFile:
    """Writes the first half of what it is given, then fails like a full or broken disk."""

    def __init__(self, f: Any, code: int) -> None:
        self.f = f
        self.code = code

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.f.write(view[: view.nbytes // 2])
        self.f.flush()
        raise OSError(self.code, os.strerror(self.code))


def frame_label(frame: Any) -> str:
    """How messages name the record a segment frame holds: ``segments/<sha>.<rev>``."""
    body = bytes(memoryview(frame)[17 : 17 + 600])  # after the kind, 8 hex digits of length and 8 of CRC-32
    key, rev = body.split(b" ", 2)[:2]
    return f"{seglog.FOLDER}/{key.decode()}.{rev.decode()}"


class _SegmentAppends:
    """Stands in for the ``os`` module inside :mod:`dagger.store.segments` while test stores with a bad disk live.

    Under the segments layout a commit record is no file that ``open_write`` makes:
    it is one ``os.write`` of a frame to the end of the process's own segment (an
    ``O_APPEND`` file in ``segments/``). Each such append of a record (kind ``R``) to
    a registered store's folder goes to that store's ``append_frame(fd, frame)``,
    which may fail or die mid-write; every other call is the real ``os``.
    """

    def __init__(self) -> None:
        self.stores: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        appends = self.stores and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND  # a writer's own segment
        if appends and bytes(memoryview(data)[:1]) == seglog.RECORD:
            for store in self.stores:
                if _fd_in(fd, os.path.join(store.root, seglog.FOLDER)):
                    return store.append_frame(fd, data)
        return os.write(fd, data)


_APPENDS = _SegmentAppends()


def _fd_in(fd: int, folder: str) -> bool:
    """Whether the open file ``fd`` is one of ``folder``'s files."""
    mine = os.fstat(fd)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return False
    for name in names:
        try:
            if os.path.samestat(mine, os.stat(os.path.join(folder, name))):
                return True
        except FileNotFoundError:
            continue
    return False


def watch_segment_appends(store: Any) -> None:
    """Send ``store``'s segment appends of commit records to its ``append_frame`` until :func:`unwatch_segment_appends`."""
    if not _APPENDS.stores:
        seglog.os = _APPENDS  # type: ignore[attr-defined]
    _APPENDS.stores.append(store)


def unwatch_segment_appends(store: Any) -> None:
    if store in _APPENDS.stores:
        _APPENDS.stores.remove(store)
    if not _APPENDS.stores:
        seglog.os = os  # type: ignore[attr-defined]


class FaultyStore(LocalStore):
    """A LocalStore whose ``nth`` write of one kind ("blob", "pickle" or "meta") fails with ``code``.

    The failure happens mid-write, after half the bytes reached the temporary
    file, exactly where a disk that fills up (ENOSPC) or breaks (EIO) would stop.
    A "meta" write is a commit record in either layout: a ``meta/`` file, or (segments)
    the append of its frame to this process's segment, which fails after half the frame
    reached the segment. ``failed_keys`` names what failed as messages do (a key, or
    ``segments/<sha>.<rev>``). The disk stays bad for segment appends until :meth:`heal`
    (or the end of a ``with`` block).
    """

    def __init__(self, path: str, kind: str, nth: int = 1, code: int = errno.ENOSPC) -> None:
        super().__init__(path)
        self.kind = kind
        self.nth = nth
        self.code = code
        self.seen = 0
        self.failed_keys: list[str] = []
        watch_segment_appends(self)

    def heal(self) -> None:
        """Segment appends go to the real disk again (``open_write`` of this store keeps its fault)."""
        unwatch_segment_appends(self)

    def __enter__(self) -> FaultyStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.heal()

    @staticmethod
    def kind_of(key: str) -> str:
        return {"blobs": "blob", "states": "pickle", "meta": "meta"}.get(key.split("/", 1)[0], "other")

    def _fails_now(self, kind: str) -> bool:
        if kind != self.kind:
            return False
        self.seen += 1
        return self.seen == self.nth

    @contextmanager
    def open_write(self, key: str) -> Any:
        with super().open_write(key) as f:
            if self._fails_now(self.kind_of(key)):
                self.failed_keys.append(key)
                yield _FailingFile(f, self.code)
                return
            yield f

    def append_frame(self, fd: int, frame: Any) -> int:
        """One append of a commit record to a segment (see :class:`_SegmentAppends`)."""
        if self._fails_now("meta"):
            self.failed_keys.append(frame_label(frame))
            view = memoryview(frame).cast("B")
            os.write(fd, view[: view.nbytes // 2])
            raise OSError(self.code, os.strerror(self.code))
        return os.write(fd, frame)


def segment_damage(directory: str) -> list[str]:
    """Every segment that holds bytes which are no whole frame (a torn tail, or damage before it)."""
    return [
        f"{seglog.FOLDER}/{name}: {scan.torn_bytes} torn, {scan.damaged_bytes} damaged bytes"
        for name, scan in seglog.scan_segments(LocalStore(directory))
        if scan.torn_bytes or scan.damaged_bytes
    ]


ERRNOS = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}


# ---- a huge recipe property ------------------------------------------------------------

_HUGE = """
import gc, json, resource, sys
import dagger as dg
import rel_scenarios as sc

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

n = int(sys.argv[1])
exp = dg.Experiment(sys.argv[2], state_class=sc.RelState)
root = exp.spawn_new_tree(name="huge", size=8)
sc.Step(k=list(range(1000)))(root)            # warm up the hashing path
huge = list(range(n))
gc.collect()
before = peak()
child = sc.Step(k=huge)(root)                  # hashes the recipe's properties
after = peak()
print(json.dumps({"list_bytes": sys.getsizeof(huge), "growth": after - before, "sha": child._sha}))
"""


def run_huge(n: int, directory: str) -> dict[str, Any]:
    """Hash a recipe whose property is ``list(range(n))`` in a fresh process; return its peak-memory figures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _HUGE, str(n), directory], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- a disk that fills up under a segment ---------------------------------------------------------

_FULL = """
import json, resource, sys
import dagger as dg
import rel_scenarios as sc
directory, limit = sys.argv[1], int(sys.argv[2])
exp = sc.define(directory, size=64)            # small states: every pickle is carried by its record
exp._record_environment()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))  # no file grows past `limit` bytes (EFBIG)
try:
    exp.run(progress=False)
    out = {"failures": [], "message": ""}
except dg.RunFailedError as exc:
    out = {"failures": [f.sha for f in exc.failures], "message": str(exc)}
print(json.dumps(out))
"""


def run_until_full(directory: str, limit: int) -> dict[str, Any]:
    """Run the workload in a fresh process whose files cannot grow past ``limit`` bytes (a real short write,
    then EFBIG, from the kernel): where records go to a segment, the segment fills up mid-run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COV_CORE")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", _FULL, directory, str(limit)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])
