"""``Experiment.restore(slim=True)`` of a 10,000-state experiment, in a fresh process.

The experiment (a binary tree of trivial numpy states) is built once; each
repetition restores it in a new interpreter. The floor is a plain
sequential read of the index's bytes (what a restore must at least read).

    python benchmarks/restore.py [N]
"""

from __future__ import annotations

import os
import sys

from _common import emit, floor, in_fresh_process, median, repeat_env, scratch

TARGET_S = 0.1
REFERENCE_S = 0.31


def main(n: int = 10_000) -> dict:
    reps = repeat_env(5)
    out: dict = {"workload": "restore", "states": n, "repeats": reps, "target_s": TARGET_S}
    with scratch() as folder:
        built = in_fresh_process("run", folder, "tree", n)
        assert built["computed"] == n, built
        index_bytes = os.path.getsize(os.path.join(folder, "index.json"))
        times = []
        for _ in range(reps):
            res = in_fresh_process("restore", folder, "tree", n)
            assert res["states"] == n, res
            times.append(res["restore_s"])
    fl = floor(index_bytes)
    out["restore_s"] = median(times)
    out["index_bytes"] = index_bytes
    out.update(fl)
    out["ratio_to_index_read"] = out["restore_s"] / (fl["seq_read_ms"] / 1e3)
    out["meets_target"] = out["restore_s"] <= TARGET_S
    return out


if __name__ == "__main__":
    emit(main(*(int(a) for a in sys.argv[1:])))
