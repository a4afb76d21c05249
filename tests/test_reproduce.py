"""Re-verification: recompute a stored state in memory and compare it buffer by buffer."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

import dagger as dg
from dagger.reproduce import compare_states


class RState(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.net = torch.nn.Linear(4, 2)  # initialised from torch's seeded generator
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.1, momentum=0.9)
        self.data = np.random.normal(size=(8, 4))


class Train(dg.Recipe):
    """Deterministic given dagger's seeding: every draw comes from a seeded source."""

    PROPERTIES = ["steps"]

    def run(self, state):
        x = torch.tensor(state.data, dtype=torch.float32) + torch.randn(8, 4) * 0.01
        for _ in range(self.steps):
            state.opt.zero_grad()
            loss = state.net(x).pow(2).mean()
            loss.backward()
            state.opt.step()
        state.log = {"loss": loss.item(), "history": [random.random(), np.random.random(2)]}
        state.sample = state.rng().integers(0, 100, size=5)
        return state


class Entropy(dg.Recipe):
    """Reads the OS entropy pool: not reproducible."""

    PROPERTIES = []

    def run(self, state):
        state.noise = np.frombuffer(os.urandom(32), dtype=np.uint8).copy()
        return state


class FreshGenerator(dg.Recipe):
    """A numpy Generator created without a seed: not reproducible."""

    PROPERTIES = []

    def run(self, state):
        with torch.no_grad():
            state.net.weight += torch.from_numpy(np.random.default_rng().normal(size=(2, 4))).float()
        return state


class Jitter(dg.Recipe):
    """Tiny unseeded jitter, within a tolerance."""

    PROPERTIES = []

    def run(self, state):
        state.data = state.data + 1e-12 * np.random.default_rng().random(state.data.shape)
        return state


def build(directory):
    exp = dg.Experiment(directory, state_class=RState)
    root = exp.spawn_new_tree(name="r")
    trained = Train(steps=3)(root)
    leaves = {
        "root": root,
        "trained": trained,
        "entropy": Entropy()(trained),
        "fresh": FreshGenerator()(trained),
        "jitter": Jitter()(trained),
    }
    exp.run()
    return exp, leaves


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("reproduce") / "exp")
    exp, leaves = build(directory)
    return directory, exp, {k: p.sha() for k, p in leaves.items()}


def snapshot(directory):
    out = {}
    for folder, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(folder, name)
            st = os.stat(path)
            out[path] = (st.st_size, st.st_mtime_ns)
    return out


def test_deterministic_recipe_reproduces_exactly(stored):
    directory, exp, shas = stored
    before = snapshot(directory)
    report = exp.reproduce(shas["trained"])
    assert report.ok and report.differences == [] and bool(report)
    assert {"net", "opt", "data", "log", "sample"} <= set(report.attributes)
    assert "reproduced" in str(report)
    assert exp.reproduce(shas["root"]).ok  # the root: initialize_state, seeded the same way
    assert snapshot(directory) == before  # a scratch area: the store is never written


def test_reproduce_from_a_restored_experiment_by_prefix(stored):
    directory, _, shas = stored
    exp = dg.Experiment.restore(directory)  # no definitions in this session: rebuilt from metadata
    report = exp.reproduce(shas["trained"][:10])
    assert report.ok and report.sha == shas["trained"] and report.recipe == "Train"
    with pytest.raises(dg.StateNotFoundError):
        exp.reproduce("ffffffffffff")


def test_unseeded_entropy_is_caught(stored):
    _, exp, shas = stored
    report = exp.reproduce(shas["entropy"])
    assert not report.ok
    assert report.differing_attributes == ["noise"]  # everything else still matches
    assert "noise" in str(report) and "NOT reproduced" in str(report)


def test_fresh_unseeded_generator_is_caught_inside_a_torch_module(stored):
    _, exp, shas = stored
    report = exp.reproduce(shas["fresh"])
    assert report.differing_attributes == ["net"]
    (diff,) = report.differences
    assert diff.path == "net{state_dict}['weight']"
    assert diff.max_abs > 0


def test_tolerance(stored):
    _, exp, shas = stored
    exact = exp.reproduce(shas["jitter"])
    assert exact.differing_attributes == ["data"]
    assert 0 < exact.differences[0].max_abs < 1e-11
    assert exp.reproduce(shas["jitter"], atol=1e-9).ok
    assert not exp.reproduce(shas["entropy"], atol=1e-9).ok  # integers far apart stay different


class Box:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_compare_walks_nested_containers():
    a = Box(x={"w": np.array([1.0, np.nan]), "l": [1, 2.0, "s"], "t": torch.ones(2)}, y=3, z=Box(q=(1, 2)))
    b = Box(x={"w": np.array([1.0, np.nan]), "l": [1, 2.0, "s"], "t": torch.ones(2)}, y=3, z=Box(q=(1, 2)))
    assert compare_states(a, b) == []  # NaN equals NaN; equal containers, arrays, tensors

    b.x["w"] = np.array([1.5, np.nan])
    b.x["l"] = [1, 2.0]
    b.x["t"] = torch.ones(3)
    b.z.q = (1, 3)
    b.extra = 1
    paths = {d.path: d.detail for d in compare_states(a, b)}
    assert set(paths) == {"x['w']", "x['l']", "x['t']", "z.q[1]", "extra"}
    assert "1 of 2" in paths["x['w']"] and "length 2 vs 3" not in paths["x['l']"]
    assert "shape" in paths["x['t']"]

    c = Box(x={"w": np.zeros(2, dtype=np.float32)}, y=3.0)
    d = Box(x={"w": np.zeros(2, dtype=np.float64)}, y=3.0 + 1e-9)
    paths = {d.path for d in compare_states(c, d)}
    assert paths == {"x['w']", "y"}
    assert [
        x.path for x in compare_states(c, Box(x={"w": np.zeros(2, dtype=np.float32)}, y=3.0 + 1e-9), atol=1e-6)
    ] == []


def test_cli_reproduce_exit_codes(stored):
    from typer.testing import CliRunner

    from dagger import cli

    directory, _, shas = stored
    runner = CliRunner()
    ok = runner.invoke(cli.app, ["reproduce", directory, shas["trained"][:8]])
    assert ok.exit_code == 0 and "reproduced" in ok.output
    bad = runner.invoke(cli.app, ["reproduce", directory, shas["entropy"][:8]])
    assert bad.exit_code == 1 and "noise" in bad.output
    within = runner.invoke(cli.app, ["reproduce", directory, shas["jitter"], "--atol", "1e-9"])
    assert within.exit_code == 0


def test_compare_generators_by_their_state():
    same = compare_states(
        Box(g=np.random.default_rng(1), r=random.Random(1)), Box(g=np.random.default_rng(1), r=random.Random(1))
    )
    assert same == []
    moved = np.random.default_rng(1)
    moved.random()
    other = random.Random(2)
    paths = {
        d.attribute for d in compare_states(Box(g=np.random.default_rng(1), r=random.Random(1)), Box(g=moved, r=other))
    }
    assert paths == {"g", "r"}
