"""The benchmark workload: a trivial numpy recipe on chains, fans and trees.

Imported by the worker processes, so the state class has one stable import
path (``_workload.State``) in every process.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import dagger as dg

SHAPES = ("chain", "fan", "tree")


class State(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, **kwargs: Any) -> None:
        self.weights = np.zeros(16)


class Bump(dg.Recipe):
    """The trivial recipe: add a number to a 16-float vector."""

    PROPERTIES = ["step"]

    def run(self, state: State) -> State:
        state.weights = state.weights + self.step
        return state


def parent_index(shape: str, i: int) -> int:
    """Which state (by index; 0 is the root) is the parent of state ``i`` >= 1 in ``shape``."""
    if shape == "chain":
        return i - 1
    if shape == "fan":
        return 0
    if shape == "tree":
        return (i - 1) // 2
    if shape == "tree8":  # 8 children per node (benchmarks/million.py; not one of SHAPES)
        return (i - 1) // 8
    raise ValueError(shape)


def define(exp: dg.Experiment, shape: str, n: int, tags: int = 0) -> list[Any]:
    """Define ``n`` states (root included) shaped as a chain, a fan or a binary tree.

    With ``tags`` > 0, state ``i`` is tagged ``group:{i % tags}`` (and ``even``
    when ``i`` is even), for the tag-query workload.
    """
    root = exp.spawn_new_tree(name=f"bench-{shape}")
    out = [root]

    def tagged(i: int) -> list[str]:
        if not tags:
            return []
        return [f"group:{i % tags}"] + (["even"] if i % 2 == 0 else [])

    for i in range(1, n):
        parent = out[parent_index(shape, i)]
        names = tagged(i)
        if names:
            with exp.tag(*names):
                out.append(Bump(step=i)(parent))
        else:
            out.append(Bump(step=i)(parent))
    return out
