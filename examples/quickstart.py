"""dagger in one page: the paper's Listing 2 on a tiny numpy model.

Two learning rates; each branch is trained, evaluated, pruned and evaluated
again. Run it twice: the second run serves every state from the store.

    python examples/quickstart.py [directory]
"""

from __future__ import annotations

import sys

import numpy as np

import dagger as dg


def get_data(name: str, n: int = 600, features: int = 16):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, features))
    true_w = rng.normal(size=features) * (rng.random(features) < 0.5)
    y = (x @ true_w > 0).astype(np.float64)
    split = int(n * 0.75)
    return (x[:split], y[:split]), (x[split:], y[split:])


class State(dg.ExperimentState):
    PROPERTIES = ["dataset_name", "model_name"]
    NONHASHED_ATTRIBUTES = ["train_data", "eval_data", "model"]

    def initialize_state(self, **kwargs):
        self.train_data, self.eval_data = get_data(self.dataset_name)
        self.model = {"w": np.zeros(self.train_data[0].shape[1]), "mask": np.ones(self.train_data[0].shape[1])}


class TrainRecipe(dg.Recipe):
    PROPERTIES = ["nb_epochs", "lr"]

    def run(self, state):
        x, y = state.train_data
        m = state.model
        for _ in range(self.nb_epochs):
            p = 1.0 / (1.0 + np.exp(-(x @ (m["w"] * m["mask"]))))
            m["w"] -= self.lr * (x.T @ (p - y)) / len(y) * m["mask"]
        return state


class PruneRecipe(dg.Recipe):
    PROPERTIES = ["pruning_technique", "pruning_fraction"]

    def run(self, state):
        m = state.model
        alive = np.flatnonzero(m["mask"])
        k = int(round(len(alive) * self.pruning_fraction))
        if self.pruning_technique == "lowest_magnitude":
            drop = alive[np.argsort(np.abs(m["w"][alive]))[:k]]
        else:
            drop = state.rng().choice(alive, size=k, replace=False)
        m["mask"][drop] = 0.0
        m["w"][drop] = 0.0
        return state


@dg.Function
def evaluate(state):
    x, y = state.eval_data
    m = state.model
    accuracy = float((((x @ (m["w"] * m["mask"])) > 0) == y).mean())
    return {"accuracy": round(accuracy, 4), "sparsity": float(1 - m["mask"].mean())}


def main(directory: str = "runs/quickstart") -> dg.RunReport:
    exp = dg.Experiment(directory, state_class=State)
    root = exp.spawn_new_tree(dataset_name="synthetic-16", model_name="logistic")
    for lr in [0.01, 0.1]:
        s = root
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=200, lr=lr)(s)
            evaluate(s)
            with exp.tag("pruned"):
                s = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(s)
                evaluate(s)
    report = exp.run()
    print(exp.graph.to_text())
    print()
    if report.computed:
        print(f"{report.summary()}. Run again: every state will be served from the store.")
    else:
        print(f"{report.summary()}: no recipe ran, every state was a cache hit.")
    return report


if __name__ == "__main__":
    main(*sys.argv[1:])
