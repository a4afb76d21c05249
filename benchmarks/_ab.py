"""Before/after comparison on a loaded machine: alternate two copies of dagger, run by run.

    python benchmarks/_ab.py BEFORE_SRC [reps]

BEFORE_SRC is a folder holding another ``dagger`` package (e.g. ``git archive HEAD src``
extracted somewhere); the other side is the installed one. Each repetition runs the
same measurement once with each copy, back to back, so both see the same load; the
JSON line gives the medians of both and their ratio (before / after).
"""

from __future__ import annotations

import sys

from _common import emit, in_fresh_process, median, scratch

CASES = [
    ("cold_fan_2000_ms_per_state", "run", "fan", 2000, "run_s", 1e3 / 2000),
    ("cold_chain_2000_ms_per_state", "run", "chain", 2000, "run_s", 1e3 / 2000),
    ("cold_fan_2000_cpu_ms_per_state", "run", "fan", 2000, "run_cpu_s", 1e3 / 2000),
    ("cached_tree_2000_ms_per_state", "cached", "tree", 2000, "run_s", 1e3 / 2000),
    ("define_chain_4000_s", "define", "chain", 4000, "define_s", 1.0),
    ("restore_10000_s", "restore", "tree", 10_000, "restore_s", 1.0),
    ("tag_query_5000_first_ms", "tags", "tree", 5000, "first_query_s", 1e3),
    ("tag_query_5000_and_or_ms", "tags", "tree", 5000, "and_or_s", 1e3),
]


def measure(side: str | None, mode: str, shape: str, n: int, prepared: dict) -> dict:
    if mode == "run":
        with scratch() as folder:
            return in_fresh_process("run", folder, shape, n, pythonpath=side)
    if mode == "cached":
        return in_fresh_process("run", prepared[(side, shape, n, 0)], shape, n, pythonpath=side)
    if mode == "define":
        with scratch() as folder:
            return in_fresh_process("define", folder, shape, n, pythonpath=side)
    if mode == "restore":
        return in_fresh_process("restore", prepared[(side, shape, n, 0)], shape, n, pythonpath=side)
    return in_fresh_process("tags", prepared[(side, shape, n, 50)], shape, n, pythonpath=side)


def main(before: str, reps: int = 5) -> dict:
    out: dict = {"workload": "before_after", "before": before, "repeats": reps}
    with scratch("dagger-ab-") as base:
        prepared = {}
        for side in (before, None):
            for shape, n, tags in (("tree", 2000, 0), ("tree", 10_000, 0), ("tree", 5000, 50)):
                folder = f"{base}/{'b' if side else 'a'}-{shape}-{n}-{tags}"
                in_fresh_process("run", folder, shape, n, pythonpath=side, tags=tags)
                prepared[(side, shape, n, tags)] = folder
        for name, mode, shape, n, key, scale in CASES:
            got: dict = {"before": [], "after": []}
            for _ in range(reps):
                got["before"].append(measure(before, mode, shape, n, prepared)[key] * scale)
                got["after"].append(measure(None, mode, shape, n, prepared)[key] * scale)
            b, a = median(got["before"]), median(got["after"])
            out[f"{name}_before"] = b
            out[f"{name}_after"] = a
            out[f"{name}_speedup"] = b / a if a else None
    return out


if __name__ == "__main__":
    emit(main(sys.argv[1], *(int(a) for a in sys.argv[2:])))
