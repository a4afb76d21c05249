"""What every ``dagger`` command shares: the app, its options, error handling and output.

The command group prints a usage error as one line; ``--storage-option`` (given before the
command) applies to every command's DIR; :func:`_command` turns errors into one line on
stderr and an exit code (:data:`OK`, :data:`PROBLEM`, :data:`USAGE`); :func:`_open` opens
an experiment slim, so that nothing is ever unpickled. The commands themselves live in
one module per family and register themselves on :data:`app`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

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
from dagger.graph import StaticExperimentTree
from dagger.state import ExperimentState

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


# ---- the options and arguments the commands share ------------------------------------

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
