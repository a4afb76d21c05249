"""What an experiment ran on: interpreter, platform, library versions, code commit.

:func:`capture` takes a snapshot once per run (it is cheap, but it asks git,
so it is never taken per state). An experiment records the snapshot taken
when it was created in ``experiment.json`` under ``"environment"``; each
state records, in ``meta["environment"]``, only the entries that differed
when it was computed (:func:`differences`), so a state made after a library
upgrade or on a dirty working tree says so::

    >>> env = capture(extra_packages=["scikit-learn"])
    >>> sorted(env)
    ['argv', 'git', 'packages', 'platform', 'python', 'time']

Nothing here imports a library to learn its version: torch is listed only
when the program has already imported it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from typing import Any

#: Entries that differ at every capture and so are never reported as a difference.
VOLATILE = ("time",)

#: Seconds one git command may take before it is given up (the entry is then left out).
GIT_TIMEOUT = 3.0

_DISTRIBUTIONS = {"dagger": "dagger-experiments"}


def capture(extra_packages: Iterable[str] = (), script: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """A JSON-friendly snapshot of the environment this process runs in.

    ``extra_packages`` names more distributions to list (their installed
    version, or None when not installed). ``script`` is the file whose git
    repository is described; by default the program's main script (or the
    working directory, e.g. in a notebook). The ``"git"`` entry is absent
    when that file is not in a git repository or git is not available.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": package_versions(extra_packages),
        "argv": list(sys.argv),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    repo = git_info(script if script is not None else main_script())
    if repo is not None:
        env["git"] = repo
    return env


def package_versions(extra_packages: Iterable[str] = ()) -> dict[str, str | None]:
    """Versions of dagger, dask, numpy, torch (only if imported) and ``extra_packages``."""
    out: dict[str, str | None] = {}
    for name in ("dagger", "dask", "numpy"):
        out[name] = _version(name)
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = str(getattr(torch, "__version__", None) or _version("torch"))
    for name in extra_packages:
        out[str(name)] = _version(str(name))
    return out


def _version(name: str) -> str | None:
    module = sys.modules.get(name)
    found = getattr(module, "__version__", None) if module is not None else None
    if isinstance(found, str) and name != "dagger":
        return found
    try:
        return metadata.version(_DISTRIBUTIONS.get(name, name))
    except (metadata.PackageNotFoundError, ValueError):
        return None


def main_script() -> str:
    """The file the program was started from, or the working directory when there is none."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if isinstance(path, str) and os.path.exists(path):
        return os.path.abspath(path)
    return os.getcwd()


def git_info(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"commit", "dirty", "root"}`` of the git repository holding ``path``, or None.

    ``dirty`` is true when tracked files have uncommitted changes (untracked
    files do not count: run folders and outputs usually are untracked).
    """
    where = os.fspath(path)
    if not os.path.isdir(where):
        where = os.path.dirname(os.path.abspath(where))
    if not os.path.isdir(where):
        return None
    head = _git(where, "rev-parse", "--show-toplevel", "HEAD")
    if head is None:
        return None
    lines = head.splitlines()
    if len(lines) != 2:
        return None
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return {"commit": lines[1], "dirty": None if status is None else bool(status.strip()), "root": lines[0]}


def _git(cwd: str, *args: str) -> str | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def differences(base: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``current`` that differ from ``base`` (an empty dict when none do).

    Nested dicts (``packages``, ``git``) are compared entry by entry and only
    their differing entries kept; an entry missing from ``current`` shows as
    None. Volatile entries (the time) never count.
    """
    base = base or {}
    out: dict[str, Any] = {}
    for key in sorted(set(base) | set(current)):
        if key in VOLATILE:
            continue
        old, new = base.get(key), current.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            out[key] = {k: new.get(k) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
        else:
            out[key] = new
    return out
