"""One experiment run for the gc stress scenario: ``python gc_stress_run.py DIR SCHEDULER N``.

A root and ``N - 1`` children, each state holding a 1.6 MB numpy array (one blob each),
run with ``threads``, ``processes`` or ``cluster`` (a 2-worker dask.distributed
LocalCluster of worker processes), while another process loops ``gc``. With
``$DAGGER_GC_STRESS_PLANT`` set, the blobs of every third state are left on the store,
uncommitted, just before the run (see :func:`plant`). ``python gc_stress_run.py DIR check N``
restores every state and prints the damaged ones.
Classes live in ``__main__``, as a user's script would define them.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

import dagger as dg

SIZE = 200_000  # float64: 1.6 MB per state


class Model(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["model"]

    def initialize_state(self, **kwargs):
        self.model = np.arange(SIZE, dtype=np.float64)


class Shift(dg.Recipe):
    PROPERTIES = ["by"]

    def run(self, state):
        state.model = state.model + self.by
        return state


def options() -> dict:
    """fsspec storage options for a remote store (``$DAGGER_STORAGE_OPTIONS``, JSON), else none."""
    raw = os.environ.get("DAGGER_STORAGE_OPTIONS")
    return {"storage_options": json.loads(raw)} if raw else {}


def define(directory: str, n: int, name: str = "gc-stress") -> dg.Experiment:
    exp = dg.Experiment(directory, state_class=Model, **options())
    root = exp.spawn_new_tree(name=name)
    for k in range(1, n):
        Shift(by=k)(root)
    return exp


def plant(directory: str, n: int) -> None:
    """Leave garbage for gc that the run will want: the blobs of every third state, written but never committed.

    The run then finds each of those blobs already there (same bytes, same name) and reuses it,
    while gc, looping in another process, sees it unreferenced and wants it gone: the race
    between a reused blob and its deletion.
    """
    import hashlib

    from dagger.store import open_store
    from dagger.store.records import Records

    records = Records(open_store(directory, **options().get("storage_options", {})))
    for k in range(0, n, 3):
        sha = hashlib.sha256(f"garbage {k}".encode()).hexdigest()
        records.save_pickle(sha, {"model": np.arange(SIZE, dtype=np.float64) + k})
        if hasattr(records, "release"):  # (a dagger without writer leases has none to drop)
            records.release(sha)


def check(directory: str) -> None:
    """Restore every stored state and compare it with what its recipe implies; print the damaged ones."""
    graph = dg.Experiment.restore(directory, **options()).graph
    bad = []
    for node in graph.nodes:
        try:
            node.restore()
            by = node.parent and node.recipe["properties"]["by"]
            if not np.array_equal(node.model, np.arange(SIZE, dtype=np.float64) + (by or 0)):
                bad.append(node.sha())
        except Exception as exc:  # noqa: BLE001 - every failure is a finding
            print("DAMAGED", node.sha(), type(exc).__name__, exc, flush=True)
            bad.append(node.sha())
    print("CHECKED", len(graph.nodes), " ".join(bad), flush=True)


if __name__ == "__main__":
    directory, scheduler, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if scheduler == "check":
        check(directory)
        sys.exit(0)
    exp = define(directory, n, *sys.argv[4:5])  # (a 4th argument names another root: a new tree)
    if os.environ.get("DAGGER_GC_STRESS_PLANT"):
        plant(directory, n)
    if scheduler == "cluster":
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                exp.run(scheduler=client)
    else:
        exp.run(scheduler=scheduler, num_workers=4)
    print("RUN-DONE", flush=True)
