"""The experiment of ``tests/data/store_v2``: a store written by dagger before segments (``meta/`` files).

``tests/data/store_v2`` was made by running this file with the code of main at
the time segments were wired in (commit 4982c61), as::

    PYTHONPATH=/work/main/src python tests/migratedefs.py tests/data/store_v2 make

It holds every kind of record that layout has: first records carrying small
pickles, a root whose weights are a blob, a state whose pickle is its own file
(too large to carry), a re-tagged state (a newer revision; its pickle moved
out of the first record) and Function results. The migration tests open it with
today's code, extend it, migrate it and check every state against
:func:`expected`.
"""

from __future__ import annotations

import sys

import numpy as np

import dagger as dg


class MigState(dg.ExperimentState):
    PROPERTIES = ["seed"]

    def initialize_state(self, **kwargs):
        self.weights = np.arange(4096, dtype=np.float64) * self.seed  # 32 KiB: a blob above the threshold
        self.steps = []


class Step(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.steps = [*state.steps, self.k]
        if self.k == 99:
            state.notes = "x" * 40_000  # too large to be carried: a pickle file of its own
        return state


@dg.Function
def score(state):
    return {"steps": len(state.steps), "total": float(state.weights.sum()) + sum(state.steps)}


def define(directory, late_tag: bool = False, extra: bool = False):
    """The experiment; ``late_tag`` adds a tag to one state (a new revision); ``extra`` grows the tree."""
    exp = dg.Experiment(directory, state_class=MigState, blob_threshold=8 * 1024)
    root = exp.spawn_new_tree(seed=2)
    kids = []
    for k in (1, 2, 3):
        with exp.tag(f"k:{k}"):
            kid = Step(k=k)(root)
            score(kid)
            kids.append(kid)
    big = Step(k=99)(kids[0])
    if late_tag:
        with exp.tag("late"):
            Step(k=10)(kids[1])
    else:
        Step(k=10)(kids[1])
    if extra:
        for k in (20, 21):
            Step(k=k)(big)
    return exp, root, kids, big


def summary(directory) -> dict[str, dict]:
    """``{sha: {"tags", "results", "steps", "total"}}`` of every stored state: metadata read slim,
    then each state restored in full (its pickle and blobs)."""
    exp = dg.Experiment.restore(directory)
    out = {}
    for node in exp.graph.nodes:
        meta = node._meta()
        state = node.restore()
        out[node.sha()] = {
            "tags": sorted(meta.get("tags") or []),
            "results": meta.get("results") or {},
            "steps": list(state.steps),
            "total": float(state.weights.sum()),
        }
    return out


if __name__ == "__main__":
    import json

    where, mode = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "make"
    if mode == "make":  # (how tests/data/store_v2 was made, with main's code of the time)
        exp, *_ = define(where)
        exp.run(progress=False)
        exp, *_ = define(where, late_tag=True)
        exp.run(progress=False)
    elif mode == "extend":  # today's code: two more states, and every Function run again
        exp, *_ = define(where, late_tag=True, extra=True)
        report = exp.run(progress=False)
        print(json.dumps({"computed": sorted(s.sha for s in report.computed)}))
    elif mode == "summary":
        print(json.dumps(summary(where), sort_keys=True))
