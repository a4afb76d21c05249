"""Fully cached rerun, per state: rerun an unchanged experiment script in a fresh process.

The tree (chain, fan and tree of N states) is built once; each repetition
is then a new interpreter that defines the same tree and calls
``exp.run()``, which must find every state in the store. The figure is
``exp.run()`` time divided by N (defining the tree again is reported apart,
as ``define_and_run``). ``add_one_state_ms`` times the run of the same
script with one new state added: one state computed and the index rewritten.
The floor is reading the experiment's index (the bytes a cached run must at
least read) sequentially, per state.

    python benchmarks/cached_rerun.py [N]
"""

from __future__ import annotations

import os
import sys

from _common import emit, floor, in_fresh_process, median, repeat_env, scratch
from _workload import SHAPES

TARGET_MS = 0.03
REFERENCE_MS = "0.18-0.39"


def main(n: int = 2000) -> dict:
    reps = repeat_env(5)
    out: dict = {"workload": "cached_rerun", "states": n, "repeats": reps, "target_ms_per_state": TARGET_MS}
    worst = 0.0
    index_bytes = 0
    for shape in SHAPES:
        with scratch() as folder:
            first = in_fresh_process("run", folder, shape, n)
            assert first["computed"] == n, first
            index_bytes = max(index_bytes, os.path.getsize(os.path.join(folder, "index.json")))
            runs, totals = [], []
            for _ in range(reps):
                res = in_fresh_process("run", folder, shape, n)
                assert res["computed"] == 0 and res["cached"] == n, res
                runs.append(res["run_s"] / n * 1e3)
                totals.append(res["total_s"] / n * 1e3)
            # Growing the tree: the same script plus one new state, so one state is computed and
            # the index rewritten (the stored states' metadata copied into it as text).
            grow = []
            for rep in range(reps):
                res = in_fresh_process("run", folder, shape, n, add=1, add_seed=rep)
                assert res["computed"] == 1, res
                grow.append(res["run_s"] * 1e3)
        out[f"{shape}_ms_per_state"] = median(runs)
        out[f"{shape}_define_and_run_ms_per_state"] = median(totals)
        out[f"{shape}_add_one_state_ms"] = median(grow)
        worst = max(worst, median(runs))
    fl = floor(index_bytes)
    out.update(fl)
    out["worst_ms_per_state"] = worst
    out["ratio_to_index_read"] = worst / (fl["seq_read_ms"] / n)
    out["ratio_to_atomic_write"] = worst / fl["atomic_write_ms"]
    out["meets_target"] = worst <= TARGET_MS
    return out


if __name__ == "__main__":
    emit(main(*(int(a) for a in sys.argv[1:])))
