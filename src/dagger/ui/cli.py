"""The body of ``dagger ui`` (the command itself is declared in :mod:`dagger.cli.ui`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from dagger.errors import NotAnExperimentError


def storage_options(items: list[str], failure: type[Exception], usage: int) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options; values are read as JSON where they parse (``anon=true``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise failure(f"--storage-option takes KEY=VALUE, got {item!r}", usage)  # type: ignore[call-arg]
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def run_ui(
    directory: str,
    export: str | None,
    host: str,
    port: int,
    options: list[str],
    failure: type[Exception],
    usage: int,
    result: str | None = None,
) -> int:
    """Serve the explorer of ``directory``, or write it to ``export``; returns the exit code."""
    from dagger.ui.data import Source

    if export is not None and not export.lower().endswith((".html", ".htm")):
        raise failure(f"cannot export to {export!r}: name an .html file", usage)  # type: ignore[call-arg]
    if not 0 <= port <= 65535:
        raise failure(f"--port {port} is not a port number (0 to 65535; 0 picks a free one)", usage)  # type: ignore[call-arg]
    opts = storage_options(options, failure, usage)
    try:
        source = Source(directory, opts, result)
    except NotAnExperimentError as exc:
        raise failure(str(exc), usage) from None  # type: ignore[call-arg]
    if export is not None:
        from dagger.ui import Explorer

        _, data = source.snapshot()
        Explorer(data).save(export)
        sys.stderr.write(f"wrote {export} ({len(data['states'])} states)\n")
        return 0
    try:
        from dagger.ui.server import serve
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise failure(str(exc)) from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"dagger: warning: serving on {host}: anyone who can reach it can read this experiment\n")
    try:
        serve(source, host, port)
    except ImportError as exc:
        raise failure(str(exc)) from None
    return 0
