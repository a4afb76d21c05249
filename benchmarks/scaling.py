"""The scaling curve: per-state cost of a cold run and of a cached rerun at 100 to 20,000 states.

For each shape (chain, fan, binary tree) and size, a fresh process builds
the tree in an empty folder (cold), then another fresh process reruns it
(cached). Per-state cost should stay flat as the tree grows; ``flatness``
is the per-state cost at the largest size over that at 1,000. The floor is
one atomic small-file write, measured in the same run.

    python benchmarks/scaling.py [sizes...]
"""

from __future__ import annotations

import sys

from _common import emit, floor, in_fresh_process, median, repeat_env, scratch
from _workload import SHAPES

SIZES = (100, 1000, 10_000, 20_000)


def main(*sizes: int) -> dict:
    sizes = sizes or SIZES
    out: dict = {"workload": "scaling", "sizes": list(sizes)}
    for shape in SHAPES:
        for n in sizes:
            reps = repeat_env(3) if n <= 1000 else 1
            cold, cached = [], []
            for _ in range(reps):
                with scratch() as folder:
                    first = in_fresh_process("run", folder, shape, n)
                    assert first["computed"] == n, first
                    again = in_fresh_process("run", folder, shape, n)
                    assert again["cached"] == n, again
                cold.append(first["run_s"] / n * 1e3)
                cached.append(again["run_s"] / n * 1e3)
            out[f"{shape}_{n}_cold_ms_per_state"] = median(cold)
            out[f"{shape}_{n}_cached_ms_per_state"] = median(cached)
        big, ref = max(sizes), 1000 if 1000 in sizes else min(sizes)
        out[f"{shape}_cold_flatness"] = out[f"{shape}_{big}_cold_ms_per_state"] / out[f"{shape}_{ref}_cold_ms_per_state"]
    out.update(floor(4096))
    worst = max(out[f"{s}_{n}_cold_ms_per_state"] for s in SHAPES for n in sizes)
    out["worst_cold_ms_per_state"] = worst
    out["ratio_to_atomic_write"] = worst / out["atomic_write_ms"]
    return out


if __name__ == "__main__":
    emit(main(*(int(a) for a in sys.argv[1:])))
