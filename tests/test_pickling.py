"""State pickles with content-addressed blobs (store/pickling.py and store/records.py)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import records_io
import torch
from damage import carried_record, edit_carried_pickle, pickle_bytes, sole_pickle_file

import dagger as dg
from dagger.store import pickling
from dagger.store.records import Records, blob_key, meta_key, state_key


class MemoryBlobs:
    """A real in-memory blob store for pickling.dumps/loads: name -> bytes."""

    def __init__(self):
        self.data: dict[str, bytes] = {}
        self.writes = 0

    def sink(self, view):
        name = hashlib.sha256(view).hexdigest()
        self.writes += 1
        self.data.setdefault(name, bytes(view))
        return name

    def source(self, name, size):
        return bytearray(self.data[name])


def _blob_files(exp_dir):
    root = os.path.join(exp_dir, "blobs")
    return {name for _, _, files in os.walk(root) for name in files}


def test_large_arrays_go_to_blobs_and_come_back_writable():
    blobs = MemoryBlobs()
    big = np.random.default_rng(0).normal(size=(300, 100))
    small = np.arange(10)
    obj = {"big": big, "small": small, "again": big, "f32": big.astype(np.float32)}
    data, names = pickling.dumps(obj, blobs.sink, threshold=64 * 1024)
    assert len(names) == 2  # big once (shared reference), f32 once; small stays in band
    assert {n for n, _ in names} == set(blobs.data)
    assert sorted(s for _, s in names) == sorted([big.nbytes, big.astype(np.float32).nbytes])
    assert len(data) < 10_000  # the pickle itself holds no large buffer
    back = pickling.loads(data, names, blobs.source)
    assert np.array_equal(back["big"], big) and back["big"].dtype == big.dtype
    assert back["again"] is back["big"]
    assert back["big"].flags.writeable and back["f32"].flags.writeable
    back["big"][0, 0] = 42.0
    assert big[0, 0] != 42.0
    assert np.array_equal(back["small"], small)


def test_equal_arrays_share_one_blob():
    blobs = MemoryBlobs()
    a = np.ones(20_000)
    data, names = pickling.dumps({"a": a, "b": a.copy()}, blobs.sink)
    assert len(names) == 2 and names[0] == names[1] and len(blobs.data) == 1


class _PicklesAState:
    """Pickling it pickles another object through dagger first (a dump inside a dump)."""

    def __init__(self, blobs):
        self.blobs = blobs

    def __reduce__(self):
        inner, names = pickling.dumps({"inner": np.arange(3)}, self.blobs.sink)
        return (bytes, (inner,))


class _Unpicklable:
    def __reduce__(self):
        raise TypeError("no pickling me")


def test_the_reused_pickler_starts_each_state_afresh():
    import gc
    import weakref

    blobs = MemoryBlobs()
    big = np.ones(20_000)
    first = pickling.dumps({"a": big, "f": _module_function}, blobs.sink)
    # The same objects again: a memo left from the first dump would turn them into back-references.
    assert pickling.dumps({"a": big, "f": _module_function}, blobs.sink) == first
    # A failed dump leaves the pickler usable, and nothing of the failed state in its output.
    with pytest.raises(TypeError, match="no pickling me"):
        pickling.dumps([np.zeros(3), _Unpicklable()], blobs.sink)
    assert pickling.dumps({"a": big, "f": _module_function}, blobs.sink) == first
    # A dump inside a dump (a reducer that pickles through dagger) gets its own pickler.
    data, _ = pickling.dumps({"outer": _PicklesAState(blobs), "x": 1}, blobs.sink)
    back = pickling.loads(data, [], blobs.source)
    assert back["x"] == 1 and pickling.loads(back["outer"], [], blobs.source)["inner"].tolist() == [0, 1, 2]
    # Nothing pickled stays alive in the reused pickler (its memo would keep whole states).
    kept = np.ones(10)
    ref = weakref.ref(kept)
    pickling.dumps({"kept": kept}, blobs.sink)
    del kept
    gc.collect()
    assert ref() is None
    # Nor does a large state's memo table stay behind (clear_memo empties it but never shrinks
    # it): memory held for the thread's life, and zeroed again at every later dump.
    import tracemalloc

    many = {"keys": [f"k{i}" for i in range(200_000)]}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        data, _ = pickling.dumps(many, blobs.sink)
        del data
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes still held after the dump returned"


class _Scaled:
    """Pickled by a reducer registered with copyreg (as libraries do for their types)."""

    def __init__(self, v):
        self.v = v


def _reduce_doubled(obj):
    return (_Scaled, (obj.v * 2,))


def _reduce_tripled(obj):
    return (_Scaled, (obj.v * 3,))


class ScaledState(dg.ExperimentState):
    PROPERTIES = ["v"]
    NONHASHED_ATTRIBUTES = ["scaled"]

    def initialize_state(self, **kwargs):
        self.scaled = _Scaled(self.v)


class Rescale(dg.Recipe):
    PROPERTIES = ["v"]

    def run(self, state):
        state.scaled = _Scaled(self.v)
        return state


def test_reducers_registered_with_copyreg_are_used_new_at_once_replaced_from_the_next_run(exp_dir):
    import copyreg

    blobs = MemoryBlobs()
    pickling.dumps({"warm": 1}, blobs.sink)  # the reducer table is built before the registration
    copyreg.pickle(_Scaled, _reduce_doubled)
    try:
        data, _ = pickling.dumps(_Scaled(1), blobs.sink)
        assert pickling.loads(data, [], blobs.source).v == 2
        exp = dg.Experiment(exp_dir, state_class=ScaledState)
        first = exp.spawn_new_tree(v=1)
        exp.run()
        copyreg.pickle(_Scaled, _reduce_tripled)  # replaced in place: read again at the next run
        second = Rescale(v=10)(first)
        exp.run()
        tree = dg.Experiment.restore(exp_dir, state_class=ScaledState).graph
        assert tree.node(first.sha()).restore().scaled.v == 2
        assert tree.node(second.sha()).restore().scaled.v == 30
    finally:
        copyreg.dispatch_table.pop(_Scaled, None)


def _module_function():
    return 1


def test_large_bytes_and_truncated_pickles():
    blobs = MemoryBlobs()
    payload = os.urandom(200_000)

    class Holder(dg.ExperimentState):
        PROPERTIES = []

    h = Holder.__new__(Holder)
    h.__dict__.update(raw=payload, buf=bytearray(payload[:100_000]), tiny=b"x" * 5000)
    data, names = pickling.dumps(h, blobs.sink)
    assert len(names) == 2 and len(data) < 20_000
    back = pickling.loads(data, names, blobs.source)
    assert back.raw == payload and type(back.raw) is bytes
    assert back.buf == bytearray(payload[:100_000]) and type(back.buf) is bytearray
    assert back.tiny == b"x" * 5000
    with pytest.raises(dg.CorruptRecordError, match="truncated or corrupt"):
        pickling.loads(data[: len(data) // 2], names, blobs.source)


class DataState(dg.ExperimentState):
    PROPERTIES = ["n"]
    NONHASHED_ATTRIBUTES = ["data", "w"]

    def initialize_state(self, **kwargs):
        self.data = np.random.default_rng(1).normal(size=(self.n, 50))  # big, never changed by children
        self.w = np.zeros(50)  # small


class Fit(dg.Recipe):
    PROPERTIES = ["lr"]

    def run(self, state):
        state.w = state.w + self.lr * state.data.mean(axis=0)
        return state


class Shift(dg.Recipe):
    PROPERTIES = ["by"]

    def run(self, state):
        state.data = state.data + self.by
        return state


def test_unchanged_big_array_writes_no_new_blob(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=DataState)
    root = exp.spawn_new_tree(n=1000)
    exp.run()
    after_root = _blob_files(exp_dir)
    assert len(after_root) == 1
    fit = Fit(lr=0.1)(root)
    Fit(lr=0.2)(fit)
    exp.run()
    assert _blob_files(exp_dir) == after_root  # two children, no new blob
    g = exp.graph
    assert g.node(fit.sha()).metadata["blobs"] == g.root.metadata["blobs"]
    pickle_sizes = [n.metadata["pickle_bytes"] for n in g.nodes]
    assert max(pickle_sizes) < 20_000  # the 400 kB array lives only in its blob
    child = g.node(fit.sha()).restore()
    assert child.data.flags.writeable and np.array_equal(child.data, g.root.restore().data)
    Shift(by=1.0)(root)
    exp.run()
    assert len(_blob_files(exp_dir)) == 2  # a changed array is a new blob


def test_corrupt_and_missing_blobs(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=DataState)
    exp.spawn_new_tree(n=1000)
    exp.run()
    ((name, size),) = exp.graph.root.metadata["blobs"]
    path = os.path.join(exp_dir, blob_key(name))
    original = open(path, "rb").read()
    assert len(original) == size
    with open(path, "r+b") as f:
        f.write(b"\x00" * 16)
    with pytest.raises(dg.CorruptRecordError, match="does not match its content hash"):
        dg.Experiment.restore(exp_dir).graph.root.restore()
    unchecked = dg.Experiment.restore(exp_dir, verify_blobs=False).graph.root.restore()
    assert unchecked.data.shape == (1000, 50)  # trusted as is when verification is off
    os.remove(path)
    with pytest.raises(dg.CorruptRecordError, match="missing from the store"):
        dg.Experiment.restore(exp_dir).graph.root.restore()


@pytest.mark.parametrize("where", ["file", "carried"])
def test_corrupt_state_pickle(exp_dir, where):
    exp = dg.Experiment(exp_dir, state_class=DataState)
    root = exp.spawn_new_tree(n=10)
    exp.run()
    sha = root.sha()
    raw = pickle_bytes(exp_dir, sha)
    if where == "file":  # the pickle's own file
        key, path = state_key(sha), sole_pickle_file(exp_dir, sha)  # (the only copy)

        def store(data):
            open(path, "wb").write(data)

    else:  # the copy the state's first commit record carries (its meta/ file or its segment record)
        key = carried_record(exp_dir, sha)

        def store(data):
            edit_carried_pickle(exp_dir, sha, lambda _: data)

    store(raw.split(b"\n", 1)[0])
    with pytest.raises(dg.CorruptRecordError, match="no header") as info:
        dg.Experiment.restore(exp_dir).graph.root.restore()
    assert key in str(info.value)
    store(raw[: len(raw) - 40])
    with pytest.raises(dg.CorruptRecordError, match="truncated") as info:
        dg.Experiment.restore(exp_dir).graph.root.restore()
    assert key in str(info.value)


# ---- torch -------------------------------------------------------------------------------------


class TorchState(dg.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["model", "opt"]

    def initialize_state(self, **kwargs):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(self.width, self.width), torch.nn.ReLU(), torch.nn.Linear(self.width, 1)
        )
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.frozen = torch.randn(self.width, self.width)
        self.view = self.frozen[0]  # a view sharing the frozen tensor's storage


class TorchStep(dg.Recipe):
    PROPERTIES = ["steps"]

    def run(self, state):
        x = torch.randn(16, state.width)
        for _ in range(self.steps):
            state.opt.zero_grad()
            state.model(x).pow(2).mean().backward()
            state.opt.step()
        return state


def _one_step(state):
    state.opt.zero_grad()
    state.model(torch.ones(4, state.width)).sum().backward()
    state.opt.step()


@pytest.mark.slow  # the first torch.optim use imports torch._dynamo: a few seconds under coverage
def test_torch_model_and_optimizer_come_back_linked(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=TorchState)
    root = exp.spawn_new_tree(width=128)
    trained = TorchStep(steps=2)(root)
    exp.run()
    s = dg.Experiment.restore(exp_dir).graph.node(trained.sha()).restore()
    params = list(s.model.parameters())
    assert s.opt.param_groups[0]["params"][0] is params[0]
    assert all(p.requires_grad for p in params)
    assert len(s.opt.state) == len(params)  # momentum buffers came back too
    before = params[0].detach().clone()
    _one_step(s)
    assert not torch.equal(before, params[0].detach())  # the step moved the model's weights
    # the view still shares storage with the tensor it views
    s.frozen[0, 0] = 123.0
    assert s.view[0].item() == 123.0
    # big tensors went to blobs; the frozen one is shared with the root's blob
    root_blobs = {n for n, _ in exp.graph.root.metadata["blobs"]}
    child_blobs = {n for n, _ in exp.graph.node(trained.sha()).metadata["blobs"]}
    assert len(root_blobs) >= 2 and len(root_blobs & child_blobs) >= 1 and child_blobs != root_blobs


def test_torch_tensor_roundtrip_and_map_location():
    blobs = MemoryBlobs()
    t = torch.arange(40_000, dtype=torch.float32).reshape(200, 200)
    halves = (t[:100], t[100:])
    data, names = pickling.dumps(
        {"t": t, "halves": halves, "empty": torch.empty(0), "small": torch.ones(3)}, blobs.sink
    )
    assert len(names) == 1
    back = pickling.loads(data, names, blobs.source, map_location="cpu")
    assert torch.equal(back["t"], t) and back["t"].device.type == "cpu"
    back["t"][150, 0] = -1.0
    assert back["halves"][1][50, 0].item() == -1.0  # one storage, as before saving
    assert back["empty"].numel() == 0 and torch.equal(back["small"], torch.ones(3))
    mapped = pickling.loads(data, names, blobs.source, map_location=lambda dev: "cpu")
    assert torch.equal(mapped["t"], t)
    as_dict = pickling.loads(data, names, blobs.source, map_location={"cpu": "cpu"})
    assert torch.equal(as_dict["halves"][0], t[:100])


def test_storage_saved_on_a_gpu_loads_on_the_cpu_without_one():
    if torch.cuda.is_available():  # the other branch: a GPU is here, so the storage goes to it
        assert pickling._target_device("cuda:0") == "cuda:0"
        return
    with pytest.warns(UserWarning, match="CUDA is not available"):
        storage = pickling._rebuild_storage(0, bytearray(b"\x00" * 16), False, None, "cuda:0")
    assert storage.device.type == "cpu" and storage.nbytes() == 16


def test_shared_storage_before_its_owner_is_corrupt():
    with pytest.raises(dg.CorruptRecordError, match="not yet loaded"):
        pickling._shared_storage(7, False, None)


def test_untyped_storage_roundtrip():
    blobs = MemoryBlobs()
    storage = torch.arange(30_000, dtype=torch.float64).untyped_storage()
    data, names = pickling.dumps([storage, storage], blobs.sink)
    back = pickling.loads(data, names, blobs.source)
    assert back[0] is back[1] and back[0].nbytes() == storage.nbytes()
    assert torch.equal(
        torch.frombuffer(bytearray(bytes(back[0])), dtype=torch.float64)[:5], torch.arange(5, dtype=torch.float64)
    )


def test_meta_revisions_only_move_forward(exp_dir, layout):
    exp = dg.Experiment(exp_dir, state_class=DataState)
    root = exp.spawn_new_tree(n=10)
    exp.run()
    records = Records(exp.store)
    meta = records.read_meta(root.sha(), records.committed()[root.sha()])
    future = "f" * 15 + "0" + "0000"  # a revision from a clock far ahead
    records_io.add_record(exp_dir, root.sha(), future, records_io.read_bytes(exp_dir, root.sha(), meta["rev"]))
    records_io.remove(exp_dir, root.sha(), meta["rev"])
    assert records_io.revs(exp_dir, root.sha()) == [future]
    meta["rev"] = future
    meta["note"] = "newer"
    new = records.write_meta(meta, old_rev=future)
    assert new > future and records.committed() == {root.sha(): new}
    assert records.read_meta(root.sha(), new)["note"] == "newer"
    assert Records(exp.store).committed() == {root.sha(): new} and records_io.newest_rev(exp_dir, root.sha()) == new
    if layout == "files":  # the replaced meta/ file goes at once (a superseded segment record, at compaction)
        assert not os.path.exists(os.path.join(exp_dir, meta_key(root.sha(), future)))
