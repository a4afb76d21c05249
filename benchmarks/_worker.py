"""One measurement in a fresh process; prints one JSON object on its last line.

    python benchmarks/_worker.py MODE DIRECTORY SHAPE N [extra json]

MODE is ``run`` (define then run: a cold build or a cached rerun, depending on
what the folder holds), ``dask`` (plain Dask, a no-op task per state: the
floor of a cold run), ``define`` (define only; with memory), ``restore``
(``Experiment.restore(slim=True)``) or ``tags`` (tag queries on a restored
tree). Times are taken inside the process, around the work itself,
so interpreter start-up and imports are not counted (they are reported apart).
"""

from __future__ import annotations

import json
import os
import sys
import time

T0 = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _workload import Bump, State, define, parent_index  # noqa: E402

import dagger as dg  # noqa: E402
from dagger.execution import resolve_scheduler  # noqa: E402

IMPORT_S = time.perf_counter() - T0


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def mode_run(directory: str, shape: str, n: int, opts: dict) -> dict:
    # A process's first run that has work imports Dask's scheduler, the progress display, the
    # pickle checksum's hash library and numpy.random (seeding): one-off costs per process,
    # reported apart like the other imports, not spread over the states.
    t = time.perf_counter()
    resolve_scheduler("single-threaded")
    import numpy.random  # noqa: F401

    import dagger.progress  # noqa: F401
    from dagger.store import digest

    digest.hexdigest(digest.DEFAULT, b"")
    first_run_imports_s = time.perf_counter() - t
    exp = dg.Experiment(directory, state_class=State, **opts.get("experiment", {}))
    t0 = time.perf_counter()
    promises = define(exp, shape, n, tags=opts.get("tags", 0))
    for k in range(opts.get("add", 0)):  # new states below the last one: the tree grows by these
        Bump(step=10**9 + 1000 * opts.get("add_seed", 0) + k)(promises[-1])
    t1 = time.perf_counter()
    c1 = time.process_time()
    report = exp.run(progress=False)
    c2 = time.process_time()
    t2 = time.perf_counter()
    counts = {"computed": len(report.computed), "cached": len(report.cached)}
    return {
        "define_s": t1 - t0,
        "run_s": t2 - t1,
        "run_cpu_s": c2 - c1,
        "total_s": t2 - t0,
        "first_run_imports_s": first_run_imports_s,
        **counts,
    }


def mode_define(directory: str, shape: str, n: int, opts: dict) -> dict:
    import gc

    exp = dg.Experiment(directory, state_class=State)
    if opts.get("tracemalloc"):
        import tracemalloc

        tracemalloc.start()
        define(exp, shape, n)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return {"traced_peak_bytes": peak}
    gc.collect()
    rss0 = _rss()
    t0 = time.perf_counter()
    promises = define(exp, shape, n)
    t1 = time.perf_counter()
    rss1 = _rss()
    assert len(promises) == n
    return {"define_s": t1 - t0, "rss_delta_bytes": rss1 - rss0}


def mode_restore(directory: str, shape: str, n: int, opts: dict) -> dict:
    t0 = time.perf_counter()
    exp = dg.Experiment.restore(directory, state_class=State, slim=True)
    t1 = time.perf_counter()
    states = len(exp.graph)
    return {"restore_s": t1 - t0, "states": states}


def mode_tags(directory: str, shape: str, n: int, opts: dict) -> dict:
    exp = dg.Experiment.restore(directory, state_class=State, slim=True)
    nodes = exp.graph.nodes
    t0 = time.perf_counter()
    nodes.filter("group:7")  # the first query also indexes the set's tags
    first = time.perf_counter() - t0
    queries = {
        "one_tag": lambda: nodes.filter("group:7"),
        "pattern": lambda: nodes.filter("group:1*"),
        "negation": lambda: nodes.filter("!even"),
        "and_or": lambda: (nodes.filter("group:3") & nodes.filter("even")) | nodes.filter("group:4"),
    }
    out: dict = {"states": len(nodes), "first_query_s": first}
    for name, query in queries.items():
        times = []
        for _ in range(opts.get("repeat", 15)):
            t0 = time.perf_counter()
            hits = query()
            times.append(time.perf_counter() - t0)
        times.sort()
        out[f"{name}_s"] = times[len(times) // 2]
        out[f"{name}_hits"] = len(hits)
    return out


def _noop(*parents: dict) -> dict:
    return {"status": "computed"}


def mode_dask(directory: str, shape: str, n: int, opts: dict) -> dict:
    """Plain Dask, the floor of a cold run: one no-op task per state, on a graph of the same shape."""
    from dask._task_spec import Task, TaskRef

    get, _ = resolve_scheduler("single-threaded")
    t0 = time.perf_counter()
    graph = {}
    for i in range(n):
        parent = None if i == 0 else parent_index(shape, i)
        key = f"s{i}"
        graph[key] = Task(key, _noop, TaskRef(f"s{parent}")) if parent is not None else Task(key, _noop)
    results = get(graph, list(graph))
    assert len(results) == n
    return {"run_s": time.perf_counter() - t0}


MODES = {"dask": mode_dask, "run": mode_run, "define": mode_define, "restore": mode_restore, "tags": mode_tags}


if __name__ == "__main__":
    mode, directory, shape, count = sys.argv[1:5]
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    result = MODES[mode](directory, shape, int(count), options)
    result["import_s"] = IMPORT_S
    print(json.dumps(result))
