"""Tag queries over a restored 5,000-state experiment.

States carry ``group:<i % 50>`` and, for even ``i``, ``even``. Four queries
are timed (one tag, an fnmatch pattern, a negation, and ``&``/``|`` of
three filters), each the median of repeated runs in one fresh process, and the
first query after the restore (which also indexes the tags); the figure
is the slowest of these. The floor is a plain read of the index bytes.

    python benchmarks/tag_query.py [N]
"""

from __future__ import annotations

import os
import sys

from _common import emit, floor, in_fresh_process, median, repeat_env, scratch

TARGET_MS = 5.0
REFERENCE_MS = 18.0
QUERIES = ("one_tag", "pattern", "negation", "and_or")


def main(n: int = 5000) -> dict:
    reps = repeat_env(3)
    out: dict = {"workload": "tag_query", "states": n, "repeats": reps, "target_ms": TARGET_MS}
    with scratch() as folder:
        built = in_fresh_process("run", folder, "tree", n, tags=50)
        assert built["computed"] == n, built
        index_bytes = os.path.getsize(os.path.join(folder, "index.json"))
        results = [in_fresh_process("tags", folder, "tree", n) for _ in range(reps)]
    for q in QUERIES:
        out[f"{q}_ms"] = median([r[f"{q}_s"] * 1e3 for r in results])
        out[f"{q}_hits"] = results[0][f"{q}_hits"]
    out["first_query_ms"] = median([r["first_query_s"] * 1e3 for r in results])
    out["worst_ms"] = max([out["first_query_ms"]] + [out[f"{q}_ms"] for q in QUERIES])
    fl = floor(index_bytes)
    out.update(fl)
    out["ratio_to_index_read"] = out["worst_ms"] / fl["seq_read_ms"]
    out["meets_target"] = out["worst_ms"] <= TARGET_MS
    return out


if __name__ == "__main__":
    emit(main(*(int(a) for a in sys.argv[1:])))
