"""The reference implementation's API, used the way its tutorial notebook uses it.

The reference implementation (facebookresearch/dagger) teaches its users with one
notebook: a state class with a ``seed`` and dict-valued properties and its own
``__init__``; a seeded recipe base class that overrides ``__call__``; a pruning schema
of ``functools.partial``s keyed by (module, tensor) tuples; then analysis through
``node_map``, ``edge_map``, tags with glob filters, ``lazy_load``, ``deflate`` and
``nodes.iterator``. This module does the same things, written for this test, on a
small synthetic stand-in for MNIST. It runs in-process and, as the notebook's users
would run it, as a script whose classes live in ``__main__``.

Run as a script: ``python tests/test_reference_tutorial.py DIRECTORY`` (prints ``tutorial ok``).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import dagger as dg
from dagger.errors import DefinitionError, DeflatedStateError

N_CLASSES = 4
SIDE = 8


def set_reproducible_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _worker_init_fn(worker_id: int, seed: int) -> None:
    np.random.seed(int(seed) + worker_id)


def synthetic_digits(n: int, seed: int) -> torch.utils.data.TensorDataset:
    """Stand-in for MNIST: 1x8x8 noisy images whose label is the quadrant that is lit."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    images = 0.3 * torch.randn(n, 1, SIDE, SIDE, generator=g)
    half = SIDE // 2
    for i, label in enumerate(labels.tolist()):
        r, c = divmod(label, 2)
        images[i, 0, r * half : (r + 1) * half, c * half : (c + 1) * half] += 1.0
    return torch.utils.data.TensorDataset(images, labels)


def get_dataloaders(dataset, root, train_batch_size, test_batch_size, seed, num_workers=0):
    if dataset != "synthetic-digits":
        raise ValueError(f"only 'synthetic-digits' is available here, not {dataset!r}")
    train = torch.utils.data.DataLoader(
        synthetic_digits(256, seed),
        batch_size=train_batch_size,
        shuffle=True,
        num_workers=num_workers,
        worker_init_fn=partial(_worker_init_fn, seed=seed),
    )
    test = torch.utils.data.DataLoader(synthetic_digits(128, seed + 1), batch_size=test_batch_size, shuffle=False)
    return train, test


class TinyLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * (SIDE // 2) ** 2, 16)
        self.fc2 = nn.Linear(16, N_CLASSES)

    def forward(self, x):
        x = nn.functional.max_pool2d(nn.functional.relu(self.conv1(x)), 2)
        x = nn.functional.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def get_optimizer(name, parameters, **kwargs):
    return {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[name](parameters, **kwargs)


class TutorialState(dg.ExperimentState):
    PROPERTIES = ["dataset_name", "model_name", "optimizer_name", "dataloader_hparams", "optimizer_hparams", "seed"]
    NONHASHED_ATTRIBUTES = ["train_dataloader", "test_dataloader", "model", "optimizer"]

    def __init__(self, parent_sha, experiment_object):
        super().__init__(parent_sha, experiment_object)
        self.init_saw = (parent_sha, experiment_object)

    def initialize_state(self, **kwargs):
        self.seed = kwargs.get("seed", 0)
        set_reproducible_seed(self.seed)
        self.train_dataloader, self.test_dataloader = get_dataloaders(**self.dataloader_hparams)
        self.model = {"tinylenet": TinyLeNet}[self.model_name]()
        self.optimizer = get_optimizer(self.optimizer_name, self.model.parameters(), **self.optimizer_hparams)


class SeededRecipe(dg.Recipe):
    """The notebook's pattern: a recipe base class that fills in the root's seed when none is given."""

    def __call__(self, experiment_state):
        self.experiment_object = experiment_state.experiment_object
        if getattr(self, "seed", None) is None:
            self.seed = self.experiment_object.root.seed
        return super().__call__(experiment_state)

    def set_seed(self):
        set_reproducible_seed(self.seed)


class TrainRecipe(SeededRecipe):
    PROPERTIES = ["nb_epochs", "seed"]

    def __init__(self, nb_epochs, seed=None):
        self.nb_epochs = nb_epochs
        self.seed = seed

    def run(self, new_state):
        self.set_seed()
        new_state.model.train()
        loss_fn = nn.CrossEntropyLoss()
        for _ in range(self.nb_epochs):
            for x, y in new_state.train_dataloader:
                new_state.optimizer.zero_grad()
                loss_fn(new_state.model(x), y).backward()
                new_state.optimizer.step()
        return new_state


class PruneRecipe(SeededRecipe):
    PROPERTIES = ["schema", "seed"]

    def __init__(self, schema, seed=None):
        self.schema = schema
        self.seed = seed

    def run(self, new_state):
        self.set_seed()
        modules = dict(new_state.model.named_modules())
        for (module_name, tensor_name), pruning_fn in self.schema.items():
            pruning_fn(modules[module_name], tensor_name)
        return new_state


def eval_model(model, loader):
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += (model(x).argmax(-1) == y).sum().item()
    return correct / len(loader.dataset)


PRUNING_SCHEMA = {
    ("conv1", "weight"): partial(prune.random_unstructured, amount=0.5),
    ("fc1", "weight"): partial(prune.random_unstructured, amount=0.5),
    ("fc2", "weight"): partial(prune.random_unstructured, amount=0.5),
}


def run_tutorial(directory: str) -> dict:
    """The notebook's steps, checked as they go. Returns figures for the caller to report."""
    seed = 123
    # --- an empty experiment ----------------------------------------------------------
    exp = dg.Experiment(directory=directory, state_class=TutorialState)
    assert exp.directory.endswith(os.path.basename(directory))
    assert exp.leaves == {}
    assert exp.root is None
    assert exp.graph is None

    dataloader_hparams = {
        "dataset": "synthetic-digits", "root": "~/data/", "train_batch_size": 32,
        "test_batch_size": 64, "num_workers": 0, "seed": seed,
    }  # fmt: skip
    optimizer_hparams = {"lr": 0.01}
    x = exp.spawn_new_tree(
        dataset_name=dataloader_hparams["dataset"],
        model_name="tinylenet",
        optimizer_name="adam",
        dataloader_hparams=dataloader_hparams,
        optimizer_hparams=optimizer_hparams,
        seed=seed,
    )
    assert exp.root is x and exp.root.seed == seed  # known before anything runs
    assert exp.experiment_arguments["dataloader_hparams"] == dataloader_hparams
    assert exp.experiment_arguments["seed"] == seed
    assert x.experiment_object is exp

    # --- recipes: the seed comes from the root when not given --------------------------
    a = TrainRecipe(nb_epochs=3)(x)
    b = TrainRecipe(nb_epochs=3)(PruneRecipe(schema=PRUNING_SCHEMA)(x))
    assert a.recipe.seed == seed and b.parent.recipe.seed == seed
    assert set(exp.leaves) == {a.sha(), b.sha()}
    assert a.sha() != b.sha()
    exp.run(progress=False)

    # --- analysis, as after restarting the notebook -------------------------------------
    exp = dg.Experiment.restore(directory=directory, state_class=TutorialState)
    root = exp.root
    assert isinstance(root, TutorialState) and root.sha() == x.sha()
    assert root.seed == seed and root.parent_sha is None and root.slim_loaded
    assert root.experiment_object is exp and root.root is root
    assert root.path.startswith(exp.directory) and os.path.exists(root.path)
    try:
        _ = root.model
    except DeflatedStateError as exc:
        assert "lazy_load" in str(exc)
    else:
        raise AssertionError("a slim root must not pretend to hold its model")
    with root.lazy_load():
        assert root.init_saw == (None, None)  # the state's own __init__ ran when the root was built
        assert isinstance(root.model, TinyLeNet) and not root.slim_loaded
        untrained = eval_model(root.model, root.test_dataloader)
    assert root.slim_loaded

    # a new branch from the stored root, tagged; tags label states, they never change identity
    with exp.tag("train1epoch"):
        c = TrainRecipe(nb_epochs=1, seed=seed)(exp.root.to_promise())
    assert c.parent is exp.root.to_promise()
    exp.run(progress=False)
    exp = dg.Experiment.restore(directory=directory, state_class=TutorialState)
    tagged = exp.graph.nodes.filter("train*epoch")
    assert [n.sha() for n in tagged] == [c.sha()]
    assert exp.graph.node(c.sha()).parent_sha == x.sha()

    # leaves through edge_map, states through node_map, one at a time in memory
    leaves = [node for node, children in exp.graph.edge_map.items() if not children]
    assert set(leaves) == {a.sha(), b.sha(), c.sha()}
    assert set(exp.graph.node_map) == {x.sha(), a.sha(), b.sha(), b.parent.sha(), c.sha()}
    accuracy = {}
    for node, state in exp.graph.node_map.items():
        if node in leaves:
            with state.lazy_load():
                accuracy[node] = eval_model(state.model, state.test_dataloader)
            assert state.slim_loaded
    assert accuracy[a.sha()] > untrained and accuracy[a.sha()] >= 0.8, (untrained, accuracy)

    # the same through a Function, run in-graph, its result recorded on each state
    evaluate_acc = dg.Function(lambda s: eval_model(s.model, s.test_dataloader))
    for node, state in exp.graph.node_map.items():
        if node in leaves:
            evaluate_acc(state.to_promise())
    exp.run(progress=False)
    recorded = {sha: exp.graph.node(sha).results["<lambda>"] for sha in leaves}
    assert recorded == accuracy

    # pruning really pruned: half of each listed weight tensor is masked in b's model
    with exp.graph.node(b.sha()).lazy_load() as pruned:
        mask = dict(pruned.model.named_buffers())["conv1.weight_mask"]
        assert mask.sum().item() == mask.numel() // 2

    # the rest of the notebook's analysis cells
    assert type(exp.graph) is dg.StaticExperimentTree and isinstance(exp.graph.nodes, dg.NodeSet)
    assert exp.graph.root.sha() == x.sha() and exp.graph.node(x.sha()) is exp.graph.root
    assert {n.sha() for n in exp.graph.nodes_at_distance(1)} == {a.sha(), c.sha(), b.parent.sha()}
    s = exp.graph.nodes[0]
    assert s.slim_loaded
    s.restore()
    assert not s.slim_loaded
    assert s.deflate() and s.slim_loaded
    seen = [state.slim_loaded for state in exp.graph.nodes.iterator]
    assert seen == [False] * len(exp.graph) and all(n.slim_loaded for n in exp.graph.nodes)
    return {"untrained": untrained, "accuracy": accuracy, "a": a.sha(), "b": b.sha(), "c": c.sha()}


def test_reference_tutorial_in_process(tmp_path):
    figures = run_tutorial(str(tmp_path / "example"))
    # The same definitions give the same states, and seeded training the same model, anywhere.
    again = run_tutorial(str(tmp_path / "again"))
    assert (again["a"], again["b"], again["c"]) == (figures["a"], figures["b"], figures["c"])
    assert again["accuracy"] == figures["accuracy"]


def test_reference_tutorial_as_a_script_with_main_classes(tmp_path):
    env = dict(os.environ, DAGGER_PROGRESS="0")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), str(tmp_path / "example")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "tutorial ok: classes from __main__"
    exp = dg.Experiment.restore(str(tmp_path / "example"))  # browse without the classes: slim JSON only
    assert len(exp.graph) == 5 and exp.graph.root.seed == 123


# ---- the reference API, piece by piece -------------------------------------------------------


class Counter(dg.ExperimentState):
    PROPERTIES = ["seed"]

    def initialize_state(self, **kwargs):
        self.count = 0
        self.seen_experiment = self.experiment_object


class Add(dg.Recipe):
    PROPERTIES = ["n"]

    def run(self, state):
        state.count += self.n
        state.seen_experiment = state.experiment_object
        return state


class KeepsExperiment(dg.Recipe):
    """The notebook's pattern: the recipe keeps the experiment it was applied in."""

    PROPERTIES = ["n", "seed"]

    def __call__(self, experiment_state):
        self.experiment_object = experiment_state.experiment_object
        self.seed = self.experiment_object.root.seed
        return super().__call__(experiment_state)

    def run(self, state):
        state.count += self.n + self.seed
        state.worker_saw = self.experiment_object.directory
        return state


@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_recipe_holding_its_experiment_runs_under_any_scheduler(exp_dir, scheduler):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    root = exp.spawn_new_tree(seed=5)
    a, b = KeepsExperiment(n=1)(root), KeepsExperiment(n=2)(root)
    exp.run(scheduler=scheduler, progress=False)
    assert (a.get().count, b.get().count) == (6, 7)
    assert a.get().worker_saw == exp.directory  # an Experiment travels as its folder, reopened
    import pickle

    reopened = pickle.loads(pickle.dumps(exp))
    assert reopened is not exp and reopened.directory == exp.directory and reopened.state_class is Counter
    assert len(reopened.graph) == 3


def test_graph_is_none_until_the_folder_holds_an_experiment(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    assert exp.graph is None and exp.root is None and exp.experiment_arguments is None
    root = exp.spawn_new_tree(seed=5, extra="for initialize_state")
    assert exp.root is root and exp.experiment_arguments == {"seed": 5, "extra": "for initialize_state"}
    assert len(exp.graph) == 0  # the experiment exists, no state is stored yet
    exp.run(progress=False)
    assert exp.root.sha() == root.sha() and isinstance(exp.root, Counter)
    assert dg.Experiment.restore(exp_dir).experiment_arguments == {"seed": 5}  # stored: the PROPERTIES


def test_to_promise_grows_the_stored_tree_from_any_state(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    first = Add(n=1)(exp.spawn_new_tree(seed=5))
    exp.run(progress=False)

    again = dg.Experiment.restore(exp_dir, state_class=Counter)
    stored = again.graph.node(first.sha())
    assert stored.parent_sha == again.graph.root.sha() == stored.root.sha()
    grown = Add(n=10)(stored.to_promise())
    assert grown.parent is stored.to_promise() and set(again.leaves) == {grown.sha()}
    report = again.run(progress=False)
    assert [s.sha for s in report.computed] == [grown.sha()], report.summary()
    child = again.graph.node(grown.sha())
    assert child.parent_sha == first.sha()
    with child.lazy_load():
        assert child.count == 11
        assert child.seen_experiment is None  # a state inside run() is not attached to an Experiment
    # the root taken from the store and spawn_new_tree with the same properties are one root
    assert again.spawn_new_tree(seed=5) is again.graph.root.to_promise()


def test_a_stored_state_that_must_be_recomputed_without_its_recipe_is_a_clear_error(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    first = Add(n=1)(exp.spawn_new_tree(seed=5))
    exp.run(progress=False)
    again = dg.Experiment.restore(exp_dir, state_class=Counter)
    promise = again.graph.node(first.sha()).to_promise()
    import shutil

    shutil.rmtree(exp_dir)  # the stored state is gone: it would have to be computed again
    fresh = dg.Experiment(exp_dir, state_class=Counter)
    fresh._promises, fresh._root = {p.sha(): p for p in (promise, promise.parent)}, promise.parent
    for p in fresh._promises.values():
        p._experiment = fresh
    with pytest.raises(DefinitionError, match=r"taken from the store .*to_promise"):
        fresh.run(progress=False)


def test_a_promise_says_what_it_cannot_know(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    child = Add(n=1)(exp.spawn_new_tree(seed=5))
    assert child.seed == 5 and child.experiment_object is exp
    with pytest.raises(AttributeError, match=r"not computed yet.*\.get\(\)"):
        _ = child.count


def test_nodes_iterator_deflates_even_when_the_loop_stops_early(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Counter)
    Add(n=2)(Add(n=1)(exp.spawn_new_tree(seed=5)))
    exp.run(progress=False)
    graph = dg.Experiment.restore(exp_dir, state_class=Counter).graph
    for state in graph.nodes.iterator:
        assert state.count == 0 and not state.slim_loaded
        break
    assert all(n.slim_loaded for n in graph.nodes)
    counts = [s.count for s in graph.nodes.iterator]
    assert counts == [0, 1, 3]
    assert graph.edge_map == {n.sha(): [c.sha() for c in n.children] for n in graph.nodes}
    assert list(graph.node_map) == [n.sha() for n in graph.nodes]


if __name__ == "__main__":
    run_tutorial(sys.argv[1])
    assert TutorialState.__module__ == "__main__"
    print("tutorial ok: classes from __main__")
