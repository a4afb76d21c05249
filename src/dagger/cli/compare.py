"""Compare and tabulate states: ``dagger diff`` and ``dagger results``."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from dagger.cli._common import (
    OK,
    USAGE,
    AnyTag,
    Dir,
    Failure,
    Hash,
    Tags,
    _command,
    _console,
    _node,
    _open,
    _print_rows,
    app,
)
from dagger.cli._format import _call, _flat, _flatten, _fmt
from dagger.experiment import Experiment
from dagger.state import ExperimentState


@app.command(epilog="Example: dagger diff runs/prune 583dfc4e beeec45a")
@_command
def diff(directory: Dir, first: Hash, second: Hash) -> int:
    """Compare two states: where their lineages part, and how recipes, properties and results differ."""
    exp = _open(directory)
    a, b = _node(exp.graph, first), _node(exp.graph, second)
    console = _console()
    out = console.print
    for name, n in (("A", a), ("B", b)):
        tags = escape("[" + ", ".join(n.tags) + "]") if n.tags else ""
        out(f"{name}  [dim]{n.sha()[:10]}[/dim]  {escape(_call(n._meta()))}  [magenta]{tags}[/magenta]")
    if a.sha() == b.sha():
        out("A and B are the same state")
        return OK
    la, lb = a.lineage(), b.lineage()
    common = 0
    while common < min(len(la), len(lb)) and la[common].sha() == lb[common].sha():
        common += 1
    if common == 0:
        out("the two states share no ancestor (different trees)")
    else:
        fork = la[common - 1]
        out(
            f"lineages part after [dim]{fork.sha()[:10]}[/dim] {escape(_call(fork._meta()))} "
            f"(depth {fork._meta().get('depth', common - 1)})"
        )
        if fork.sha() == a.sha():
            out("A is an ancestor of B")
        elif fork.sha() == b.sha():
            out("B is an ancestor of A")
    cells: list[list[str]] = []
    for i in range(common, max(len(la), len(lb))):
        ma = la[i]._meta() if i < len(la) else None
        mb = lb[i]._meta() if i < len(lb) else None
        ca = _call(ma) if ma else "-"
        cb = _call(mb) if mb else "-"
        cells.append([f"step {i}", ca, cb])
    for title, da, db in (
        ("properties", a._meta().get("properties") or {}, b._meta().get("properties") or {}),
        ("tags", {"tags": ", ".join(a.tags)}, {"tags": ", ".join(b.tags)}),
        ("results", _flat(a._meta().get("results") or {}), _flat(b._meta().get("results") or {})),
        ("recipe", _recipe_facts(a), _recipe_facts(b)),
        ("environment", _environment(exp, a), _environment(exp, b)),
    ):
        for key in list(dict.fromkeys([*da, *db])):
            va, vb = da.get(key), db.get(key)
            if va == vb:
                continue
            name = key if title in ("tags", "results") else f"{title}.{key}"
            extra = ""
            if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
                extra = f"  (B-A {_fmt(vb - va)})"
            cells.append([name, _fmt(va) if key in da else "-", (_fmt(vb) if key in db else "-") + extra])
    if cells:
        out("[bold]differences[/bold]")
        _print_rows(console, ["", "A", "B"], cells, [False] * 3)
    else:
        out("no differences in recipes, properties or results")
    return OK


def _recipe_facts(node: ExperimentState) -> dict[str, Any]:
    recipe = node._meta().get("recipe") or {}
    return {k: recipe.get(k) for k in ("class", "version", "source") if recipe.get(k) is not None}


def _environment(exp: Experiment, node: ExperimentState) -> dict[str, Any]:
    """The environment a state was computed in: the experiment's, updated by the state's differences."""
    env = _flatten((exp.info or {}).get("environment"))
    env.update(_flatten(node._meta().get("environment")))
    env.pop("time", None)  # differs at every capture; never a meaningful difference
    return env


def _rows(exp: Experiment, tag: list[str] | None, any_: bool) -> tuple[list[str], list[dict[str, Any]]]:
    nodes = exp.graph.nodes.filter(*(tag or []), any=any_)
    rows = nodes.to_records()
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return columns, rows


@app.command(epilog="Example: dagger results runs/prune --csv results.csv   (--csv - writes CSV to stdout)")
@_command
def results(
    directory: Dir,
    csv_file: Annotated[
        str | None,
        typer.Option(
            "--csv", metavar="FILE", help="Write the table as CSV to this file ('-' for stdout).", show_default=False
        ),
    ] = None,
    tag: Tags = None,
    any_: AnyTag = False,
) -> int:
    """One row per state: hash, tags, recipe properties along its lineage and Function results."""
    exp = _open(directory)
    columns, rows = _rows(exp, tag, any_)
    if csv_file is not None:
        if csv_file != "-":
            _refuse_inside(exp, csv_file)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([_csv_cell(c) for c in columns])
        for row in rows:
            writer.writerow([_csv_cell(_csv_value(row.get(k))) for k in columns])
        if csv_file == "-":
            sys.stdout.write(buf.getvalue())
        else:
            with open(csv_file, "w", encoding="utf-8", newline="") as f:
                f.write(buf.getvalue())
            sys.stderr.write(f"wrote {len(rows)} rows to {csv_file}\n")
        return OK
    shown = [c for c in columns if c != "sha"]
    cells = [[_fmt(row.get(c)) for c in shown] for row in rows]
    _print_rows(_console(), shown, cells, [_numeric(rows, col) for col in shown])
    return OK


def _csv_value(value: Any) -> Any:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else value


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
_PLAIN_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text, never runs as a formula (OWASP's advice on CSV injection).

    Text that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return (or their full-width
    forms) gets a leading ``'``; numbers, and text that is a plain number such as ``-0.5``, stay as they are.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _refuse_inside(exp: Experiment, target: str) -> None:
    """Refuse to write an output file inside the experiment folder (it could replace the store's own files)."""
    if "://" in exp.directory:
        return
    folder = os.path.realpath(exp.directory)
    path = os.path.realpath(target)
    if path == folder or path.startswith(folder + os.sep):
        raise Failure(
            f"{target} is inside the experiment folder {exp.directory}: the CSV could replace the store's own files. "
            "Write it somewhere else.",
            USAGE,
        )


def _numeric(rows: list[dict[str, Any]], col: str) -> bool:
    values = [r[col] for r in rows if r.get(col) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
