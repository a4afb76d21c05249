"""Whole experiments on remote stores: ``memory://`` and S3 (a real moto server on 127.0.0.1)."""

from __future__ import annotations

import json
import uuid

import blake3
import numpy as np
import paperdefs
import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn
from storedefs import build

import dagger as dg
from dagger.store import FsspecStore
from dagger.store import records as rec


@pytest.fixture(params=["memory", pytest.param("s3", marks=pytest.mark.slow)])
def location(request):
    """``(url, storage_options)`` of an empty remote experiment folder."""
    if request.param == "memory":
        return f"memory://dagger-remote/{uuid.uuid4().hex}", {}
    return request.getfixturevalue("s3_location")


def _listing2(url, options, scheduler="single-threaded"):
    exp = dg.Experiment(url, state_class=State, storage_options=options)
    root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
    for lr in [0.01, 0.1]:
        s = root
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=100, lr=lr)(s)
            eval_fn(s)
            with exp.tag("pruned"):
                s = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.2)(s)
    return exp, exp.run(scheduler=scheduler, progress=False)


def test_paper_tree_runs_restores_and_caches(location, tmp_path, monkeypatch):
    url, options = location
    calls = tmp_path / "calls"
    monkeypatch.setattr(paperdefs, "CALLS_FILE", str(calls))
    exp, report = _listing2(url, options, scheduler="threads")
    assert len(report.computed) == 5
    assert sorted(calls.read_text().split()) == ["init", "prune", "prune", "train", "train"]

    # Slim restore: JSON only, tags and Function results there.
    slim = dg.Experiment.restore(url, storage_options=options)
    graph = slim.graph
    assert len(graph) == 5
    assert not any(n.is_loaded for n in graph.nodes)
    pruned = graph.nodes.filter("pruned") & graph.nodes.filter("lr:0.1")
    assert len(pruned) == 1
    trained = pruned[0].parent
    assert 0.5 < trained.results["eval_fn"]["accuracy"] <= 1.0

    # Full restore of one state.
    state = pruned[0].restore()
    assert state.tags == ["lr:0.1", "pruned"]
    assert state.model["w"].shape == (6,)
    assert (state.model["w"] == 0).sum() >= 1
    with trained.lazy_load():
        assert (trained.model["w"] != 0).all()
    assert not trained.is_loaded

    # Everything restored at once, with the class the tree was made with.
    full = dg.Experiment.restore(url, state_class=State, slim=False, storage_options=options)
    assert all(n.is_loaded for n in full.graph.nodes)

    # Rerun: every state is a cache hit, only the Function runs again.
    calls.write_text("")
    _, again = _listing2(url, options)
    assert len(again.computed) == 0
    assert calls.read_text() == ""
    assert dg.Experiment(url, storage_options=options).verify().ok


def test_blobs_are_written_once_and_read_back(location):
    url, options = location
    exp, root, leaves = build(url, data_mb=0.5, model_mb=0.25, width=2, depth=1, storage_options=options)
    exp.run(progress=False)
    store = FsspecStore(url, **options)
    blob_keys = sorted(store.list("blobs"))
    # one shared dataset, the root's model and one model per child
    assert len(blob_keys) == 4
    sizes = sorted(store.size(k) for k in blob_keys)
    assert sizes == [256 * 1024] * 3 + [512 * 1024]
    for key in blob_keys:
        data = store.get(key)
        assert blake3.blake3(data).hexdigest() == key.rsplit("/", 1)[-1]  # BLAKE3 names blobs
    # the dataset blob is the dataset's bytes
    expected = np.random.default_rng(0).random(512 * 1024 // 8)
    data_key = [k for k in blob_keys if store.size(k) == 512 * 1024][0]
    assert np.array_equal(np.frombuffer(store.get(data_key)), expected)
    # each state's pickle stays small: the arrays are out of band (in its own file, or carried by its record)
    records = rec.Records(store)
    assert len(records.committed()) == 3
    for sha in records.committed():
        raw = records.read_pickle(sha)[1]
        assert len(raw) < 8 * 1024
        header = json.loads(raw.split(b"\n", 1)[0])
        assert [name for name, _ in header["blobs"]] and all(rec.blob_key(n) in blob_keys for n, _ in header["blobs"])

    restored = dg.Experiment.restore(url, storage_options=options)
    leaf = restored.graph.node(leaves[1].sha()).restore()
    assert np.array_equal(leaf.data, expected)
    assert leaf.data.flags.writeable
    assert np.all(leaf.model == 11.0)  # Perturb(step=11.0) on a zero model
    assert restored.verify().ok
    assert restored.gc().removed_count == 0
