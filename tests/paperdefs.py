"""The paper's Listing 1, unchanged, on a tiny numpy model (importable by worker processes)."""

import numpy as np

import dagger as dg

CALLS_FILE = None  # set by tests that count recipe calls across processes


def _count(name):
    if CALLS_FILE:
        with open(CALLS_FILE, "a") as f:
            f.write(name + "\n")


def get_data(dataset_name):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float64)
    return (x[:90], y[:90]), (x[90:], y[90:])


def get_model(model_name):
    return {"w": np.zeros(6)}


def train_model(model, data, nb_epochs, lr):
    _count("train")
    x, y = data
    for _ in range(nb_epochs):
        p = 1 / (1 + np.exp(-x @ model["w"]))
        model["w"] -= lr * x.T @ (p - y) / len(y)


def prune_model(model, technique, fraction):
    _count("prune")
    w = model["w"]
    w[np.argsort(np.abs(w))[: int(len(w) * fraction)]] = 0.0


def eval_model(model, data):
    x, y = data
    return float(((x @ model["w"] > 0) == y).mean())


class State(dg.ExperimentState):
    PROPERTIES = ["dataset_name", "model_name"]
    NONHASHED_ATTRIBUTES = ["train_data", "eval_data", "model"]

    def initialize_state(self, **kwargs):
        _count("init")
        self.train_data, self.eval_data = get_data(self.dataset_name)
        self.model = get_model(self.model_name)


class TrainRecipe(dg.Recipe):
    PROPERTIES = ["nb_epochs", "lr"]

    def run(self, state):
        train_model(state.model, state.train_data, self.nb_epochs, self.lr)
        return state


class PruneRecipe(dg.Recipe):
    PROPERTIES = ["pruning_technique", "pruning_fraction"]

    def run(self, state):
        prune_model(state.model, self.pruning_technique, self.pruning_fraction)
        return state


@dg.Function
def eval_fn(state):
    eval_acc = eval_model(state.model, state.eval_data)
    print(f"Experiment: {state.tags}, Accuracy: {eval_acc}")
    return {"accuracy": eval_acc}


def listing2(directory, scheduler="single-threaded"):
    """The paper's Listing 2 (with a run call), returning the experiment and its report."""
    exp = dg.Experiment(directory, state_class=State)
    root_state = exp.spawn_new_tree(dataset_name="cifar-10", model_name="vgg-11")
    for lr in [0.01, 0.1]:
        train = TrainRecipe(nb_epochs=100, lr=lr)
        prune = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.2)
        s = root_state
        with exp.tag(f"lr:{lr}"):
            s = train(s)
            eval_fn(s)
            with exp.tag("pruned"):
                s = prune(s)
    report = exp.run(scheduler=scheduler)
    return exp, report
