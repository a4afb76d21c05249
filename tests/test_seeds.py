"""Deterministic seeds: the same draws on every rerun and every scheduler, per-branch seeds, opt-outs."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest
import torch

import dagger as dg


class SeedState(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.init_draw = random.random()


def draw_all(state):
    """Draw from every source; the pauses let concurrent threads interleave."""
    state.py = random.random()
    time.sleep(0.005)
    state.np = np.random.random(3)
    time.sleep(0.005)
    state.torch = torch.rand(3)
    state.gen = state.rng().random(3)
    state.seed_seen = state.dagger_seed
    return state


class Draw(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        return draw_all(state)


class UnseededDraw(dg.Recipe):
    PROPERTIES = ["k"]
    SEED_GLOBAL_RNGS = False

    def run(self, state):
        return draw_all(state)


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def expected(seed):
    """What the sources give right after seeding them with ``seed`` (as dagger does), as lists."""
    seed_all(seed)
    return random.random(), np.random.random(3).tolist(), torch.rand(3).tolist()


def draws(state):
    return state.py, state.np.tolist(), state.torch.tolist(), state.gen.tolist()


def build(directory, **options):
    exp = dg.Experiment(directory, state_class=SeedState, **options)
    root = exp.spawn_new_tree(name="seeds")
    leaves = [Draw(k=k)(root) for k in range(5)]
    leaves.append(Draw(k=9)(leaves[0]))
    return exp, leaves


def run_and_collect(directory, scheduler):
    exp, leaves = build(directory)
    exp.run(scheduler=scheduler, num_workers=4)
    graph = dg.Experiment.restore(directory).graph
    return {p.sha(): draws(graph.node(p.sha()).restore()) for p in leaves}


@pytest.mark.slow
def test_same_draws_on_every_rerun_and_every_scheduler(tmp_path):
    runs = {
        name: run_and_collect(str(tmp_path / name), scheduler)
        for name, scheduler in [
            ("single", "single-threaded"),
            ("again", "single-threaded"),
            ("threads", "threads"),
            ("processes", "processes"),
        ]
    }
    reference = runs["single"]
    for name, got in runs.items():
        assert got == reference, f"{name} drew other numbers than single-threaded"
    # ... and the numbers are those of the state's own seed, derived from its hash
    exp = dg.Experiment.restore(str(tmp_path / "threads"))
    for sha, got in reference.items():
        node = exp.graph.node(sha).restore()
        py, arr, tens = expected(node.dagger_seed)
        assert node.seed_seen == node.dagger_seed == int(sha[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF
        assert got[:3] == (py, arr, tens)
        assert got[3] == np.random.default_rng(node.dagger_seed).random(3).tolist()


def test_different_branches_get_different_seeds(exp_dir):
    exp, leaves = build(exp_dir)
    exp.run()
    graph = dg.Experiment.restore(exp_dir).graph
    states = [graph.node(p.sha()).restore() for p in leaves]
    assert len({s.dagger_seed for s in states}) == len(states)
    for source in range(4):
        values = {repr(draws(s)[source]) for s in states}
        assert len(values) == len(states), f"source {source} repeats across branches"


def test_root_initialization_is_seeded(tmp_path):
    values = set()
    for i in range(2):
        exp, _ = build(str(tmp_path / f"e{i}"))
        exp.run()
        root = dg.Experiment.restore(str(tmp_path / f"e{i}")).graph.root.restore()
        random.seed(root.dagger_seed)
        assert root.init_draw == random.random()
        values.add(root.init_draw)
    assert len(values) == 1


def test_opt_out_per_recipe_leaves_the_generators_alone(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=SeedState)
    root = exp.spawn_new_tree(name="seeds")
    exp.run()  # the root is stored: the next run seeds nothing before the opted-out recipe
    free = UnseededDraw(k=1)(root)
    seeded = Draw(k=1)(root)
    want_free = expected(1234)
    seed_all(1234)  # the generators now stand where the test leaves them
    exp.run(targets=[free])
    exp.run(targets=[seeded])
    graph = dg.Experiment.restore(exp_dir).graph
    got_free = graph.node(free.sha()).restore()
    got_seeded = graph.node(seeded.sha()).restore()
    assert draws(got_free)[:3] == want_free  # continued the test's streams: not reseeded
    assert draws(got_seeded)[:3] == expected(got_seeded.dagger_seed)
    # state.rng() stays derived from the state's hash either way
    assert draws(got_free)[3] == np.random.default_rng(got_free.dagger_seed).random(3).tolist()


def test_opt_out_per_experiment(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=SeedState, seed=False)
    child = Draw(k=1)(exp.spawn_new_tree(name="seeds"))
    random.seed(77)
    root_draw = random.random()
    child_py = random.random()
    want = expected(77)
    seed_all(77)
    exp.run()
    graph = dg.Experiment.restore(exp_dir).graph
    assert graph.root.restore().init_draw == root_draw  # the root was not reseeded
    got = graph.node(child.sha()).restore()
    # the child continued Python's stream where the root left it, and numpy's and torch's
    # from the test's seed 77: nothing was reseeded
    assert draws(got)[:3] == (child_py, want[1], want[2])


# Handshake between the two recipes below (threads share this module): without isolation,
# the unseeded recipe draws from numpy's global generator in the middle of the seeded run.
SEEDED_DREW_FIRST = threading.Event()
UNSEEDED_DREW = threading.Event()


class SeededTwoDraws(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.first = np.random.random(3)
        SEEDED_DREW_FIRST.set()
        UNSEEDED_DREW.wait(1.0)  # isolated: the unseeded recipe cannot run now, so this times out
        state.second = np.random.random(3)
        return state


class UnseededNeighbour(dg.Recipe):
    PROPERTIES = ["k"]
    SEED_GLOBAL_RNGS = False

    def run(self, state):
        SEEDED_DREW_FIRST.wait(1.0)
        state.noise = np.random.random(100)
        UNSEEDED_DREW.set()
        return state


def test_unseeded_recipe_under_threads_cannot_change_a_seeded_ones_numbers(tmp_path):
    SEEDED_DREW_FIRST.clear()
    UNSEEDED_DREW.clear()
    exp = dg.Experiment(str(tmp_path / "both"), state_class=SeedState)
    root = exp.spawn_new_tree(name="seeds")
    seeded = SeededTwoDraws(k=1)(root)
    UnseededNeighbour(k=1)(root)
    exp.run(scheduler="threads", num_workers=2)
    got = dg.Experiment.restore(str(tmp_path / "both")).graph.node(seeded.sha()).restore()
    np.random.seed(got.dagger_seed % 2**32)  # what the seeded recipe draws when it runs alone
    assert got.first.tolist() == np.random.random(3).tolist()
    assert got.second.tolist() == np.random.random(3).tolist()
