"""Cold run, counted in CPU instructions instead of seconds (needs valgrind).

On a shared machine the same cold run's wall time moves by 30-40% from one
minute to the next; the number of instructions it executes does not. This
script runs the cold-run worker under ``valgrind --tool=callgrind`` for 200
and for 2,000 states of each shape and reports the difference per state
(``(I(2000) - I(200)) / 1800``): one-off costs (interpreter start-up,
imports, the first run's setup) cancel out. Only user-space instructions are
counted: the kernel's share of file creation is not in these figures.

The floor is plain Dask: its synchronous scheduler running one no-op task per
state on a graph of the same shape, counted the same way.

    python benchmarks/instructions.py          # about 5 minutes
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from _common import WORKER, emit, scratch
from _workload import SHAPES

SMALL, LARGE = 200, 2000
_COLLECTED = re.compile(r"Collected : (\d+)")


def instructions(mode: str, shape: str, n: int) -> int:
    """User-space instructions executed by one fresh worker process (``mode``: run or dask)."""
    with scratch() as folder:
        args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, WORKER]
        args += [mode, folder, shape, str(n), "{}"]
        env = dict(os.environ, DAGGER_PROGRESS="0", PYTHONHASHSEED="0")
        proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind {mode} {shape} {n} failed:\n{proc.stderr[-3000:]}")
    return int(found.group(1))


def per_state(mode: str, shape: str) -> float:
    return (instructions(mode, shape, LARGE) - instructions(mode, shape, SMALL)) / (LARGE - SMALL)


def main() -> dict:
    out: dict = {"workload": "instructions", "states": [SMALL, LARGE]}
    if shutil.which("valgrind") is None:
        out["skipped"] = "valgrind is not installed (apt-get install valgrind)"
        return out
    for shape in SHAPES:
        dagger = per_state("run", shape)
        dask = per_state("dask", shape)
        out[f"{shape}_instructions_per_state"] = round(dagger)
        out[f"{shape}_dask_instructions_per_task"] = round(dask)
        out[f"{shape}_ratio_to_dask"] = round(dagger / dask, 2)
    out["worst_instructions_per_state"] = max(out[f"{s}_instructions_per_state"] for s in SHAPES)
    return out


if __name__ == "__main__":
    emit(main())
