"""Bounded memory: peak resident memory while running states that hold a large model.

Two workloads, each run in a fresh subprocess whose own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) is reported:

- ``chain``: 20 states in a chain, each holding a ``--mb`` MB numpy model that
  its recipe updates in place, on ``"single-threaded"``. Target: peak < 3 x model.
- ``fanout``: 20 children of one root, each holding such a model, on
  ``"threads"`` with ``--threads`` workers. Target: peak < (threads + 2) x model.
- ``children``: the same 20 children of one root on ``"single-threaded"`` (the
  performance issue's "children of a 200 MiB state run"). Target: peak <= 1.5 x model.

A ``floor`` subprocess (imports, plus one model in memory) is measured in the
same run, so the figures can be read against it. Prints one JSON line.

    python benchmarks/memory.py [--mb 200] [--states 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import dagger as dg


class ModelState(dg.ExperimentState):
    PROPERTIES = ["mb"]
    NONHASHED_ATTRIBUTES = ["model"]

    def initialize_state(self, **kwargs):
        self.model = np.ones(self.mb * 1024 * 1024 // 8, dtype=np.float64)


class Step(dg.Recipe):
    """One training step: updates the model in place (every page is touched)."""

    PROPERTIES = ["step"]

    def run(self, state):
        state.model += float(self.step)
        return state


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(kind: str, mb: int, states: int, threads: int, folder: str) -> None:
    t0 = time.perf_counter()
    if kind == "floor":
        model = np.ones(mb * 1024 * 1024 // 8, dtype=np.float64)
        model += 1.0
        computed = 0
    else:
        exp = dg.Experiment(folder, state_class=ModelState)
        root = exp.spawn_new_tree(mb=mb)
        s = root
        for i in range(1, states + 1):
            if kind == "chain":
                s = Step(step=i)(s)
            else:
                Step(step=i)(root)
        if kind in ("chain", "children"):
            report = exp.run(scheduler="single-threaded", progress=False)
        else:
            report = exp.run(scheduler="threads", num_workers=threads, progress=False)
        computed = len(report.computed)
    print(json.dumps({"peak_mb": _peak_mb(), "seconds": time.perf_counter() - t0, "computed": computed}))


def measure(kind: str, args: argparse.Namespace) -> dict:
    folder = tempfile.mkdtemp(prefix=f"dagger-mem-{kind}-", dir=args.tmp)
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--mb", str(args.mb)]
        cmd += ["--states", str(args.states), "--threads", str(args.threads), "--folder", folder]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--states", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="where the experiment folders go (default: the system temp)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mb, args.states, args.threads, args.folder)
        return
    floor = measure("floor", args)
    chain = measure("chain", args)
    fanout = measure("fanout", args)
    children = measure("children", args)
    model = float(args.mb)
    print(
        json.dumps(
            {
                "benchmark": "memory",
                "model_mb": args.mb,
                "states": args.states,
                "threads": args.threads,
                "floor_peak_mb": round(floor["peak_mb"], 1),
                "chain_peak_mb": round(chain["peak_mb"], 1),
                "chain_peak_x_model": round(chain["peak_mb"] / model, 2),
                "chain_target_x_model": 3,
                "chain_seconds": round(chain["seconds"], 2),
                "fanout_peak_mb": round(fanout["peak_mb"], 1),
                "fanout_peak_x_model": round(fanout["peak_mb"] / model, 2),
                "fanout_target_x_model": args.threads + 2,
                "fanout_seconds": round(fanout["seconds"], 2),
                "children_peak_mb": round(children["peak_mb"], 1),
                "children_peak_x_model": round(children["peak_mb"] / model, 2),
                "children_target_x_model": 1.5,
                "children_seconds": round(children["seconds"], 2),
                "chain_over_floor": round(chain["peak_mb"] / floor["peak_mb"], 2),
                "fanout_over_floor": round(fanout["peak_mb"] / floor["peak_mb"], 2),
                "children_over_floor": round(children["peak_mb"] / floor["peak_mb"], 2),
                "computed": {"chain": chain["computed"], "fanout": fanout["computed"], "children": children["computed"]},
            }
        )
    )


if __name__ == "__main__":
    main()
