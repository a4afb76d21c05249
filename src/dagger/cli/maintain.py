"""Maintain a store: ``dagger gc``, ``dagger migrate``, ``dagger verify`` and ``dagger reproduce``."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from dagger.cli._common import OK, PROBLEM, Dir, Failure, Hash, _command, _node, _open, app


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


@app.command(epilog="Example: dagger migrate runs/prune")
@_command
def migrate(
    directory: Dir,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> int:
    """Move the commit records of an older experiment (meta/ files) into one segment, then compact."""
    from dagger.store.migrate import migrate as run_migrate

    report = run_migrate(_open(directory).records)
    _print_report(report, as_json)
    return OK if not report.left else PROBLEM


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
