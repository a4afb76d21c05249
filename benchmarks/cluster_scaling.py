"""Dagger on a ``distributed.LocalCluster`` against plain Dask submitting the same functions to it.

    python benchmarks/cluster_scaling.py [--workers 1,2] [--per-worker 4] [--seconds 0.25] [--repeat 5]

For each worker count in ``--workers`` a LocalCluster with that many
single-threaded worker processes is started (not timed). On it, alternating
which goes first, each repetition times:

- ``dagger``: ``exp.run(client)`` of a fan-out: a root and ``per-worker x workers``
  CPU-bound recipes applied to it (pure-Python work of about ``--seconds`` each),
  in a new experiment folder, so every state is computed and stored;
- ``dask``: the same functions submitted with ``client.submit``: one task builds the
  root, each child task receives it, does the same work and returns the child.

Before the timed runs each cluster runs one dagger fan-out and one plain one
(``first_dagger_s``, ``first_dask_s``): a fresh worker imports dagger and the
store on its first state, which the plain side does not need; reported apart,
not mixed into the medians.

Prints one JSON line: per worker count, the medians and ``ratio`` = median over
repetitions of ``dagger / dask`` of the same repetition; ``worst_ratio`` the largest.
Target: <= 1.1. On a big machine: ``--workers 1,2,4,8,16``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _common import bench_folder, emit, repeat_env  # noqa: E402

import dagger as dg  # noqa: E402


class FanState(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.total = 0


def spin(loops: int) -> int:
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc


class Spin(dg.Recipe):
    """Pure-Python arithmetic: holds the GIL the whole time."""

    PROPERTIES = ["branch", "loops"]

    def run(self, state):
        state.total = spin(self.loops) + self.branch
        return state


class PlainState:
    """What the plain-Dask side passes around: the same attribute, no dagger."""

    def __init__(self) -> None:
        self.total = 0


def plain_root() -> PlainState:
    return PlainState()


def plain_child(parent: PlainState, branch: int, loops: int) -> PlainState:
    child = PlainState()
    child.total = spin(loops) + branch + parent.total
    return child


def calibrate(seconds: float) -> int:
    loops = 50_000
    while True:
        t0 = time.perf_counter()
        spin(loops)
        if time.perf_counter() - t0 > 0.05:
            break
        loops *= 2
    best = min(_time(lambda: spin(loops)) for _ in range(3))
    return max(1, int(loops * seconds / best))


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def dagger_run(client, base: str, label: str, n: int, loops: int) -> float:
    folder = tempfile.mkdtemp(prefix=f"fan-{label}-", dir=base)
    exp = dg.Experiment(folder, state_class=FanState)
    root = exp.spawn_new_tree(name=label)
    for b in range(n):
        Spin(branch=b, loops=loops)(root)
    t0 = time.perf_counter()
    report = exp.run(scheduler=client, progress=False)
    took = time.perf_counter() - t0
    if len(report.computed) != n + 1:
        raise SystemExit(f"dagger computed {len(report.computed)} states, expected {n + 1}: {report}")
    return took


def dask_run(client, n: int, loops: int) -> float:
    t0 = time.perf_counter()
    root = client.submit(plain_root, pure=False)
    kids = [client.submit(plain_child, root, b, loops, pure=False) for b in range(n)]
    results = client.gather(kids)
    took = time.perf_counter() - t0
    if len(results) != n:
        raise SystemExit("plain Dask lost a task")
    return took


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts, e.g. 1,2,4,8,16")
    parser.add_argument("--per-worker", type=int, default=4, help="recipes per worker")
    parser.add_argument("--seconds", type=float, default=0.25, help="work per recipe")
    parser.add_argument("--repeat", type=int, default=repeat_env(5))
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    import cluster_scaling as bench  # by reference on the workers (they get this folder on sys.path)
    from distributed import Client, LocalCluster

    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    loops = calibrate(args.seconds)
    base = tempfile.mkdtemp(prefix="dagger-cluster-", dir=bench_folder(args.dir))
    result: dict = {"workload": "cluster_scaling", "workers": counts, "per_worker": args.per_worker,
                    "recipe_seconds": args.seconds, "repeat": args.repeat, "cpus": os.cpu_count()}
    ratios = []
    try:
        for w in counts:
            n = w * args.per_worker
            with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
                with Client(cluster) as client:
                    client.run(sys.path.insert, 0, HERE)
                    result[f"w{w}_first_dask_s"] = bench.dask_run(client, n, loops)
                    result[f"w{w}_first_dagger_s"] = bench.dagger_run(client, base, f"w{w}-first", n, loops)
                    times: dict[str, list[float]] = {"dagger": [], "dask": []}
                    for rep in range(args.repeat):
                        steps = [("dagger", partial(bench.dagger_run, client, base, f"w{w}-{rep}", n, loops)),
                                 ("dask", partial(bench.dask_run, client, n, loops))]
                        if rep % 2:
                            steps.reverse()
                        for name, fn in steps:
                            times[name].append(fn())
            ratio = statistics.median(a / b for a, b in zip(times["dagger"], times["dask"], strict=True))
            ratios.append(ratio)
            result[f"w{w}_recipes"] = n
            result[f"w{w}_dagger_s"] = statistics.median(times["dagger"])
            result[f"w{w}_dask_s"] = statistics.median(times["dask"])
            result[f"w{w}_ratio"] = ratio
            result[f"w{w}_runs"] = {k: [round(x, 4) for x in v] for k, v in times.items()}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result["worst_ratio"] = max(ratios)
    result["target_ratio"] = 1.1
    result["meets_target"] = result["worst_ratio"] <= 1.1
    result["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    emit(result)
    return result


if __name__ == "__main__":
    main()
