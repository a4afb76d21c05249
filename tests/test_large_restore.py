"""Large blobs are read by several threads into their final buffer while they are hashed (issue 20 item 1)."""

from __future__ import annotations

import os

import blake3
import numpy as np
import pytest

import dagger as dg
from dagger.store import _fastio

CHUNK = 1 << 20  # small chunks, so that a test-sized blob has many, read by several threads
NBYTES = 7 * CHUNK + 12_345  # not a multiple of the chunk: the last one is short


class Holder(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["data"]

    def initialize_state(self, **kwargs):
        self.data = np.random.default_rng(7).integers(0, 256, NBYTES, dtype=np.uint8)


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setattr(_fastio, "CHUNK", CHUNK)
    monkeypatch.setattr(_fastio, "MIN_CHUNK", CHUNK)
    directory = str(tmp_path / "exp")
    exp = dg.Experiment(directory, state_class=Holder)
    exp.spawn_new_tree(name="big")
    exp.run(progress=False)
    (blob,) = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(directory, "blobs")) for f in fs]
    return directory, blob


def _restore(directory, verify=True):
    return dg.Experiment.restore(directory, verify_blobs=verify).graph.root.restore().data


@pytest.mark.parametrize("readers", [1, 3, 8])
def test_a_large_restore_is_bit_identical(saved, monkeypatch, readers):
    monkeypatch.setattr(_fastio, "READERS", readers)
    directory, blob = saved
    expected = Holder.__new__(Holder)
    Holder.initialize_state(expected)
    data = _restore(directory)
    assert data.dtype == np.uint8 and data.nbytes == NBYTES and data.flags.writeable
    assert np.array_equal(data, expected.data)
    assert blake3.blake3(data).hexdigest() == os.path.basename(blob)


def test_the_hash_computed_while_reading_is_the_files(saved):
    directory, blob = saved
    store = dg.Experiment.restore(directory).records.store
    key = os.path.relpath(blob, directory)
    view, name = _fastio.get_blob(store, key, "blake3")
    with open(blob, "rb") as f:
        raw = f.read()
    assert name == blake3.blake3(raw).hexdigest() and bytes(view) == raw
    view, name = _fastio.get_blob(store, key, "sha256")
    import hashlib

    assert name == hashlib.sha256(raw).hexdigest()
    assert _fastio.get_blob(store, key, None)[1] is None


@pytest.mark.parametrize("where", [0, 3 * CHUNK + 5, NBYTES - 1])
def test_a_corrupted_blob_is_still_detected(saved, where):
    directory, blob = saved
    with open(blob, "r+b") as f:
        f.seek(where)
        byte = f.read(1)
        f.seek(where)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(dg.errors.CorruptRecordError, match="does not match its content hash"):
        _restore(directory)
    assert _restore(directory, verify=False).nbytes == NBYTES  # verification is what caught it


def test_a_truncated_blob_is_detected(saved):
    directory, blob = saved
    with open(blob, "r+b") as f:
        f.truncate(NBYTES - CHUNK)
    with pytest.raises(dg.errors.CorruptRecordError, match="does not match its content hash"):
        _restore(directory)


def test_without_preadv_the_serial_reader_gives_the_same_bytes(saved, monkeypatch):
    directory, blob = saved
    monkeypatch.delattr(os, "preadv")
    data = _restore(directory)
    assert blake3.blake3(data).hexdigest() == os.path.basename(blob)
