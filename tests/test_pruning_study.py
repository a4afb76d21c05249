"""The pruning study (examples/pruning/study.py) at its reduced size, end to end, on real torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

import dagger as dg

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "pruning"
sys.path.insert(0, str(EXAMPLE))

import study  # noqa: E402

pytestmark = pytest.mark.slow

QUICK = study.SIZES["quick"]
FRACTION = QUICK["pruning_fraction"]
STATES = 1 + len(study.LEARNING_RATES) * (1 + 2 * study.ROUNDS + 2)


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """The quick study run once into a fresh folder: (folder, experiment, report)."""
    out = tmp_path_factory.mktemp("pruning")
    exp, report = study.main(out, quick=True, progress=False, verbose=False)
    return out, exp, report


def _one(nodes: dg.NodeSet) -> dg.ExperimentState:
    assert len(nodes) == 1, nodes
    return nodes[0]


def _recipe(node: dg.ExperimentState) -> str:
    return "root" if node.recipe is None else node.recipe["name"]


def test_first_run_computes_every_state(first):
    _, exp, report = first
    assert len(report.states) == STATES == 19
    assert len(report.computed) == STATES
    assert not report.cached and not report.failures
    assert len(exp.graph) == STATES


def test_tree_shape(first):
    _, exp, _ = first
    graph = exp.graph
    root = graph.root
    assert _recipe(root) == "root" and root.tags == []
    assert sorted(c.tags[0] for c in root.children) == ["lr:0.01", "lr:0.1"]
    assert len(graph.nodes_at_distance(8)) == 2 and len(graph.nodes_at_distance(9)) == 0
    assert len(graph.leaves()) == 4
    for lr in study.LEARNING_RATES:
        branch = graph.nodes.filter(f"lr:{lr}")
        assert len(branch) == (STATES - 1) // 2
        assert len(branch.filter("pruned")) == len(branch) - 1
        assert len(branch.filter("rewound")) == 2
        for k in range(1, study.ROUNDS + 1):
            pruned = _one(branch.filter(f"prune:{k}", "!retrained"))
            retrained = _one(branch.filter(f"prune:{k}", "retrained"))
            assert _recipe(pruned) == "PruneRecipe" and _recipe(retrained) == "TrainRecipe"
            assert retrained.parent.sha() == pruned.sha()
            assert pruned.recipe["properties"] == {
                "pruning_technique": "lowest_magnitude",
                "pruning_fraction": FRACTION,
            }
            assert retrained.recipe["properties"] == {"nb_epochs": QUICK["retrain_epochs"], "lr": lr}
        last = _one(branch.filter(f"prune:{study.ROUNDS}", "!retrained"))
        assert sorted(_recipe(c) for c in last.children) == ["ResetRecipe", "TrainRecipe"]
        leaf = _one(branch.filter("rewound", "retrained"))
        assert [_recipe(n) for n in leaf.lineage()] == [
            "root",
            "TrainRecipe",
            *["PruneRecipe", "TrainRecipe"] * (study.ROUNDS - 1),
            "PruneRecipe",
            "ResetRecipe",
            "TrainRecipe",
        ]
        assert leaf.recipe["properties"] == {"nb_epochs": QUICK["train_epochs"], "lr": lr}
    # The two branches share only the root.
    lows, highs = (set(n.sha() for n in graph.nodes.filter(f"lr:{lr}")) for lr in study.LEARNING_RATES)
    assert not lows & highs


def test_every_state_is_evaluated_and_tabulated(first):
    _, exp, _ = first
    table = study.results_table(exp)
    for node in exp.graph.nodes:
        result = node.results["evaluate"]
        assert 0.0 <= result["accuracy"] <= 1.0 and 0.0 <= result["sparsity"] < 1.0
        assert node.sha()[:8] in table
    assert table.count("\n") == STATES + 1  # header, rule, one line per state
    # Training learns something: the lr=0.1 model beats chance (10 classes) clearly.
    trained = _one(exp.graph.nodes.filter("lr:0.1", "!pruned"))
    assert trained.results["evaluate"]["accuracy"] > 0.3


def _layer_zeros(state: dg.ExperimentState) -> list[tuple[int, int]]:
    return [
        (int((study.effective_weight(layer) == 0).sum()), layer.weight.numel())
        for _, layer in study.linear_layers(state.model)
    ]


def test_pruning_reaches_the_compounded_sparsity(first):
    _, exp, _ = first
    nodes = exp.graph.nodes
    for lr in study.LEARNING_RATES:
        for k in range(1, study.ROUNDS + 1):
            expected = 1 - (1 - FRACTION) ** k
            for node in nodes.filter(f"lr:{lr}", f"prune:{k}"):  # the pruned state and its retrained child
                with node.lazy_load() as state:
                    for zeros, total in _layer_zeros(state):
                        assert abs(zeros - expected * total) <= k, (node, zeros, total)
                    assert node.results["evaluate"]["sparsity"] == round(study.sparsity(state.model), 4)
                    assert abs(study.sparsity(state.model) - expected) < 0.02
        unpruned = _one(nodes.filter(f"lr:{lr}", "!pruned"))
        assert unpruned.results["evaluate"]["sparsity"] == 0.0


def test_retraining_keeps_the_masks(first):
    _, exp, _ = first
    retrained = _one(exp.graph.nodes.filter("lr:0.1", "prune:2", "retrained"))
    pruned = retrained.parent
    with retrained.lazy_load() as after, pruned.lazy_load() as before:
        for (_, a), (_, b) in zip(study.linear_layers(after.model), study.linear_layers(before.model), strict=True):
            assert torch.equal(a.weight_mask, b.weight_mask)
            assert torch.all(study.effective_weight(a)[b.weight_mask == 0] == 0)
            assert not torch.equal(study.effective_weight(a), study.effective_weight(b))  # it did train


def test_rewinding_restores_the_initial_weights_of_surviving_connections(first):
    _, exp, _ = first
    root = exp.graph.root.restore()
    initial = {
        name: (layer.weight.detach().clone(), layer.bias.detach().clone())
        for name, layer in study.linear_layers(root.model)
    }
    for lr in study.LEARNING_RATES:
        reset = _one(exp.graph.nodes.filter(f"lr:{lr}", "rewound", "!retrained"))
        last_pruned = reset.parent
        assert _recipe(reset) == "ResetRecipe" and _recipe(last_pruned) == "PruneRecipe"
        with reset.lazy_load() as state, last_pruned.lazy_load() as before:
            layers = dict(study.linear_layers(state.model))
            masks_before = {name: layer.weight_mask for name, layer in study.linear_layers(before.model)}
            for name, (w0, b0) in initial.items():
                layer = layers[name]
                mask = layer.weight_mask
                assert torch.equal(mask, masks_before[name])  # the masks are kept
                alive = mask.bool()
                assert torch.equal(study.effective_weight(layer)[alive], w0[alive])  # survivors are back at init
                assert torch.all(study.effective_weight(layer)[~alive] == 0)  # pruned connections stay pruned
                assert torch.equal(layer.bias, b0)
                # The pruned parent had moved away from init: the reset did something.
                assert not torch.equal(
                    study.effective_weight(dict(study.linear_layers(before.model))[name])[alive], w0[alive]
                )
            assert len(state.optimizer.state) == 0  # momentum cleared
            # The optimizer still drives this model's parameters after the store round trip.
            held = {id(p) for group in state.optimizer.param_groups for p in group["params"]}
            assert {id(p) for p in state.model.parameters()} == held


def test_random_pruning_compounds_too(first):
    _, exp, _ = first
    trained = _one(exp.graph.nodes.filter("lr:0.01", "!pruned"))
    with trained.lazy_load() as state:
        recipe = study.PruneRecipe(pruning_technique="random", pruning_fraction=0.5)
        recipe.run(recipe.run(state))
        assert abs(study.sparsity(state.model) - 0.75) < 0.02
    with pytest.raises(ValueError, match="pruning_technique"):
        study.PruneRecipe(pruning_technique="largest", pruning_fraction=0.5)


def test_second_run_is_all_cache_hits_with_identical_results(first):
    out, exp, _ = first
    before = {n.sha(): n.results["evaluate"] for n in exp.graph.nodes}
    again, report = study.main(out, quick=True, progress=False, verbose=False)
    assert report.computed == []
    assert len(report.cached) == STATES
    assert {n.sha(): n.results["evaluate"] for n in again.graph.nodes} == before


def test_a_fresh_run_reproduces_every_number(first, tmp_path):
    _, exp, _ = first
    before = {n.sha(): n.results["evaluate"] for n in exp.graph.nodes}
    fresh, report = study.main(tmp_path / "fresh", quick=True, progress=False, verbose=False)
    assert len(report.computed) == STATES
    assert {n.sha(): n.results["evaluate"] for n in fresh.graph.nodes} == before


def test_stored_states_recompute_bit_for_bit(first):
    _, exp, _ = first
    for tags in (("lr:0.1", "prune:2", "!retrained"), ("lr:0.01", "rewound", "retrained")):
        node = _one(exp.graph.nodes.filter(*tags))
        report = exp.reproduce(node.sha())
        assert report.ok, report


def test_tree_pictures_show_every_state(first):
    out, exp, _ = first
    svg = (out / "tree.svg").read_text()
    png = (out / "tree.png").read_bytes()
    assert svg.lstrip().startswith(("<?xml", "<svg")) and "</svg>" in svg
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    for node in exp.graph.nodes:
        assert node.sha()[:7] in svg
    assert "rewound" in svg and "lr:0.1" in svg and "accuracy" in svg
    boxes = [g for g in ElementTree.fromstring(svg).iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert sorted(g.get("data-sha") for g in boxes) == sorted(n.sha() for n in exp.graph)  # every state, once
    curve = (out / "curve.png").read_bytes()  # the pruning curve, from slim records
    assert curve.startswith(b"\x89PNG\r\n\x1a\n") and len(curve) > 10_000


def test_the_script_shares_the_cache_of_the_imported_module(first):
    out, _, _ = first
    env = dict(os.environ, DAGGER_PROGRESS="0")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "study.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"{STATES} states: 0 computed, {STATES} served from the store" in done.stdout
    assert "87.5%" in done.stdout and "rewind to initial weights" in done.stdout
