"""Browse an experiment: ``dagger show``, ``dagger ls`` and ``dagger inspect``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from dagger.cli._common import (
    OK,
    PROBLEM,
    AnyTag,
    Dir,
    Hash,
    ResultOpt,
    Tags,
    _command,
    _console,
    _node,
    _open,
    _print_lines,
    _print_rows,
    app,
)
from dagger.cli._format import _call, _flat, _flatten, _fmt, _label, _props, _recipe_name, _size, _status, _when
from dagger.errors import CorruptRecordError
from dagger.experiment import Experiment
from dagger.graph import INDENT_LEVELS
from dagger.state import ExperimentState
from dagger.store.records import FIRST_REV, blob_key, state_key


@app.command(epilog="Example: dagger show runs/prune --result accuracy")
@_command
def show(directory: Dir, result: ResultOpt = None) -> int:
    """Print the experiment tree: recipe, properties, short hash, tags, results and status of each state."""
    exp = _open(directory)
    graph = exp.graph
    console = _console()
    if len(graph) == 0:
        console.print(f"{escape(exp.directory)}: no states yet (define a tree and call exp.run())")
        return OK
    roots = [n for n in graph if graph._parents.get(n.sha()) is None]
    lines: list[str] = []  # rich markup, one line per state
    shown = 0
    # Depth first without recursion. Indentation stops growing at INDENT_LEVELS: a deeper state
    # starts again at the margin after a line that says so, so a long chain prints in linear time.
    stack = [(n, "", True, True, 0) for n in reversed(roots)]
    while stack:
        node, prefix, last, top, level = stack.pop()
        shown += 1
        if level >= INDENT_LEVELS:
            depth = node._meta().get("depth", "?")
            lines.append(f"[dim]{prefix}{'└── ' if last else '├── '}… continued below at depth {depth}[/dim]")
            prefix, top, level = "", True, 0
        branch = "" if top else ("└── " if last else "├── ")
        lines.append(f"[dim]{prefix}{branch}[/dim]{_label(node, result)}")
        kids = graph.children_of(node.sha())
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        stack.extend(
            (kid, child_prefix, i == len(kids) - 1, False, level + 1) for i, kid in reversed(list(enumerate(kids)))
        )
    _print_lines(console, lines)
    problems = graph.problems()
    if shown < len(graph):  # states under no root (a cycle, a dangling parent): listed, never dropped
        console.print(f"[red]broken lineage[/red]: {len(graph) - shown} states are under no root (run `dagger verify`)")
        for node in graph:
            if node.sha() in problems:
                console.print(f"  {_label(node, result)}  [red]{escape(problems[node.sha()])}[/red]")
    failed = [rec for rec in _failures(exp) if str(rec.get("sha")) not in graph._nodes]  # stored since: another runner
    for rec in failed:
        out = f"[red]failed[/red] [dim]{str(rec.get('sha', '?'))[:10]}[/dim] {escape(str(rec.get('label', '?')))}"
        console.print(out + f": {escape(str(rec.get('error', '')))}")
    note = f", {len(failed)} failed at their last attempt (not stored; the next run retries them)" if failed else ""
    console.print(f"[dim]{len(graph)} states in {escape(exp.directory)}{note}[/dim]")
    return PROBLEM if shown < len(graph) else OK


def _failures(exp: Experiment) -> list[dict[str, Any]]:
    """The records of states whose last computation failed (``failed/<sha>.json``), oldest first."""
    out = []
    try:
        keys = exp.store.list("failed")
    except OSError:
        return []
    for key in keys:
        try:
            rec = json.loads(exp.store.get(key))
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return sorted(out, key=lambda r: r.get("start") or 0)


@app.command(
    "ls",
    epilog="Example: dagger ls runs/prune --tag pruned --tag '!lr:0.01'   (quote patterns with ! or *)",
)
@_command
def ls_(
    directory: Dir,
    tag: Tags = None,
    any_: AnyTag = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print full hashes only, one a line.")] = False,
) -> int:
    """List the states whose tags match the patterns (all of them, or any with --any)."""
    exp = _open(directory)
    chosen = exp.graph.nodes.filter(*(tag or []), any=any_)
    if quiet:
        for n in chosen:
            sys.stdout.write(n.sha() + "\n")
        return OK
    console = _console()
    cells = []
    for n in chosen:
        meta = n._meta()
        props = ", ".join(f"{k}={_fmt(v)}" for k, v in _props(meta).items())
        cells.append([n.sha()[:10], _recipe_name(meta), props, ", ".join(meta.get("tags", [])), _status(meta)])
    _print_rows(console, ["hash", "recipe", "properties", "tags", "status"], cells, [False] * 5)
    console.print(f"[dim]{len(chosen)} of {len(exp.graph)} states[/dim]")
    return OK


@app.command(epilog="Example: dagger inspect runs/prune 583dfc4e   (or --json for the raw metadata)")
@_command
def inspect(
    directory: Dir,
    sha: Hash,
    as_json: Annotated[bool, typer.Option("--json", help="Print the state's metadata as JSON.")] = False,
) -> int:
    """Show one state: properties, recipe, lineage to the root, results, timings and stored files."""
    exp = _open(directory)
    node = _node(exp.graph, sha)
    meta = node._meta()
    files = _stored_files(exp, node)
    if as_json:
        body = dict(meta)
        body["stored"] = files
        sys.stdout.write(json.dumps(body, indent=2, default=str) + "\n")
        return OK
    console = _console()
    out = console.print
    out(f"[bold]state[/bold]       {node.sha()}")
    out(f"[bold]status[/bold]      {escape(_status(meta))}")
    out(f"[bold]recipe[/bold]      {escape(_call(meta))}")
    recipe = meta.get("recipe")
    if recipe:
        out(
            f"[bold]class[/bold]       {escape(str(recipe.get('class', '?')))}  version {escape(_fmt(recipe.get('version')))}"
        )
        if recipe.get("source"):
            out(f"[bold]source[/bold]      {escape(str(recipe['source']))}  (hash of the recipe's code)")
    out(f"[bold]tags[/bold]        {escape(', '.join(meta.get('tags', [])) or '-')}")
    if meta.get("explain"):
        out(f"[bold]explain[/bold]     {escape(_fmt(meta['explain']))}  (why it was computed)")
    out(f"[bold]state class[/bold] {escape(str(meta.get('state_class', '?')))}")
    _section(out, "properties", meta.get("properties") or {})
    out("[bold]lineage[/bold] (root first)")
    broken = exp.graph.problems().get(node.sha())
    if broken is not None:
        out(f"  [red]broken: {escape(broken)}[/red] (run `dagger verify`)")
    steps = []
    for step in () if broken is not None else node.lineage():
        m = step._meta()
        tags = f"  [magenta]{escape('[' + ', '.join(m.get('tags', [])) + ']')}[/magenta]" if m.get("tags") else ""
        steps.append(f"  {m.get('depth', 0):>2}  [dim]{step.sha()[:10]}[/dim]  {escape(_call(m))}{tags}")
    _print_lines(console, steps)  # (a lineage may be 10,000 steps long)
    kids = node.children
    if kids:
        out("[bold]children[/bold]")
        for kid in kids:
            out(f"      [dim]{kid.sha()[:10]}[/dim]  {escape(_call(kid._meta()))}")
    _section(out, "results", _flat(meta.get("results") or {}))
    run = meta.get("run") or {}
    out("[bold]timings[/bold]")
    out(f"  created   {_when(meta.get('created'))}")
    if run:
        out(f"  started   {_when(run.get('start'))}")
        out(f"  finished  {_when(run.get('end'))}")
        dur = run.get("duration")
        out(f"  duration  {dur:.3f} s" if isinstance(dur, (int, float)) else "  duration  -")
        out(f"  worker    {escape(str(run.get('worker', '-')))}")
    out("[bold]stored files[/bold]")
    where = "" if files["pickle"]["where"] == "own file" else f"  ({files['pickle']['where']})"
    out(f"  {escape(files['pickle']['key'])}  {_size(files['pickle']['bytes'])}{escape(where)}")
    blobs = files["blobs"]
    if blobs:
        shared = sum(1 for b in blobs if b["shared_with_parent"])
        out(
            f"  {len(blobs)} blobs, {_size(sum(b['bytes'] for b in blobs))} "
            f"({shared} shared with the parent, stored once)"
        )
        for b in blobs:
            note = "  shared with parent" if b["shared_with_parent"] else ""
            missing = "  MISSING" if not b["present"] else ""
            out(f"    {escape(b['key'])}  {_size(b['bytes'])}{note}{missing}")
    new = (files["pickle"]["bytes"] or 0) + sum(b["bytes"] for b in blobs if not b["shared_with_parent"])
    out(f"  total {_size(files['total_bytes'])} ({_size(new)} not shared with the parent)")
    env = _flatten(meta.get("environment"))
    if env:
        _section(out, "environment (where it differs from the experiment's)", env)
    elif isinstance((exp.info or {}).get("environment"), dict):
        base = (exp.info or {})["environment"]
        out(f"[bold]environment[/bold]  the experiment's (python {escape(_fmt(base.get('python')))})")
    return PROBLEM if broken is not None else OK


def _section(out: Callable[..., None], title: str, values: dict[str, Any]) -> None:
    out(f"[bold]{escape(title)}[/bold]" + ("" if values else "  -"))
    width = max((len(str(k)) for k in values), default=0)
    for k, v in values.items():
        out(f"  {escape(str(k)).ljust(width)}  {escape(_fmt(v))}" if k != "" else f"  {escape(_fmt(v))}")


def _stored_files(exp: Experiment, node: ExperimentState) -> dict[str, Any]:
    """The state's pickle and blobs with their sizes (files are sized, not read; a commit record that may carry the pickle is read)."""
    meta = node._meta()
    store = exp.store
    key = state_key(node.sha())
    where = "own file"
    try:
        pickle_bytes: int | None = store.size(key)
    except (FileNotFoundError, OSError):
        pickle_bytes = None
        try:  # a small pickle travels in the state's first commit record
            carried = exp.records.carries_pickle(node.sha())
        except (OSError, CorruptRecordError):
            carried = False
        if carried:
            key, where = exp.records.record_key(node.sha(), FIRST_REV), "carried by the commit record"
            recorded = meta.get("pickle_bytes")
            pickle_bytes = recorded if isinstance(recorded, int) else None
    parent = exp.graph._nodes.get(str(meta.get("parent")))  # (None for a root, or a dangling parent)
    parent_blobs = {str(b[0]) for b in (parent._meta().get("blobs") or [])} if parent is not None else set()
    blobs: list[dict[str, Any]] = []
    seen: set[str] = set()
    for name, size in meta.get("blobs") or []:
        name = str(name)
        if name in seen:
            continue
        seen.add(name)
        bkey = blob_key(name)
        blobs.append(
            {
                "key": bkey,
                "bytes": int(size),
                "present": store.exists(bkey),
                "shared_with_parent": name in parent_blobs,
            }
        )
    total = (pickle_bytes or 0) + sum(b["bytes"] for b in blobs)
    pickle = {"key": key, "bytes": pickle_bytes, "where": where}
    return {"pickle": pickle, "blobs": blobs, "total_bytes": total}
