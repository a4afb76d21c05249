"""Experiment definitions for the store tests, importable by worker processes and subprocesses.

States hold a shared dataset (``data``, a large numpy array that no recipe
changes) and a per-state ``model`` array, so every child writes one new blob
and shares the dataset's. Recipes log each call (``<run id> <recipe> <state
sha>``) to the file in ``$DAGGER_TEST_CALLS`` (appends are atomic), and sleep
``$DAGGER_TEST_SLEEP`` seconds so that a kill can land mid-run.

Run as a script: ``python storedefs.py DIR [data_mb model_mb width depth]``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

import dagger as dg


def log_call(name: str, sha: str) -> None:
    path = os.environ.get("DAGGER_TEST_CALLS")
    if path:
        line = f"{os.environ.get('DAGGER_TEST_RUN', '-')} {name} {sha}\n".encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def _nap() -> None:
    delay = float(os.environ.get("DAGGER_TEST_SLEEP", "0") or 0)
    if delay:
        time.sleep(delay)


def read_calls(path: str) -> list[tuple[str, str, str]]:
    """The logged calls as ``(run id, recipe, sha)``."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [tuple(line.split()) for line in f if line.strip()]  # type: ignore[misc]


class BigState(dg.ExperimentState):
    PROPERTIES = ["data_mb", "model_mb"]
    NONHASHED_ATTRIBUTES = ["data", "model"]

    def initialize_state(self, **kwargs):
        log_call("init", self.sha())
        _nap()
        rng = np.random.default_rng(0)
        self.data = rng.random(int(self.data_mb * 2**20) // 8)
        self.model = np.zeros(int(self.model_mb * 2**20) // 8)


class Perturb(dg.Recipe):
    """Writes a distinct model; leaves the dataset untouched."""

    PROPERTIES = ["step"]

    def run(self, state):
        log_call("perturb", state.sha())
        _nap()
        state.model = state.model + self.step + state.data[: len(state.model)].sum() * 0
        return state


class Keep(dg.Recipe):
    """Changes nothing at all: its state's blobs are all its parent's."""

    PROPERTIES = ["label"]

    def run(self, state):
        log_call("keep", state.sha())
        return state


@dg.Function
def model_sum(state):
    return float(state.model.sum())


def build(directory, data_mb=4.0, model_mb=1.0, width=3, depth=2, **options):
    """A tree: the root, ``width`` Perturb children, each with a chain of ``depth - 1`` more."""
    exp = dg.Experiment(directory, state_class=BigState, **options)
    root = exp.spawn_new_tree(data_mb=data_mb, model_mb=model_mb)
    leaves = []
    for i in range(width):
        s = root
        with exp.tag(f"branch:{i}"):
            for d in range(depth):
                s = Perturb(step=float(i * 10 + d + 1))(s)
        model_sum(s)
        leaves.append(s)
    return exp, root, leaves


def run_child(directory: str, run_id: str, calls: str, sleep: float, shape: dict) -> None:
    """Entry point of a child process that runs the whole tree (for kill tests)."""
    os.environ.update(DAGGER_TEST_CALLS=calls, DAGGER_TEST_RUN=run_id, DAGGER_TEST_SLEEP=str(sleep))
    exp, _, _ = build(directory, **shape)
    exp.run(progress=False)


def run_child_in(layout: str, *args) -> None:
    """:func:`run_child` with commit records in ``layout`` ("files" or "segments"): a forkserver's
    children inherit the server's environment, not the test's."""
    if layout == "segments":
        os.environ["DAGGER_SEGMENTS"] = "1"
    else:
        os.environ["DAGGER_SEGMENTS"] = "0"
    run_child(*args)


def expected_states(data_mb=4.0, model_mb=1.0, width=3, depth=2) -> int:
    return 1 + width * depth


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[2:]]
    names = ["data_mb", "model_mb", "width", "depth"]
    kw = {n: (int(v) if n in ("width", "depth") else v) for n, v in zip(names, args, strict=False)}
    exp, _, _ = build(sys.argv[1], **kw)
    exp.run()
