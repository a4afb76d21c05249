"""Blob names: BLAKE3 for new experiments, SHA-256 for experiments that predate the choice."""

from __future__ import annotations

import hashlib
import json
import os

import blake3
import numpy as np
import pytest
from damage import pickle_bytes
from storedefs import build

import dagger as dg
from dagger.errors import FormatVersionError
from dagger.store import _fastio
from dagger.store import records as rec

# The dataset takes the overlapped hash-while-writing path, the models the plain one.
DATA_MB = 2 * _fastio.OVERLAP_MIN / 2**20
MODEL_MB = 0.25


def _blobs(directory: str) -> dict[str, bytes]:
    out = {}
    for folder, _, files in os.walk(os.path.join(directory, "blobs")):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                out[name] = f.read()
    return out


def _headers(exp) -> list[dict]:
    return [json.loads(pickle_bytes(exp.directory, sha).split(b"\n", 1)[0]) for sha in exp.records.committed()]


def _experiment_record(directory: str) -> dict:
    with open(os.path.join(directory, "experiment.json")) as f:
        return json.load(f)


def _check_restores(exp, leaves) -> None:
    for i, leaf in enumerate(leaves):
        state = dg.Experiment.restore(exp.directory).graph.node(leaf.sha()).restore()
        assert state.data.nbytes == int(DATA_MB * 2**20)
        assert np.all(state.model == float(i * 10 + 1))


def test_new_experiments_name_blobs_with_blake3(tmp_path):
    directory = str(tmp_path / "exp")
    exp, _, leaves = build(directory, data_mb=DATA_MB, model_mb=MODEL_MB, width=2, depth=1)
    exp.run(progress=False)
    assert _experiment_record(directory)["blob_hash"] == "blake3"
    blobs = _blobs(directory)
    assert len(blobs) == 4 and max(len(b) for b in blobs.values()) >= _fastio.OVERLAP_MIN
    for name, data in blobs.items():
        assert name == blake3.blake3(data).hexdigest()
    for header in _headers(exp):
        assert set(header) == {"format", "blobs", "blake3", "sha"}  # the pickle names its state
    _check_restores(exp, leaves)
    assert exp.verify().ok


def test_an_experiment_written_with_sha256_still_opens_restores_and_verifies(tmp_path):
    directory = str(tmp_path / "old")
    build(directory, data_mb=DATA_MB, model_mb=MODEL_MB, width=2, depth=1)  # writes experiment.json only
    info = _experiment_record(directory)
    del info["blob_hash"]  # as written before blobs could be named by anything but SHA-256
    with open(os.path.join(directory, "experiment.json"), "w") as f:
        json.dump(info, f)

    exp, _, leaves = build(directory, data_mb=DATA_MB, model_mb=MODEL_MB, width=2, depth=1)
    assert exp.records.blob_hash == "sha256"
    exp.run(progress=False)
    blobs = _blobs(directory)
    assert len(blobs) == 4
    for name, data in blobs.items():
        assert name == hashlib.sha256(data).hexdigest()
    for header in _headers(exp):
        assert set(header) == {"format", "blobs", "sha256", "sha"}
    _check_restores(exp, leaves)
    assert exp.verify().ok

    # verification hashes with the experiment's own algorithm, so damage is still found
    big = max(blobs, key=lambda name: len(blobs[name]))
    path = os.path.join(directory, rec.blob_key(big))
    with open(path, "r+b") as f:
        f.seek(12345)
        f.write(b"\x00\x01\x02")
    report = exp.verify()
    assert not report.ok and {p.file for p in report.problems} == {rec.blob_key(big)}
    with pytest.raises(dg.errors.CorruptRecordError, match="does not match its content hash"):
        dg.Experiment.restore(directory).graph.node(leaves[0].sha()).restore()


def test_an_unknown_blob_hash_is_a_clear_error(tmp_path):
    directory = str(tmp_path / "future")
    build(directory, data_mb=0.1, model_mb=0.1, width=1, depth=1)
    info = _experiment_record(directory)
    info["blob_hash"] = "sha3-512"
    with open(os.path.join(directory, "experiment.json"), "w") as f:
        json.dump(info, f)
    with pytest.raises(FormatVersionError, match=r"names blobs with 'sha3-512'.*Upgrade dagger"):
        dg.Experiment.restore(directory)
