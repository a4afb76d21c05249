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

The app, its shared options and its error handling are in :mod:`dagger.cli._common`;
each family of commands is a module that registers its commands on that app:
:mod:`~dagger.cli.browse` (show, ls, inspect), :mod:`~dagger.cli.compare` (diff,
results), :mod:`~dagger.cli.draw` (draw, plot), :mod:`~dagger.cli.ui` (ui) and
:mod:`~dagger.cli.maintain` (gc, verify, reproduce).
"""

from __future__ import annotations

import sys
from typing import NoReturn

# isort: off
from dagger.cli._common import app

# The families of commands, imported in the order `dagger --help` lists them.
from dagger.cli import browse, compare, draw, ui, maintain  # noqa: F401
# isort: on

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point of the ``dagger`` console script."""
    try:
        app(args=argv, prog_name="dagger")
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.stderr.write("dagger: interrupted\n")
        sys.exit(130)
    sys.exit(0)  # pragma: no cover - typer exits itself
