"""``dagger ui``: the explorer in the browser (its body is :mod:`dagger.ui.cli`, imported only when it runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from dagger.cli._common import USAGE, Dir, Failure, ResultOpt, _command, app


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
