"""Parallel speed: a fan-out of 8 CPU-bound recipes on three schedulers.

Each recipe does about one second of pure-Python work that holds the GIL, so
only process-based schedulers can overlap them. The same fan-out runs on
``"single-threaded"`` (the floor), on ``"processes"`` and on a 2-worker
``distributed.LocalCluster`` (cluster start-up is not timed). Each is run
``--repeats`` times in a fresh experiment folder; the script prints one JSON
line with the medians and the speed-ups against the single-threaded floor.

    python benchmarks/parallel_speed.py [--repeats 5] [--fanout 8] [--seconds 1.0]

Target (issue 4): speed-up >= 1.7 on a 2-core machine for both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import dagger as dg


class SpinState(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.total = 0


class SpinRecipe(dg.Recipe):
    """Pure-Python arithmetic for ``loops`` iterations: holds the GIL the whole time."""

    PROPERTIES = ["branch", "loops"]

    def run(self, state):
        acc = 0
        for i in range(self.loops):
            acc = (acc + i * i) % 1_000_003
        state.total = acc + self.branch
        return state


def _spin(loops: int) -> None:
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003


def raw_pool(fanout: int, loops: int) -> float:
    """The same work on a plain 2-process pool, without dagger: the ceiling for ``"processes"``."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_spin, [1, 1]))  # workers started, outside the timing
        t0 = time.perf_counter()
        list(pool.map(_spin, [loops] * fanout))
        return time.perf_counter() - t0


def raw_cluster(client, fanout: int, loops: int) -> float:
    """The same work as plain ``client.map`` tasks, without dagger: the ceiling for the cluster."""
    t0 = time.perf_counter()
    client.gather(client.map(_spin, [loops] * fanout, pure=False))
    return time.perf_counter() - t0


def calibrate(seconds: float) -> int:
    """How many loop iterations take about ``seconds`` here (best of 3, so other load inflates less)."""
    loops = 100_000
    while True:
        t0 = time.perf_counter()
        _spin(loops)
        if time.perf_counter() - t0 > 0.1:
            break
        loops *= 2
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        _spin(loops)
        best = min(best, time.perf_counter() - t0)
    return max(1, int(loops * seconds / best))


def run_once(scheduler, fanout: int, loops: int, seconds_label: str) -> float:
    folder = tempfile.mkdtemp(prefix="dagger-speed-")
    try:
        exp = dg.Experiment(folder, state_class=SpinState)
        root = exp.spawn_new_tree(name=seconds_label)
        for b in range(fanout):
            SpinRecipe(branch=b, loops=loops)(root)
        t0 = time.perf_counter()
        report = exp.run(scheduler=scheduler, progress=False)
        took = time.perf_counter() - t0
        assert len(report.computed) == fanout + 1, report
        return took
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fanout", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args()

    # Import this file as a module so that cluster workers can unpickle its classes by reference.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import parallel_speed as bench
    from distributed import Client, LocalCluster

    load_before = os.getloadavg()[0]
    loops = calibrate(args.seconds)  # before the cluster starts, so its start-up does not skew it
    times: dict[str, list[float]] = {
        "single-threaded": [],
        "processes": [],
        "local_cluster": [],
        "raw_process_pool": [],
        "raw_dask_cluster": [],
    }
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            client.run(sys.path.insert, 0, os.path.dirname(os.path.abspath(__file__)))
            # interleaved, so that any outside load weighs on the three schedulers alike
            for r in range(args.repeats):
                times["single-threaded"].append(bench.run_once("single-threaded", args.fanout, loops, f"st{r}"))
                times["processes"].append(bench.run_once("processes", args.fanout, loops, f"pr{r}"))
                times["local_cluster"].append(bench.run_once(client, args.fanout, loops, f"lc{r}"))
                times["raw_process_pool"].append(bench.raw_pool(args.fanout, loops))
                times["raw_dask_cluster"].append(bench.raw_cluster(client, args.fanout, loops))
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med["single-threaded"]
    print(
        json.dumps(
            {
                "benchmark": "parallel_speed",
                "cpus": os.cpu_count(),
                "fanout": args.fanout,
                "recipe_seconds": args.seconds,
                "repeats": args.repeats,
                "median_s": {k: round(v, 3) for k, v in med.items()},
                "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
                "speedup_processes": round(floor / med["processes"], 3),
                "speedup_local_cluster": round(floor / med["local_cluster"], 3),
                # the same work without dagger, on the same pool / cluster: what the hardware and
                # Dask allow here, and dagger's cost on top of it (1.0 = none)
                "speedup_raw_process_pool": round(floor / med["raw_process_pool"], 3),
                "speedup_raw_dask_cluster": round(floor / med["raw_dask_cluster"], 3),
                "processes_over_raw_pool": round(med["processes"] / med["raw_process_pool"], 3),
                "local_cluster_over_raw_dask": round(med["local_cluster"] / med["raw_dask_cluster"], 3),
                "target_speedup": 1.7,
                "loadavg_1min_before": round(load_before, 2),
                "loadavg_1min_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
