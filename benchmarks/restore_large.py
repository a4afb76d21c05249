"""Restoring a state that holds one large numpy array, against ``np.load`` of the same bytes.

    python benchmarks/restore_large.py [--size-mb 512] [--repeat 7] [--dir PATH] [--no-verify]

One experiment whose root holds a float64 array of ``--size-mb`` MiB is saved
once, and the same array is written with ``np.save`` beside it. Then, alternating
which goes first, each repetition times in this process:

- ``np_load``: ``np.load(path)`` of the ``.npy`` file;
- ``restore``: ``Experiment.restore(dir).graph.root.restore()`` with blob
  verification on (the default): reading the blob, hashing it to check it
  against its name, and unpickling the state around it.

Both files are read through the page cache (they were just written, and this
machine has the memory), so this compares the work each does, not the disk.
Before each timed step the process collects garbage and waits 2 s (this VM
gives memory that stayed free for about 2 s back to its host, and touching it
again costs a fault per page: both sides get the same treatment).

Prints one JSON line: medians in seconds, and ``ratio`` = the median over
repetitions of ``restore / np_load`` of the same repetition. Target: <= 1.15.
``cpu_ratio`` is the same in CPU time of the process (all its threads): the work
each side does, which a loaded machine moves less than wall time (restore does
more of it: it hashes every byte, which ``np.load`` does not).
The default size suits a 2-core machine with 24 GiB; on a big machine use
``--size-mb 4096``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import bench_folder, emit, repeat_env  # noqa: E402

import dagger as dg  # noqa: E402

_ARRAY: np.ndarray | None = None


class Holder(dg.ExperimentState):
    PROPERTIES = ["size_mb"]
    NONHASHED_ATTRIBUTES = ["data"]

    def initialize_state(self, **kwargs):
        # Looked up through the module, not as a global name: cloudpickle saves a __main__ class by
        # value with the globals its methods name, so `self.data = _ARRAY` would store the 512 MiB
        # array a second time inside the class (and unpickle it again at every restore).
        self.data = sys.modules[__name__]._ARRAY


def settle(pause: float) -> None:
    gc.collect()
    time.sleep(pause)


def time_np_load(path: str) -> tuple[float, float, np.ndarray]:
    t, c = time.perf_counter(), time.process_time()
    data = np.load(path)
    return time.perf_counter() - t, time.process_time() - c, data


def time_restore(folder: str, verify: bool) -> tuple[float, float, np.ndarray]:
    t, c = time.perf_counter(), time.process_time()
    state = dg.Experiment.restore(folder, verify_blobs=verify).graph.root.restore()
    return time.perf_counter() - t, time.process_time() - c, state.data


def main(argv: list[str] | None = None) -> dict:
    global _ARRAY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=repeat_env(7))
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--no-verify", action="store_true", help="restore with verify_blobs=False")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds to wait before each timed step")
    args = parser.parse_args(argv)
    nbytes = args.size_mb * 2**20
    rng = np.random.default_rng(0)
    _ARRAY = rng.random(nbytes // 8)  # random bytes: no compression or zero-page luck on either side
    base = tempfile.mkdtemp(prefix="dagger-restore-large-", dir=bench_folder(args.dir))
    times: dict[str, list[float]] = {"np_load": [], "restore": [], "np_load_cpu": [], "restore_cpu": []}
    try:
        npy = os.path.join(base, "array.npy")
        np.save(npy, _ARRAY)
        folder = os.path.join(base, "exp")
        exp = dg.Experiment(folder, state_class=Holder)
        exp.spawn_new_tree(size_mb=args.size_mb)
        exp.run(progress=False)
        del exp
        check = _ARRAY[:: 2**12].copy()
        _ARRAY = None
        # Untimed: both once, so that neither side pays a first-touch of the page cache or an import.
        for fn in (lambda: time_np_load(npy), lambda: time_restore(folder, not args.no_verify)):
            *_, data = fn()
            del data
        for rep in range(args.repeat):
            steps = [("np_load", lambda: time_np_load(npy)), ("restore", lambda: time_restore(folder, not args.no_verify))]
            if rep % 2:
                steps.reverse()
            for name, fn in steps:
                settle(args.pause)
                elapsed, cpu, data = fn()
                if data.nbytes != nbytes or not np.array_equal(data[:: 2**12], check):
                    raise SystemExit(f"{name}: the array read back differs from the one saved")
                times[name].append(elapsed)
                times[f"{name}_cpu"].append(cpu)
                del data
    finally:
        shutil.rmtree(base, ignore_errors=True)
    ratio = statistics.median(r / n for r, n in zip(times["restore"], times["np_load"], strict=True))
    result = {
        "workload": "restore_large",
        "bytes": nbytes,
        "repeat": args.repeat,
        "verify_blobs": not args.no_verify,
        "cpus": os.cpu_count(),
        "np_load_s": statistics.median(times["np_load"]),
        "restore_s": statistics.median(times["restore"]),
        "ratio": ratio,
        "np_load_cpu_s": statistics.median(times["np_load_cpu"]),
        "restore_cpu_s": statistics.median(times["restore_cpu"]),
        "cpu_ratio": statistics.median(r / n for r, n in zip(times["restore_cpu"], times["np_load_cpu"], strict=True)),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "target_ratio": 1.15,
        "meets_target": ratio <= 1.15,
        "runs": {k: [round(x, 4) for x in v] for k, v in times.items()},
    }
    emit(result)
    return result


if __name__ == "__main__":
    main()
