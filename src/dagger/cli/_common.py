"""The ``dagger`` command: browse, compare, tabulate and draw a stored experiment.

Every command reads slim JSON metadata only (``Experiment.restore(dir,
slim=True)``); nothing is ever unpickled, so browsing an experiment from an
untrusted source runs none of its code. Exit codes: 0 ok, 1 a problem was
found (unknown hash, failed check), 2 a usage error (bad arguments, not an
experiment folder, text that is not a hash).

::

    dagger show runs/prune
    dagger ls runs/prune --tag pruned --tag '!lr:0.01'
    dagger inspect runs/prune 583dfc4e
    dagger results runs/prune --csv results.csv
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
except ImportError as _exc:  # pragma: no cover - depends on the environment
    raise SystemExit(
        f"the dagger command needs typer and rich ({_exc}): pip install 'dagger-experiments[cli]'"
    ) from None

from dagger.errors import (
    CorruptRecordError,
    DaggerError,
    InvalidHashError,
    NotAnExperimentError,
)
from dagger.experiment import Experiment
from dagger.graph import INDENT_LEVELS, StaticExperimentTree, state_row
from dagger.state import ExperimentState
from dagger.store.records import FIRST_REV, blob_key, meta_key, state_key

OK, PROBLEM, USAGE = 0, 1, 2


def _click_exceptions() -> Any:
    """The exceptions module of the click that typer runs on (typer 0.2x vendors its own copy)."""
    import importlib

    try:
        return importlib.import_module("typer._click.exceptions")
    except ImportError:  # typer on the click package
        return importlib.import_module("click.exceptions")


class _OneLineErrors(typer.core.TyperGroup):
    """The command group, printing a usage error as one line ``dagger: error: ...`` (exit 2), not a box."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        click = _click_exceptions()
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except click.NoArgsIsHelpError as exc:  # bare `dagger`: the help, as click prints it
            exc.show()
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            ctx = getattr(exc, "ctx", None)
            if isinstance(exc, click.UsageError) and ctx is not None:
                message += f" (see '{ctx.command_path} --help')"
            _error(message)
            sys.exit(exc.exit_code)
        except click.Abort:
            sys.stderr.write("dagger: aborted\n")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else OK)


app = typer.Typer(
    cls=_OneLineErrors,
    name="dagger",
    help="Browse, compare, tabulate and draw dagger experiments (reads metadata only; never unpickles).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


# fsspec options for every command's DIR, from `dagger --storage-option KEY=VALUE ...` (see _global_options).
_storage_options: dict[str, Any] = {}


def _parse_storage_option(text: str) -> tuple[list[str], Any]:
    """``KEY=VALUE`` as (key path, value): a dotted key nests (``client_kwargs.endpoint_url``); a value
    that parses as JSON (``true``, ``3``, ``{...}``) is that value, anything else is the string."""
    key, sep, raw = text.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path):
        raise Failure(
            f"--storage-option takes KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000), not {text!r}", USAGE
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def _global_options(
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option",
            "-O",
            metavar="KEY=VALUE",
            help="An fsspec option for opening DIR, e.g. endpoint_url=http://127.0.0.1:9000 for an S3-compatible "
            "server, or anon=true; a dotted KEY nests (client_kwargs.region_name=eu-west-1). Repeatable; "
            "give it before the command.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Browse, compare, tabulate and draw dagger experiments (reads metadata only; never unpickles)."""
    _storage_options.clear()
    for text in storage_option or []:
        try:
            path, value = _parse_storage_option(text)
        except Failure as exc:
            _error(str(exc))
            raise typer.Exit(exc.code) from None
        target = _storage_options
        for part in path[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                _error(f"--storage-option {text!r}: {part} was given a value and cannot also hold keys")
                raise typer.Exit(USAGE)
        target[path[-1]] = value


app.callback()(_global_options)


class Failure(Exception):
    """An error the command reports as one line, exiting with ``code``."""

    def __init__(self, message: str, code: int = PROBLEM) -> None:
        super().__init__(message)
        self.code = code


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body so that errors print one line to stderr and set the exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _warnings_as_lines():
                code = fn(*args, **kwargs)
        except Failure as exc:
            _error(str(exc))
            raise typer.Exit(exc.code) from None
        except (InvalidHashError, NotAnExperimentError) as exc:
            _error(str(exc))
            raise typer.Exit(USAGE) from None
        except (DaggerError, OSError) as exc:
            _error(str(exc))
            raise typer.Exit(PROBLEM) from None
        except Exception as exc:
            if os.environ.get("DAGGER_DEBUG"):
                raise
            _error(f"{type(exc).__name__}: {exc} (set DAGGER_DEBUG=1 for the traceback)")
            raise typer.Exit(PROBLEM) from None
        if code:
            raise typer.Exit(code)
        return None

    return wrapper


def _error(message: str) -> None:
    sys.stderr.write(f"dagger: error: {message}\n")


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for w in caught:
                if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
                    sys.stderr.write(f"dagger: warning: {w.message}\n")


def _console() -> Console:
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal:  # pipes and files get whole lines, never wrapped or cut
        console = Console(highlight=False, width=max(console.width, 10_000), no_color=True)
    return console


def _print_whole(console: Console, table: Table) -> None:
    """Print a table at its natural width, even wider than the terminal: cells are never cut."""
    from rich.measure import Measurement

    need = Measurement.get(console, console.options.update(width=10_000), table).maximum
    if need > console.width:
        console = Console(highlight=False, width=need, force_terminal=console.is_terminal)
    console.print(table)


def _print_rows(console: Console, header: list[str], rows: list[list[str]], right: list[bool]) -> None:
    """Print a table of plain-text cells: as rich does for a terminal, else laid out here in one pass.

    Into a pipe or a file the layout is rich's (``box=None``: columns two spaces apart, numeric
    ones right-aligned), written directly: rich measures and renders every cell several times
    (19 s for 10,000 rows of 18 columns), this takes a fraction of a second.
    """
    if console.is_terminal or any("\n" in cell for row in rows for cell in row):
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col, r in zip(header, right, strict=True):
            table.add_column(escape(col), no_wrap=True, justify="right" if r else "left")
        for row in rows:
            table.add_row(*(escape(cell) for cell in row))
        _print_whole(console, table)
        return
    from rich.cells import cell_len

    widths = [cell_len(h) for h in header]
    for row in rows:
        for i, cell in enumerate(row):
            n = cell_len(cell)
            if n > widths[i]:
                widths[i] = n

    def line(cells: list[str]) -> str:
        parts = []
        for cell, width, r in zip(cells, widths, right, strict=True):
            pad = " " * (width - cell_len(cell))
            parts.append(pad + cell if r else cell + pad)
        return "  ".join(parts)

    console.file.write("\n".join([line(header), *(line(row) for row in rows)]) + "\n")


def _print_lines(console: Console, lines: list[str]) -> None:
    """Print lines of rich markup: through rich on a terminal, else as plain text in one write."""
    if console.is_terminal:
        for line in lines:
            console.print(line)
        return
    from rich.text import Text

    plain = Text.from_markup
    console.file.write("".join(plain(line).plain + "\n" for line in lines))


def _open(directory: str) -> Experiment:
    """The experiment at ``directory``, slim; a usage error when there is none."""
    local = "://" not in directory or directory.startswith("file://")
    path = directory[len("file://") :] if directory.startswith("file://") else directory
    if local and not os.path.isdir(path):
        what = "is a file, not an experiment folder" if os.path.exists(path) else "does not exist"
        raise Failure(f"{directory} {what}", USAGE)
    try:
        return Experiment.restore(directory, slim=True, storage_options=_storage_options)
    except NotAnExperimentError as exc:
        raise Failure(str(exc), USAGE) from None
    except CorruptRecordError as exc:
        raise Failure(str(exc), PROBLEM) from None


def _node(graph: StaticExperimentTree, text: str) -> ExperimentState:
    """The state named by a hash or unique prefix (lower-cased); anything else is refused."""
    sha = graph.resolve(text.strip().lower() if isinstance(text, str) else text)
    return graph.node(sha)


# ---- formatting helpers -------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _recipe_name(meta: dict[str, Any]) -> str:
    recipe = meta.get("recipe")
    return "root" if recipe is None else str(recipe.get("name", "?"))


def _props(meta: dict[str, Any]) -> dict[str, Any]:
    recipe = meta.get("recipe")
    props = meta.get("properties") if recipe is None else recipe.get("properties")
    return dict(props or {})


def _call(meta: dict[str, Any]) -> str:
    """``TrainRecipe(nb_epochs=100, lr=0.1)``, or ``root(dataset_name=...)``."""
    inner = ", ".join(f"{k}={_fmt(v)}" for k, v in _props(meta).items())
    return f"{_recipe_name(meta)}({inner})"


def _flat(results: dict[str, Any]) -> dict[str, Any]:
    """Function results as ``{name: value}``: dict results by key, others by function name."""
    out: dict[str, Any] = {}
    for fn, value in (results or {}).items():
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{fn}.{k}" if k in out else k] = v
        else:
            out[fn] = value
    return out


def _status(meta: dict[str, Any]) -> str:
    if meta.get("status"):
        return str(meta["status"])
    if meta.get("function_errors"):
        return "function failed"
    return "root" if meta.get("recipe") is None else "done"


def _size(n: int | None) -> str:
    from dagger.store.maintenance import format_bytes

    return "missing" if n is None else format_bytes(n)


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _label(node: ExperimentState, result: str | None = None) -> str:
    """One line of rich markup describing a state."""
    meta = node._meta()
    parts = [f"[bold]{escape(_recipe_name(meta))}[/bold] [dim]{node.sha()[:10]}[/dim]"]
    props = _props(meta)
    if props:
        parts.append(escape(", ".join(f"{k}={_fmt(v)}" for k, v in props.items())))
    if meta.get("tags"):
        parts.append("[magenta]" + escape("[" + ", ".join(meta["tags"]) + "]") + "[/magenta]")
    results = _flat(meta.get("results") or {})
    if result is not None:
        results = {k: v for k, v in results.items() if k == result or k.endswith("." + result)}
    if results:
        parts.append("[cyan]" + escape(" ".join(f"{k}={_fmt(v)}" for k, v in results.items())) + "[/cyan]")
    status = _status(meta)
    colour = {"done": "green", "root": "blue"}.get(status, "red")
    parts.append(f"[{colour}]{escape(status)}[/{colour}]")
    return "  ".join(parts)


# ---- commands ---------------------------------------------------------------------

Dir = Annotated[
    str, typer.Argument(metavar="DIR", help="The experiment folder (a path or an fsspec URL).", show_default=False)
]
Tags = Annotated[
    list[str] | None,
    typer.Option(
        "--tag",
        "-t",
        metavar="PATTERN",
        help="Keep states whose tags match this fnmatch pattern; a leading ! negates. Repeatable.",
        show_default=False,
    ),
]
AnyTag = Annotated[bool, typer.Option("--any", help="Keep states matching any --tag pattern (default: all of them).")]
Hash = Annotated[
    str, typer.Argument(metavar="HASH", help="A state hash or a unique prefix of 4+ hex digits.", show_default=False)
]
ResultOpt = Annotated[
    str | None,
    typer.Option("--result", "-r", metavar="NAME", help="Show only this result (e.g. accuracy).", show_default=False),
]


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
        stack.extend((kid, child_prefix, i == len(kids) - 1, False, level + 1) for i, kid in reversed(list(enumerate(kids))))
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
            key, where = meta_key(node.sha(), FIRST_REV), "carried by the commit record"
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


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: ``{"packages": {"torch": "2.1"}}`` -> ``packages.torch``."""
    if not isinstance(value, dict):
        return {} if value is None else {prefix or "value": value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


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


@app.command(epilog="Example: dagger ui runs/prune   (or --export explorer.html for one self-contained file)")
@_command
def ui(
    directory: Dir,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            metavar="FILE",
            help="Write one self-contained HTML file instead of serving.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="The address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port to serve on (0: a free one).")] = 0,
    storage_option: Annotated[
        list[str] | None,
        typer.Option(
            "--storage-option", metavar="KEY=VALUE", help="An fsspec storage option (repeatable).", show_default=False
        ),
    ] = None,
    result: ResultOpt = None,
) -> int:
    """Explore the tree in the browser: pan, zoom, filter by tags, panels, diffs, a table and plots (read only)."""
    from dagger.ui.cli import run_ui

    return run_ui(directory, export, host, port, storage_option or [], Failure, USAGE, result)


@app.command(epilog="Example: dagger gc runs/prune --unreachable --dry-run")
@_command
def gc(
    directory: Dir,
    unreachable: Annotated[
        bool, typer.Option("--unreachable", help="Also remove states not reachable from the root.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Only report what would be removed.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> int:
    """Remove unreferenced blobs, temporary files, stale locks and superseded metadata revisions."""
    exp = _open(directory)
    if not hasattr(exp, "gc"):
        raise Failure("this version of dagger has no Experiment.gc")
    report = exp.gc(unreachable=unreachable, dry_run=dry_run)
    _print_report(report, as_json)
    return OK


@app.command(epilog="Example: dagger verify runs/prune   (exit status 1 when problems are found)")
@_command
def verify(
    directory: Dir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Also remove what is damaged (blobs failing their hash, unreadable records, the records and "
            "pickle of each damaged state), so that the next run of the experiment recomputes those states.",
        ),
    ] = False,
) -> int:
    """Check every stored state: records readable, pickles and blobs present and intact."""
    exp = _open(directory)
    if not hasattr(exp, "verify"):
        raise Failure("this version of dagger has no Experiment.verify")
    report = exp.verify(repair=True) if repair else exp.verify()
    _print_report(report, as_json)
    return OK if getattr(report, "ok", False) else PROBLEM


def _print_report(report: Any, as_json: bool) -> None:
    if as_json and hasattr(report, "to_dict"):
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    else:
        sys.stdout.write(str(report).rstrip("\n") + "\n")


@app.command(epilog="Example: dagger reproduce runs/prune 583dfc4e --atol 1e-6   (exit status 1 when it differs)")
@_command
def reproduce(
    directory: Dir,
    sha: Hash,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance, as in numpy.allclose.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance, as in numpy.allclose.")] = 0.0,
) -> int:
    """Recompute a state from its stored parent, in memory, and compare it with the stored one.

    Unlike the other commands this unpickles states and runs the recipe's code: use it on
    experiments you trust, where the recipe's module is importable (the current folder is
    searched). Nothing is written to the store.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    exp = _open(directory)
    report = exp.reproduce(_node(exp.graph, sha).sha(), rtol=rtol, atol=atol)
    _print_report(report, False)
    return OK if report.ok else PROBLEM


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``dagger`` console script."""
    try:
        app(args=argv, prog_name="dagger")
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.stderr.write("dagger: interrupted\n")
        sys.exit(130)
    sys.exit(0)  # pragma: no cover - typer exits itself


if __name__ == "__main__":  # pragma: no cover
    main()
