"""Remote stores under ``scheduler="processes"`` (issue 18 item 15).

An S3 store (the real S3-compatible server of tests/s3server.py) works with forked worker
processes: fsspec's async file systems must not cross a fork. A ``memory://`` store, which
lives in one process, is refused up front with a clear error.
"""

from __future__ import annotations

import pytest
from paperdefs import State, TrainRecipe, eval_fn

import dagger as dg


def define(url, opts):
    exp = dg.Experiment(url, state_class=State, storage_options=opts)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    leaves = []
    for lr in (0.1, 0.2, 0.3):
        leaf = TrainRecipe(nb_epochs=5, lr=lr)(root)
        eval_fn(leaf)
        leaves.append(leaf)
    return exp, leaves


@pytest.mark.slow
@pytest.mark.parametrize("instance_cache", [False, True])
def test_s3_store_runs_under_processes(s3_location, instance_cache):
    url, opts = s3_location
    opts = dict(opts, skip_instance_cache=not instance_cache)
    exp, leaves = define(url, opts)
    dg.Experiment(url, storage_options=opts).records.store.exists("experiment.json")  # a parent-side connection
    report = exp.run(scheduler="processes", num_workers=2)
    assert sorted(s.status for s in report.states) == ["computed"] * 4
    again = dg.Experiment.restore(url, storage_options=opts)
    assert len(again.graph) == 4
    for leaf in leaves:
        node = again.graph.node(leaf.sha())
        assert "accuracy" in node.results["eval_fn"]  # the Function ran in a worker and was stored
        assert node.restore().model["w"].shape == (6,)
    exp2, _ = define(url, opts)
    assert sorted(s.status for s in exp2.run(scheduler="processes", num_workers=2).states) == ["cached"] * 4


def test_memory_store_with_processes_is_refused_up_front():
    exp = dg.Experiment("memory://dagger-processes-refused", state_class=State)
    TrainRecipe(nb_epochs=1, lr=0.1)(exp.spawn_new_tree(dataset_name="d", model_name="m"))
    with pytest.raises(dg.DefinitionError, match=r"memory:// store.*scheduler='threads'"):
        exp.run(scheduler="processes")
    assert len(exp.run(scheduler="threads").computed) == 2  # nothing was half-done by the refusal
