"""Cold runs on a quiet and on a busy disk (issue 21): commit records in files against segments.

On this VM's disk, creating a file costs 3-25x more for seconds to minutes after a mass
deletion (see "The disk's slow minutes" on the benchmarks page), while appending to an open
file does not change. With one file per state, a cold run pays that on every state; with
its records in segments, a state creates no file of its own. Here, for each layout, a cold
run of ``N`` trivial states (8 children per node) in a fresh process:

- on a quiet disk (waited for, as run.py does), ``ROUNDS`` times;
- on a busy disk, ``ROUNDS`` times: each run right after writing 20,000 files of 8 KiB and
  three of 100 MiB, syncing and removing them; the create/append probe is taken just
  before and just after the run, to show that the disk was busy all along.

The two layouts alternate, so both meet the same disk. Plain Dask running the same
dependency graph of no-op tasks is the baseline (issue 21's target: a cold run within 2x
of it on either disk).

    python benchmarks/busy_disk.py [N] [ROUNDS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

from _common import create_and_append_s, emit, in_fresh_process, median, scratch, wait_for_quiet_disk

SHAPE = "tree8"


def _make_busy(base: str) -> float:
    """Write and remove many files and a few large ones (what a finished benchmark or test suite leaves)."""
    t0 = time.perf_counter()
    folder = tempfile.mkdtemp(prefix="busy-", dir=base)
    small = os.urandom(8192)
    for i in range(20_000):
        sub = os.path.join(folder, f"{i % 100:02d}")
        if i < 100:
            os.makedirs(sub)
        with open(os.path.join(sub, f"f{i}"), "wb") as f:
            f.write(small)
    big = os.urandom(1 << 20)
    for i in range(3):
        with open(os.path.join(folder, f"big{i}"), "wb") as f:
            for _ in range(100):
                f.write(big)
    subprocess.run(["sync"], check=False)
    shutil.rmtree(folder)
    return time.perf_counter() - t0


def _probe(base: str) -> float:
    create, append = create_and_append_s(base, count=100)
    return round(create * 1e6, 1), round(append * 1e6, 2)


def _cold(base: str, n: int, segments: bool) -> float:
    if segments:
        os.environ["DAGGER_SEGMENTS"] = "1"
    else:
        os.environ["DAGGER_SEGMENTS"] = "0"  # one file per state (layout 2)
    try:
        folder = tempfile.mkdtemp(prefix="cold-", dir=base)
        out = in_fresh_process("run", folder, SHAPE, n)
        assert out["computed"] == n, out
        return float(out["run_s"])
    finally:
        os.environ.pop("DAGGER_SEGMENTS", None)


def main(n: int = 20_000, rounds: int = 3) -> dict:
    t0 = time.perf_counter()
    out: dict = {"workload": "busy_disk", "states": n, "shape": SHAPE, "rounds": rounds}
    layouts = {"files": False, "segments": True}
    with scratch() as base:
        out["quiet_disk"] = wait_for_quiet_disk(base)
        dask = [in_fresh_process("dask", tempfile.mkdtemp(dir=base), SHAPE, n)["run_s"] for _ in range(rounds)]
        out["dask_run_s"] = median(dask)
        quiet: dict[str, list[float]] = {k: [] for k in layouts}
        busy: dict[str, list[float]] = {k: [] for k in layouts}
        probes: dict[str, list] = {k: [] for k in layouts}
        for r in range(rounds):
            order = list(layouts) if r % 2 == 0 else list(reversed(layouts))
            for name in order:
                wait_for_quiet_disk(base)
                quiet[name].append(_cold(base, n, layouts[name]))
        for r in range(rounds):
            order = list(layouts) if r % 2 == 0 else list(reversed(layouts))
            for name in order:
                _make_busy(base)
                before = _probe(base)
                busy[name].append(_cold(base, n, layouts[name]))
                probes[name].append({"create_us_before": before[0], "create_us_after": _probe(base)[0],
                                     "append_us": before[1]})
        for name in layouts:
            q, b = median(quiet[name]), median(busy[name])
            out[f"{name}_quiet_run_s"], out[f"{name}_busy_run_s"] = q, b
            out[f"{name}_quiet_runs"], out[f"{name}_busy_runs"] = [round(x, 3) for x in quiet[name]], [round(x, 3) for x in busy[name]]
            out[f"{name}_quiet_us_per_state"], out[f"{name}_busy_us_per_state"] = q / n * 1e6, b / n * 1e6
            out[f"{name}_quiet_over_dask"], out[f"{name}_busy_over_dask"] = q / out["dask_run_s"], b / out["dask_run_s"]
            out[f"{name}_busy_over_quiet"] = b / q
            out[f"{name}_busy_probes"] = probes[name]
    out["seconds"] = time.perf_counter() - t0
    return out


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    emit(main(*args))
