"""Store throughput: save and restore a state holding one large numpy array, against the raw disk.

    python benchmarks/store_throughput.py [--size-mb 1024] [--repeat 5] [--dir PATH] [--fsync]

In the same run and the same folder, it times:

- ``raw_write``: writing the array's bytes to a plain file (one sequential write);
- ``raw_read``: reading that file back into a preallocated buffer;
- ``save``: ``Experiment.run()`` of a one-state experiment whose root holds the
  array (the array exists beforehand, so this is the store's work: pickling,
  hashing the blob, writing it and the state's records);
- ``restore``: ``Experiment.restore(dir).graph.root.restore()`` in the same
  process (reading the blob, verifying its hash, unpickling);
- ``restore_noverify``: the same with ``verify_blobs=False`` (no hashing on load).

Before each timed step, dirty pages are flushed (``os.sync``) so that one
step's write-back does not slow the next, and the step waits 3 s: this VM hands
memory that stayed free for about 2 s back to its host (virtio-balloon free page
reporting), and touching it again costs a fault per page. Measured here: a save
made right after the previous 1 GiB was freed took 0.26-0.31 s, one made 3 s later
1.37-1.90 s, and the 0.2 s pause used before let either side land on either
case (a suite at 04:10 recorded saves of 1.13-1.44 s beside raw writes of
0.22-0.24 s). Waiting 3 s puts every step in the same position.

Each repetition uses a fresh folder (so the blob is really written, not
deduplicated). One untimed raw write comes first: the process's first write of a GiB
takes several times longer than the next ones (its memory comes back from the host
too), whoever makes it. Prints one JSON line: medians of ``--repeat`` runs, in seconds
and MB/s, and ``write_ratio`` / ``read_ratio`` = store speed / raw speed
(1.0 = as fast as the raw disk), the median of the ratios of each repetition's
own pair, so that a slow stretch of a shared machine compares like with like
instead of landing on one side only. With ``--fsync`` both sides flush to the
device; without it both may be served by the page cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import dagger as dg

_ARRAY: np.ndarray | None = None


class BigState(dg.ExperimentState):
    PROPERTIES = ["size_mb"]
    NONHASHED_ATTRIBUTES = ["data"]

    def initialize_state(self, **kwargs):
        self.data = _ARRAY  # already built: the run times the store, not the array's creation


def settle() -> None:
    """Start each timed step from the same point: no garbage, no dirty pages from the step before, and
    the memory freed by the step before given back to the host (see the module's docstring)."""
    gc.collect()
    os.sync()
    time.sleep(3.0)


def raw_write(path: str, data: np.ndarray, fsync: bool) -> float:
    t = time.perf_counter()
    with open(path, "wb") as f:
        f.write(memoryview(data).cast("B"))
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    return time.perf_counter() - t


def raw_read(path: str) -> float:
    t = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        view = memoryview(buf)
        done = 0
        while done < size:
            done += f.readinto(view[done:])
    elapsed = time.perf_counter() - t
    del view, buf
    return elapsed


def save(directory: str, size_mb: int, fsync: bool) -> float:
    exp = dg.Experiment(directory, state_class=BigState, fsync=fsync)
    exp.spawn_new_tree(size_mb=size_mb)
    t = time.perf_counter()
    exp.run(progress=False)
    return time.perf_counter() - t


def restore(directory: str, verify: bool = True) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    state = dg.Experiment.restore(directory, verify_blobs=verify).graph.root.restore()
    elapsed = time.perf_counter() - t
    return elapsed, state.data


def main(argv: list[str] | None = None) -> dict:
    global _ARRAY
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--fsync", action="store_true", help="flush every file to the device")
    args = parser.parse_args(argv)

    nbytes = args.size_mb * 2**20
    _ARRAY = np.arange(nbytes // 8, dtype=np.float64)
    base = tempfile.mkdtemp(prefix="dagger-throughput-", dir=args.dir)
    times: dict[str, list[float]] = {"raw_write": [], "raw_read": [], "save": [], "restore": [], "restore_noverify": []}
    try:
        warm = os.path.join(base, "warm-up.bin")
        raw_write(warm, _ARRAY, args.fsync)
        os.remove(warm)
        for i in range(args.repeat):
            plain = os.path.join(base, f"plain-{i}.bin")
            settle()
            times["raw_write"].append(raw_write(plain, _ARRAY, args.fsync))
            settle()
            times["raw_read"].append(raw_read(plain))
            os.remove(plain)

            folder = os.path.join(base, f"exp-{i}")
            settle()
            times["save"].append(save(folder, args.size_mb, args.fsync))
            settle()
            elapsed, data = restore(folder)
            times["restore"].append(elapsed)
            if not np.array_equal(data[:: 2**16], _ARRAY[:: 2**16]) or data.nbytes != nbytes:
                raise SystemExit("restored array differs from the saved one")
            del data
            settle()
            elapsed, data = restore(folder, verify=False)
            times["restore_noverify"].append(elapsed)
            del data
            shutil.rmtree(folder)
            gc.collect()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(raw: str, store: str) -> float:
        return round(statistics.median(r / s for r, s in zip(times[raw], times[store], strict=True)), 3)

    mb = nbytes / 1e6
    result = {
        "benchmark": "store_throughput",
        "bytes": nbytes,
        "repeat": args.repeat,
        "fsync": args.fsync,
        **{f"{k}_s": round(v, 4) for k, v in med.items()},
        **{f"{k}_MBps": round(mb / v, 1) for k, v in med.items()},
        "write_ratio": paired("raw_write", "save"),
        "read_ratio": paired("raw_read", "restore"),
        "read_ratio_noverify": paired("raw_read", "restore_noverify"),
        "ratio_of_medians": {
            "write": round(med["raw_write"] / med["save"], 3),
            "read": round(med["raw_read"] / med["restore"], 3),
        },
        "runs": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "python": sys.version.split()[0],
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
