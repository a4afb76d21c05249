"""Shared pieces of the benchmark scripts: fresh-process runs, medians, the machine's floor.

Every script prints one JSON line. Absolute times move from machine to
machine, so each script also measures, in the same run and in the same
folder, the floor for its work: an atomic small-file write (write a
temporary file, then ``os.replace`` it into place, as the store does) and a
plain sequential write and read of the same bytes. Figures are reported
with their ratio to that floor.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "_worker.py")
MiB = 1024 * 1024


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def in_fresh_process(mode: str, directory: str, shape: str, n: int, pythonpath: str | None = None, **options: Any) -> dict[str, Any]:
    """Run one measurement of ``_worker.py`` in a new interpreter; return its JSON result.

    ``pythonpath`` puts another copy of dagger first on the path (for before/after comparisons).
    """
    env = dict(os.environ, DAGGER_PROGRESS="0", PYTHONHASHSEED="0")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    args = [sys.executable, WORKER, mode, directory, shape, str(n), json.dumps(options)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {mode} {shape} {n} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Folders of finished measurements, removed when the script exits (or, under run.py, when the
# whole suite has run), not as each measurement ends. On this VM, for minutes after thousands
# of freshly written files are removed, creating a file costs up to 20x more, all of it kernel
# CPU time with no disk I/O (measured: an atomic small-file write at 0.04-0.08 ms on a quiet
# disk, 0.5-1.0 ms right after removing the 4,000 files of one cold run). The root file system
# is ext4 without a journal, where inode allocation checks and skips recently deleted inodes,
# which is the likely cause. Removing each run's folder before the next would charge the
# benchmark's own cleanup to the next measurement.
_FINISHED: list[str] = []


def _remove_finished() -> None:
    for path in _FINISHED:
        shutil.rmtree(path, ignore_errors=True)


atexit.register(_remove_finished)


def bench_base() -> str:
    """Where measurements write: ``DAGGER_BENCH_SESSION`` (set by run.py), else ``DAGGER_BENCH_DIR``,
    else ``runs/bench`` in the repository."""
    return (
        os.environ.get("DAGGER_BENCH_SESSION")
        or os.environ.get("DAGGER_BENCH_DIR")
        or os.path.join(os.path.dirname(HERE), "runs", "bench")
    )


def bench_folder(chosen: str | None) -> str:
    """Where to write: ``--dir``, else the benchmark session's folder (:func:`bench_base`); made if missing."""
    folder = chosen or bench_base()
    os.makedirs(folder, exist_ok=True)
    return folder


@contextmanager
def scratch(prefix: str = "dagger-bench-") -> Iterator[str]:
    """A temporary folder for one measurement (see :func:`bench_base`), removed later (see above).

    The floor is measured in the same place, so ratios compare like with like.
    """
    base = bench_base()
    os.makedirs(base, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield path
    finally:
        if os.environ.get("DAGGER_BENCH_SESSION"):
            pass  # run.py removes the whole session folder at the end
        else:
            _FINISHED.append(path)


def atomic_write_s(folder: str, size: int = 1024, count: int = 400, fsync: bool = False) -> float:
    """Median seconds for one atomic small-file write (tmp file + ``os.replace``; ``fsync`` before it)."""
    tmp = os.path.join(folder, "tmp")
    os.makedirs(tmp, exist_ok=True)
    data = os.urandom(size)
    times = []
    for i in range(count):
        final = os.path.join(folder, f"f{i}")
        t0 = time.perf_counter()
        path = os.path.join(tmp, uuid.uuid4().hex)
        with open(path, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(path, final)
        times.append(time.perf_counter() - t0)
    return median(times)


def create_and_append_s(folder: str, size: int = 1024, count: int = 200) -> tuple[float, float]:
    """Median seconds to create a small file atomically (as :func:`atomic_write_s`), and to append
    as many bytes to one open file. Deletes nothing: every name is new, in a fresh folder."""
    folder = tempfile.mkdtemp(prefix="probe-", dir=folder)
    create = atomic_write_s(folder, size=size, count=count)
    data = os.urandom(size)
    times = []
    with open(os.path.join(folder, "append.log"), "ab", buffering=0) as f:
        for _ in range(count):
            t0 = time.perf_counter()
            f.write(data)
            times.append(time.perf_counter() - t0)
    return create, median(times)


#: A quiet disk creates a small file (atomically) in 23-52x the time of a small append; ext4 with online
#: discard (this VM) takes 120-720x for minutes after a mass deletion (0.12-0.91 ms against 1 us).
QUIET_CREATE_OVER_APPEND = 80.0


def wait_for_quiet_disk(folder: str, limit_s: float = 600.0, every_s: float = 10.0) -> dict[str, Any]:
    """Wait (at most ``limit_s``) until creating a file costs no more than
    :data:`QUIET_CREATE_OVER_APPEND` appends, and say how long that took.

    Deleting many files (a test suite, the previous benchmark suite's clean-up)
    makes this VM's ext4 (mounted with ``discard``) create files 3-25x slower
    (0.12-0.91 ms against 0.034-0.053 ms) for several minutes. A benchmark started then measures those deletions, not
    dagger; the probe deletes nothing, so it does not prolong what it waits out.
    """
    t0 = time.perf_counter()
    while True:
        create, append = create_and_append_s(folder)
        ratio = create / max(append, 1e-9)
        waited = time.perf_counter() - t0
        if ratio <= QUIET_CREATE_OVER_APPEND or waited >= limit_s:
            return {
                "waited_s": round(waited, 1),
                "settled": ratio <= QUIET_CREATE_OVER_APPEND,
                "create_us": round(create * 1e6, 1),
                "append_us": round(append * 1e6, 2),
            }
        time.sleep(every_s)


def sequential_s(folder: str, nbytes: int, repeat: int = 5) -> tuple[float, float]:
    """Median seconds to write and then read ``nbytes`` sequentially in one plain file."""
    nbytes = max(int(nbytes), 1)
    data = os.urandom(min(nbytes, MiB)) * (nbytes // MiB) + os.urandom(nbytes % MiB)
    path = os.path.join(folder, "seq.bin")
    writes, reads = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(data)
        t1 = time.perf_counter()
        with open(path, "rb") as f:
            f.read()
        t2 = time.perf_counter()
        writes.append(t1 - t0)
        reads.append(t2 - t1)
    os.remove(path)
    return median(writes), median(reads)


def floor(nbytes: int) -> dict[str, float]:
    """The machine's floor: atomic 1 KiB write, and sequential write/read of ``nbytes``."""
    with scratch("dagger-floor-") as folder:
        atomic = atomic_write_s(folder)
        write, read = sequential_s(folder, nbytes)
    return {
        "atomic_write_ms": atomic * 1e3,
        "floor_bytes": int(nbytes),
        "seq_write_ms": write * 1e3,
        "seq_read_ms": read * 1e3,
    }


def folder_bytes(folder: str, sub: str = "") -> int:
    total = 0
    for dirpath, _, files in os.walk(os.path.join(folder, sub)):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def emit(result: dict[str, Any]) -> None:
    """Print the one JSON line of a benchmark script."""
    out = {}
    for key, value in result.items():
        out[key] = round(value, 6) if isinstance(value, float) else value
    print(json.dumps(out), flush=True)


def repeat_env(default: int) -> int:
    """How many repetitions to take (``DAGGER_BENCH_REPEAT`` overrides, for quick checks)."""
    return int(os.environ.get("DAGGER_BENCH_REPEAT", default))


def timed(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return median(times)
