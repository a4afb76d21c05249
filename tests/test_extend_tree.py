"""Extending a stored tree: redefine it and run (stored states are cache hits); a run with nothing
defined says so, naming that fix, instead of silently running 0 states."""

from __future__ import annotations

import warnings

import pytest
from paperdefs import State, TrainRecipe, eval_fn, listing2

import dagger as dg


def test_run_with_nothing_defined_warns_and_names_the_fix(exp_dir):
    listing2(exp_dir)
    exp = dg.Experiment.restore(exp_dir)
    with pytest.warns(dg.DaggerWarning) as caught:
        report = exp.run()
    (warning,) = [w for w in caught if issubclass(w.category, dg.DaggerWarning)]
    message = str(warning.message)
    assert "no states are defined" in message and "5 stored states" in message
    assert "spawn_new_tree" in message and "cache hits" in message
    assert warning.filename == __file__  # points at the caller's run()
    assert len(report.states) == 0


def test_an_empty_experiment_warns_too(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    with pytest.warns(dg.DaggerWarning, match="nothing runs"):
        exp.run()


def test_redefining_the_tree_extends_it_and_does_not_warn(exp_dir):
    listing2(exp_dir)
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
    for lr in [0.01, 0.1, 0.5]:
        with exp.tag(f"lr:{lr}"):
            eval_fn(TrainRecipe(nb_epochs=100, lr=lr)(root))
    with warnings.catch_warnings():
        warnings.simplefilter("error", dg.DaggerWarning)
        report = exp.run()
    assert len(report.computed) == 1 and len(report.cached) == 3
    assert len(dg.Experiment.restore(exp_dir).graph.nodes) == 6
