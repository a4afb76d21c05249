"""Blobs: unchanged data is never written twice; torch references survive; torch stays optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from damage import pickle_bytes
from storedefs import Keep, Perturb, build

import dagger as dg

HERE = os.path.dirname(__file__)


def blob_bytes(directory: str) -> int:
    total = 0
    for dirpath, _, names in os.walk(os.path.join(directory, "blobs")):
        total += sum(os.path.getsize(os.path.join(dirpath, n)) for n in names)
    return total


def test_child_that_leaves_its_data_unchanged_writes_no_new_bytes(exp_dir):
    exp, root, _ = build(exp_dir, data_mb=2.0, model_mb=0.5, width=0, depth=0)
    exp.run(progress=False)
    base = blob_bytes(exp_dir)
    assert base == int(2.5 * 2**20)  # the dataset and the model, once each

    exp2, root2, _ = build(exp_dir, data_mb=2.0, model_mb=0.5, width=0, depth=0)
    kept = Keep(label="a")(root2)
    Keep(label="b")(Keep(label="c")(kept))
    exp2.run(progress=False)
    assert len(exp2.records.committed()) == 4
    assert blob_bytes(exp_dir) == base  # three more states, not one new byte of blob

    # a child that changes only its model adds exactly the model's bytes
    exp3, root3, _ = build(exp_dir, data_mb=2.0, model_mb=0.5, width=0, depth=0)
    Perturb(step=1.0)(root3)
    exp3.run(progress=False)
    assert blob_bytes(exp_dir) == base + int(0.5 * 2**20)
    # and each state's pickle stays tiny (in its own file, or carried by its first commit record)
    committed = exp3.records.committed()
    assert len(committed) == 5
    for sha in committed:
        assert len(pickle_bytes(exp_dir, sha)) < 4096


def test_same_bytes_in_two_attributes_are_one_blob(exp_dir):
    class Twins(dg.ExperimentState):
        PROPERTIES = ["n"]

        def initialize_state(self, **kwargs):
            self.a = np.arange(self.n, dtype=np.float64)
            self.b = np.arange(self.n, dtype=np.float64)  # equal content, another object
            self.raw = self.a.tobytes()  # large bytes too

    exp = dg.Experiment(exp_dir, state_class=Twins)
    exp.spawn_new_tree(n=50_000)
    exp.run(progress=False)
    assert blob_bytes(exp_dir) == 50_000 * 8
    state = dg.Experiment.restore(exp_dir).graph.root.restore()
    assert np.array_equal(state.a, state.b) and state.raw == state.a.tobytes()
    assert state.a is not state.b


# ---- torch ---------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


class TorchState(dg.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["model", "optimizer", "x", "y"]

    def initialize_state(self, **kwargs):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(64, self.width), torch.nn.ReLU(), torch.nn.Linear(self.width, 1)
        )
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.x = torch.randn(256, 64)
        self.y = torch.randn(256, 1)


def train_step(state):
    state.optimizer.zero_grad()
    loss = torch.nn.functional.mse_loss(state.model(state.x), state.y)
    loss.backward()
    state.optimizer.step()
    return float(loss.detach())


class Train(dg.Recipe):
    PROPERTIES = ["steps"]

    def run(self, state):
        for _ in range(self.steps):
            train_step(state)
        return state


def test_optimizer_and_model_stay_linked_after_restore(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=TorchState)
    trained = Train(steps=2)(exp.spawn_new_tree(width=512))  # first layer: 128 KiB, a blob
    exp.run(progress=False)
    assert os.listdir(os.path.join(exp_dir, "blobs"))

    state = dg.Experiment.restore(exp_dir).graph.node(trained.sha()).restore()
    params = list(state.model.parameters())
    held = state.optimizer.param_groups[0]["params"]
    assert len(held) == len(params) and all(a is b for a, b in zip(held, params, strict=True))
    assert all(p in state.optimizer.state for p in params)  # momentum buffers keyed by the same objects
    before = [p.detach().clone() for p in params]
    train_step(state)
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))  # the step updated the model


def test_restored_tensors_share_storage_like_the_saved_ones(exp_dir):
    class Views(dg.ExperimentState):
        PROPERTIES = ["n"]

        def initialize_state(self, **kwargs):
            self.base = torch.zeros(self.n)
            self.view = self.base[10:20]  # a view of the same storage

    exp = dg.Experiment(exp_dir, state_class=Views)
    exp.spawn_new_tree(n=100_000)
    exp.run(progress=False)
    state = dg.Experiment.restore(exp_dir).graph.root.restore()
    state.view.fill_(3.0)
    assert float(state.base[15]) == 3.0 and float(state.base[25]) == 0.0
    assert blob_bytes(exp_dir) == 100_000 * 4


def _python(code: str) -> dict:
    script = f"import sys, json\nsys.path.insert(0, {HERE!r})\n" + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_torch_is_imported_only_when_a_state_holds_a_tensor(tmp_path):
    numpy_dir = str(tmp_path / "numpy")
    torch_dir = str(tmp_path / "torch")
    # numpy-only: defining, running, restoring slim and in full never import torch
    seen = _python(
        f"""
        from storedefs import build
        import dagger as dg
        exp, root, leaves = build({numpy_dir!r}, data_mb=0.2, model_mb=0.1, width=1, depth=1)
        exp.run(progress=False)
        dg.Experiment.restore({numpy_dir!r}, slim=False)
        print(json.dumps({{"torch": "torch" in sys.modules}}))
        """
    )
    assert seen == {"torch": False}

    # a state holding a tensor, written by one process...
    _python(
        f"""
        import torch, dagger as dg
        class T(dg.ExperimentState):
            PROPERTIES = ["n"]
            def initialize_state(self, **kw):
                self.w = torch.arange(self.n, dtype=torch.float32)
        exp = dg.Experiment({torch_dir!r}, state_class=T)
        exp.spawn_new_tree(n=40000)
        exp.run(progress=False)
        print(json.dumps({{}}))
        """
    )
    # ...browsed slim by another: still no torch; restored in full: torch comes in, by need
    seen = _python(
        f"""
        import dagger as dg
        exp = dg.Experiment.restore({torch_dir!r})
        slim = "torch" in sys.modules
        state = exp.graph.root.restore()
        print(json.dumps({{"slim": slim, "full": "torch" in sys.modules,
                           "type": type(state.w).__name__, "sum": float(state.w.double().sum())}}))
        """
    )
    assert seen == {"slim": False, "full": True, "type": "Tensor", "sum": float(sum(range(40000)))}


# ---- large blobs (hashed while written and read) ----------------------------------------------


class Poke(dg.Recipe):
    """Changes one byte of the dataset in place, away from where a cheap fingerprint would look."""

    PROPERTIES = ["offset"]

    def run(self, state):
        state.data.view(np.uint8)[self.offset] ^= 0xFF
        return state


def test_large_blobs_dedup_and_never_mistake_a_changed_buffer(exp_dir):
    mb = 8.0  # above the overlapped-I/O threshold
    exp, root, _ = build(exp_dir, data_mb=mb, model_mb=0.5, width=0, depth=0)
    exp.run(progress=False)
    base = blob_bytes(exp_dir)
    exp, root, _ = build(exp_dir, data_mb=mb, model_mb=0.5, width=0, depth=0)
    Keep(label="x")(root)
    nbytes = int(mb * 2**20)
    poked = Poke(offset=nbytes // 32 + 12345)(root)  # between two sampled slices
    exp.run(progress=False)
    assert blob_bytes(exp_dir) == base + nbytes  # Keep wrote nothing; Poke wrote one new dataset
    assert not os.listdir(os.path.join(exp_dir, "tmp"))
    again = dg.Experiment.restore(exp_dir)
    original = again.graph.root.restore().data
    changed = again.graph.node(poked.sha()).restore().data
    diff = np.flatnonzero(original.view(np.uint8) != changed.view(np.uint8))
    assert diff.tolist() == [nbytes // 32 + 12345]
    assert again.verify().ok
