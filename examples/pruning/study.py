"""The paper's pruning study, for real: iterative magnitude pruning and lottery-ticket rewinding.

A small MLP learns scikit-learn's bundled digits (8x8 images, 10 classes; no
download). As in the paper's Listing 2, two learning rates (0.01 and 0.1) each
grow a branch of the tree:

    root (random init) ── train ── prune ── retrain ── prune ── retrain ── prune ── retrain
                                                                              └── rewind to init ── retrain

Each round prunes a fraction of the weights still alive in every Linear layer
(``torch.nn.utils.prune``), so rounds compound: 50% three times leaves 12.5%.
The rewound branch keeps the last masks but resets the surviving weights to
their values at initialisation (the root), then trains again: the "winning
ticket" of the lottery-ticket hypothesis. That is what a tree of model states
is for: the root's weights are one ``restore()`` away from any descendant.

    python examples/pruning/study.py [--out DIR] [--quick] [--scheduler threads]

The first run trains everything (seconds); run it again and every state is
served from the store. Results are printed as a table; the tree is drawn to
DIR/tree.svg and DIR/tree.png, and its interactive explorer written to
DIR/explorer.html (``dagger ui DIR`` serves the same page live).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import dagger as dg

LEARNING_RATES = (0.01, 0.1)
ROUNDS = 3
BATCH_SIZE = 64
MOMENTUM = 0.9

#: Study sizes: the full study (the README's demo) and a reduced one for tests.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"width": 128, "train_epochs": 20, "retrain_epochs": 8, "pruning_fraction": 0.5},
    "quick": {"width": 24, "train_epochs": 2, "retrain_epochs": 1, "pruning_fraction": 0.5},
}

TECHNIQUES = {"lowest_magnitude": prune.l1_unstructured, "random": prune.random_unstructured}


# ---- the model ---------------------------------------------------------------------------


def make_mlp(width: int) -> nn.Sequential:
    """64 pixels -> width -> width -> 10 classes."""
    return nn.Sequential(
        nn.Linear(64, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, 10),
    )


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's Linear layers with their names (``"0"``, ``"2"``, ...): the layers we prune."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def effective_weight(layer: nn.Linear) -> torch.Tensor:
    """The weight the layer computes with: ``weight_orig * weight_mask`` once pruned."""
    if hasattr(layer, "weight_mask"):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


def sparsity(model: nn.Module) -> float:
    """The fraction of zero weights over the model's Linear layers."""
    zeros = total = 0
    for _, layer in linear_layers(model):
        w = effective_weight(layer)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total


# ---- the experiment's definitions ----------------------------------------------------------


class State(dg.ExperimentState):
    """A model, its optimizer and its data at one point of the study."""

    PROPERTIES = ["dataset_name", "model_name", "width", "split_seed"]
    NONHASHED_ATTRIBUTES = [
        "train_x",
        "train_y",
        "eval_x",
        "eval_y",
        "model",
        "optimizer",
        "initial_weights",
    ]

    def initialize_state(self, **kwargs: Any) -> None:
        from sklearn.datasets import load_digits

        if self.dataset_name != "digits" or self.model_name != "mlp":
            raise ValueError("this study knows dataset_name='digits' and model_name='mlp'")
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32)
        y = torch.tensor(y, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        n_eval = len(x) // 4
        self.eval_x, self.eval_y = x[order[:n_eval]], y[order[:n_eval]]
        self.train_x, self.train_y = x[order[n_eval:]], y[order[n_eval:]]
        torch.manual_seed(self.dagger_seed)  # the initial weights follow from the root's hash
        self.model = make_mlp(self.width)
        # One optimizer for the whole lineage: it holds the model's parameters, and the
        # store keeps that link (and its momentum) from state to state.
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.0, momentum=MOMENTUM)
        self.initial_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}


class TrainRecipe(dg.Recipe):
    """Train for ``nb_epochs`` epochs at learning rate ``lr`` (SGD with momentum, mini-batches)."""

    PROPERTIES = ["nb_epochs", "lr"]

    def run(self, state: State) -> State:
        model, opt = state.model, state.optimizer
        for group in opt.param_groups:
            group["lr"] = self.lr
        shuffle = torch.Generator().manual_seed(state.dagger_seed)
        n = len(state.train_x)
        model.train()
        for _ in range(self.nb_epochs):
            order = torch.randperm(n, generator=shuffle)
            for i in range(0, n, BATCH_SIZE):
                idx = order[i : i + BATCH_SIZE]
                loss = F.cross_entropy(model(state.train_x[idx]), state.train_y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return state


class PruneRecipe(dg.Recipe):
    """Prune ``pruning_fraction`` of the weights still alive in every Linear layer.

    ``lowest_magnitude`` removes the smallest weights (L1 unstructured),
    ``random`` removes weights at random. Masks accumulate, so repeated rounds
    compound: after k rounds a fraction ``1 - (1 - f)**k`` is gone.
    """

    PROPERTIES = ["pruning_technique", "pruning_fraction"]

    def __init__(self, **properties: Any) -> None:
        super().__init__(**properties)
        technique = properties.get("pruning_technique")
        if technique is not None and technique not in TECHNIQUES:
            raise ValueError(f"pruning_technique must be one of {sorted(TECHNIQUES)}, got {technique!r}")

    def run(self, state: State) -> State:
        method = TECHNIQUES[self.pruning_technique]
        for _, layer in linear_layers(state.model):
            method(layer, name="weight", amount=self.pruning_fraction)
        return state


class ResetRecipe(dg.Recipe):
    """Rewind the surviving weights (and biases) to the root's initial values; keep the masks.

    The optimizer's momentum is cleared too, so retraining starts as the
    original training did, on the pruned architecture.
    """

    PROPERTIES: list[str] = []

    def run(self, state: State) -> State:
        init = state.initial_weights
        with torch.no_grad():
            for name, layer in linear_layers(state.model):
                if hasattr(layer, "weight_mask"):
                    layer.weight_orig.copy_(init[f"{name}.weight"])
                    layer.weight = layer.weight_orig * layer.weight_mask  # what the pruning hook computes
                else:
                    layer.weight.copy_(init[f"{name}.weight"])
                layer.bias.copy_(init[f"{name}.bias"])
        state.optimizer.state.clear()
        return state


@dg.Function
def evaluate(state: State) -> dict[str, float]:
    """Accuracy on the held-out quarter of the digits, and the model's sparsity."""
    model = state.model
    model.eval()
    with torch.no_grad():
        predicted = model(state.eval_x).argmax(dim=1)
    accuracy = float((predicted == state.eval_y).float().mean())
    return {"accuracy": round(accuracy, 4), "sparsity": round(sparsity(model), 4)}


# ---- the tree ------------------------------------------------------------------------------


def define(exp: dg.Experiment, size: str = "full") -> dg.ExperimentStatePromise:
    """Define the study's tree in ``exp`` (lazily; nothing runs) and return its root."""
    cfg = SIZES[size]
    root = exp.spawn_new_tree(dataset_name="digits", model_name="mlp", width=cfg["width"], split_seed=0)
    evaluate(root)
    prune_step = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=cfg["pruning_fraction"])
    for lr in LEARNING_RATES:
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=cfg["train_epochs"], lr=lr)(root)
            evaluate(s)
            with exp.tag("pruned"):
                for k in range(1, ROUNDS + 1):
                    with exp.tag(f"prune:{k}"):
                        pruned = prune_step(s)
                        evaluate(pruned)
                        with exp.tag("retrained"):
                            s = TrainRecipe(nb_epochs=cfg["retrain_epochs"], lr=lr)(pruned)
                            evaluate(s)
                with exp.tag("rewound"):  # the last masks, the initial weights, the full training again
                    rewound = ResetRecipe()(pruned)
                    evaluate(rewound)
                    with exp.tag("retrained"):
                        evaluate(TrainRecipe(nb_epochs=cfg["train_epochs"], lr=lr)(rewound))
    return root


def results_table(exp: dg.Experiment) -> str:
    """The stored tree as a text table, depth first: state, recipe, tags, sparsity, accuracy."""
    graph = exp.graph
    rows = []

    def walk(node: dg.ExperimentState, indent: int) -> None:
        recipe = node.recipe
        what = _describe(recipe)
        res = node.results.get("evaluate") or {}
        rows.append(
            (
                node.sha()[:8],
                "  " * indent + what,
                ", ".join(node.tags),
                _percent(res.get("sparsity")),
                _percent(res.get("accuracy")),
            )
        )
        for child in node.children:
            walk(child, indent + 1 if len(node.children) > 1 or recipe is None else indent)

    if graph.root is not None:
        walk(graph.root, 0)
    header = ("state", "recipe", "tags", "sparsity", "accuracy")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells = [row[i].ljust(widths[i]) if i < 3 else row[i].rjust(widths[i]) for i in range(len(row))]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _describe(recipe: dict[str, Any] | None) -> str:
    """A short reading of a recipe's slim metadata, e.g. ``train 20 epochs, lr=0.1``."""
    if recipe is None:
        return "root: initial weights"
    p = recipe.get("properties") or {}
    name = recipe.get("name")
    if name == "TrainRecipe":
        return f"train {p.get('nb_epochs')} epochs, lr={p.get('lr')}"
    if name == "PruneRecipe":
        return f"prune {p.get('pruning_fraction', 0):.0%} {p.get('pruning_technique')}"
    if name == "ResetRecipe":
        return "rewind to initial weights"
    return f"{name}({', '.join(f'{k}={v}' for k, v in p.items())})"


def plot_curve(exp: dg.Experiment, path: str | Path) -> Path | None:
    """Draw the pruning curve (accuracy against sparsity, per learning rate) to ``path``.

    Built from ``exp.graph.nodes.to_records()``, i.e. slim metadata only. Returns
    the path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = exp.graph.nodes.to_records()
    for row in rows:
        row["tagset"] = set(row["tags"].split(", ")) if row["tags"] else set()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=150)
    colours = dict(zip(LEARNING_RATES, ("#1f77b4", "#d62728"), strict=True))
    for lr in LEARNING_RATES:
        mine = sorted((r for r in rows if f"lr:{lr}" in r["tagset"]), key=lambda r: r["depth"])
        dense = [r for r in mine if "pruned" not in r["tagset"]]
        retrained = dense + [r for r in mine if "retrained" in r["tagset"] and "rewound" not in r["tagset"]]
        pruned = [r for r in mine if r["recipe"] == "PruneRecipe"]
        rewound = [r for r in mine if {"rewound", "retrained"} <= r["tagset"]]
        c = colours[lr]
        ax.plot(*_xy(retrained), "-o", color=c, label=f"lr={lr}: pruned, then retrained")
        ax.plot(*_xy(pruned), "x", color=c, alpha=0.7, label=f"lr={lr}: just pruned, before retraining")
        ax.plot(*_xy(rewound), "*", color=c, markersize=13, label=f"lr={lr}: rewound to init, retrained")
    ax.set_xlabel("sparsity (% of weights pruned)")
    ax.set_ylabel("accuracy on held-out digits (%)")
    ax.set_title("Iterative magnitude pruning of an MLP on digits")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _xy(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return [100 * r["sparsity"] for r in rows], [100 * r["accuracy"] for r in rows]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(
    out: str | Path = "runs/pruning",
    quick: bool = False,
    scheduler: str = "single-threaded",
    progress: bool | None = None,
    verbose: bool = True,
) -> tuple[dg.Experiment, dg.RunReport]:
    """Run the study into ``out`` (computing only what is not stored yet) and draw its tree."""
    torch.set_num_threads(1)  # small model: one thread is fastest, and results match on every machine
    out = Path(out)
    exp = dg.Experiment(str(out), state_class=State)
    define(exp, "quick" if quick else "full")
    report = exp.run(scheduler=scheduler, progress=progress)
    exp.graph.draw(str(out / "tree.svg"), result="accuracy")
    exp.graph.draw(str(out / "tree.png"), result="accuracy")
    curve = plot_curve(exp, out / "curve.png")
    exp.graph.explore().save(out / "explorer.html")  # the interactive explorer, one self-contained file
    if verbose:
        print(results_table(exp))
        print()
        print(
            f"{len(report.states)} states: {len(report.computed)} computed, {len(report.cached)} served from the store "
            f"({report.duration:.1f}s)."
        )
        print(
            f"Tree drawn to {out / 'tree.svg'} and {out / 'tree.png'}"
            + (f"; pruning curve to {curve}." if curve else ".")
        )
        print(f"Explore it in the browser: open {out / 'explorer.html'}, or serve it live with `dagger ui {out}`.")
        if report.computed:
            print("Run it again: every state will be a cache hit.")
    return exp, report


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help="experiment folder (default runs/pruning, or runs/pruning-quick)")
    parser.add_argument("--quick", action="store_true", help="a reduced study that runs in seconds (for tests)")
    parser.add_argument(
        "--scheduler",
        default="single-threaded",
        help="single-threaded (default), threads, processes, or a Dask address",
    )
    return parser.parse_args(argv)


def cli(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = args.out or ("runs/pruning-quick" if args.quick else "runs/pruning")
    start = time.time()
    main(out, quick=args.quick, scheduler=args.scheduler)
    print(f"Done in {time.time() - start:.1f}s.")
    return 0


if __name__ == "__main__":
    # Run the definitions under their import name (``study``), not ``__main__``: a state's
    # hash includes its classes' import paths, so the script, the tests and a notebook
    # that imports this module all share one cache.
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import study

    sys.exit(study.cli())
