"""Pictures of an experiment: ``dagger draw`` (the tree) and ``dagger plot`` (a result along each branch)."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer

from dagger.cli._common import OK, USAGE, AnyTag, Dir, Failure, ResultOpt, Tags, _command, _open, app
from dagger.cli._format import _recipe_name
from dagger.graph import StaticExperimentTree, state_row
from dagger.state import ExperimentState


@app.command(epilog="Example: dagger draw runs/prune -o tree.svg --result accuracy")
@_command
def draw(
    directory: Dir,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", metavar="FILE", help="The picture to write: .svg, .png or .pdf.", show_default=False
        ),
    ],
    result: ResultOpt = None,
    highlight: Annotated[
        list[str] | None,
        typer.Option(
            "--highlight",
            metavar="PATTERN",
            help="Thick border on states matching these tag patterns.",
            show_default=False,
        ),
    ] = None,
) -> int:
    """Draw the tree (no Graphviz needed): states coloured by status, with tags and results."""
    suffix = output.rsplit(".", 1)[-1].lower() if "." in os.path.basename(output) else ""
    if suffix not in ("svg", "png", "pdf"):
        raise Failure(f"cannot draw to {output!r}: name a .svg, .png or .pdf file", USAGE)
    exp = _open(directory)
    try:
        marked = exp.graph.nodes.filter(*highlight) if highlight else ()
        exp.graph.draw(output, format=suffix, result=result, highlight=marked)
    except ImportError as exc:  # PNG or PDF without matplotlib
        raise Failure(str(exc)) from None
    sys.stderr.write(f"wrote {output} ({len(exp.graph)} states)\n")
    return OK


@app.command(epilog="Example: dagger plot runs/prune --x sparsity --y accuracy -o plot.png")
@_command
def plot(
    directory: Dir,
    x: Annotated[
        str, typer.Option("--x", metavar="NAME", help="Result (or recipe property) on the x axis.", show_default=False)
    ],
    y: Annotated[str, typer.Option("--y", metavar="NAME", help="Result on the y axis.", show_default=False)],
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", metavar="FILE", help="The picture to write (.png, .svg or .pdf).", show_default=False
        ),
    ],
    tag: Tags = None,
    any_: AnyTag = False,
    root: Annotated[bool, typer.Option("--root", help="Include the root (before any recipe ran).")] = False,
) -> int:
    """Plot y against x along each branch (root to leaf): one line per branch, e.g. the pruning curve.

    A branch's line starts where it leaves the branches drawn before it, so shared
    states are drawn once and each fork is visible.
    """
    suffix = output.rsplit(".", 1)[-1].lower() if "." in os.path.basename(output) else ""
    if suffix not in ("png", "svg", "pdf"):
        raise Failure(f"cannot plot to {output!r}: name a .png, .svg or .pdf file", USAGE)
    exp = _open(directory)
    lines = _branches(exp.graph, x, y, tag or (), any_, root)
    if not lines:
        known = sorted({k for n in exp.graph for k in _values(n)} - {"sha", "short", "depth", "recipe", "tags"})
        raise Failure(f"no state has both {x!r} and {y!r}; values recorded: {', '.join(known) or 'none'}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise Failure("plot needs matplotlib: pip install 'dagger-experiments[plot]'") from None
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    markers = "osD^vP*X"
    for i, (label, xs, ys) in enumerate(lines):
        ax.plot(xs, ys, marker=markers[i % len(markers)], linewidth=1.5, markersize=5, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(f"{y} against {x}, one line per branch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="branch (leaf tags)", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(output, format=suffix)
    plt.close(fig)
    sys.stderr.write(f"wrote {output} ({len(lines)} branches)\n")
    return OK


def _values(node: ExperimentState) -> dict[str, Any]:
    """What a plot axis can name: flat results first, then the state's table row."""
    row = state_row(node)
    meta = node._meta()
    for fn, value in (meta.get("results") or {}).items():
        if isinstance(value, dict):
            for k, v in value.items():
                row[k] = v
                row[f"{fn}.{k}"] = v
        else:
            row[fn] = value
    return row


def _branches(
    graph: StaticExperimentTree,
    x: str,
    y: str,
    patterns: Sequence[str] = (),
    any_: bool = False,
    include_root: bool = False,
) -> list[tuple[str, list[float], list[float]]]:
    """One ``(label, xs, ys)`` per root-to-leaf path, through its states with numeric x and y.

    Leaves are taken in tree order (as ``dagger show`` lists them). A branch's
    line starts at the last point it shares with the branches before it, so a
    shared prefix is drawn once; a branch with no point of its own is left out.
    """
    keep = {n.sha() for n in graph.nodes.filter(*patterns, any=any_)} if patterns else None
    out: list[tuple[str, list[float], list[float]]] = []
    labels: dict[str, int] = {}
    drawn: set[str] = set()
    for leaf in _leaves_in_tree_order(graph):
        points: list[tuple[str, float, float]] = []
        for step in leaf.lineage():
            if (step._meta().get("parent") is None and not include_root) or (
                keep is not None and step.sha() not in keep
            ):
                continue
            v = _values(step)
            vx, vy = _lookup(v, x), _lookup(v, y)
            if _is_number(vx) and _is_number(vy):
                points.append((step.sha(), float(vx), float(vy)))
        shared = [i for i, (sha, _, _) in enumerate(points) if sha in drawn]
        start = shared[-1] if shared else 0
        if not points or start == len(points) - 1 and shared:
            continue
        points = points[start:]
        drawn.update(sha for sha, _, _ in points)
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        label = ", ".join(leaf.tags) or f"{_recipe_name(leaf._meta())} {leaf.sha()[:8]}"
        labels[label] = labels.get(label, 0) + 1
        if labels[label] > 1:
            label = f"{label} ({leaf.sha()[:8]})"
        out.append((label, xs, ys))
    return out


def _leaves_in_tree_order(graph: StaticExperimentTree) -> list[ExperimentState]:
    roots = [n for n in graph if graph._parents.get(n.sha()) is None]
    leaves: list[ExperimentState] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        kids = graph.children_of(node.sha())
        if not kids:
            leaves.append(node)
        stack.extend(reversed(kids))
    return leaves


def _lookup(values: dict[str, Any], name: str) -> Any:
    """``values[name]``, or the one value whose key ends with ``.name`` (``lr`` finds ``TrainRecipe.lr``)."""
    if name in values:
        return values[name]
    found = [k for k in values if k.endswith("." + name)]
    return values[found[-1]] if found else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
