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
    return start_capture(extra_packages, script).result()


class PendingCapture:
    """A :func:`capture` under way: git already asked, in the background; :meth:`result` waits for it.

    Asking git takes a few milliseconds, mostly in the git processes: a run
    starts them, builds its tasks meanwhile, then collects the snapshot.
    """

    def __init__(self, extra_packages: Iterable[str] = (), script: str | os.PathLike[str] | None = None) -> None:
        self._packages = list(extra_packages)
        self._git = _GitQuery(script if script is not None else main_script())
        self._result: dict[str, Any] | None = None

    def result(self) -> dict[str, Any]:
        if self._result is None:
            env: dict[str, Any] = {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "packages": package_versions(self._packages),
                "argv": list(sys.argv),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            repo = self._git.result()
            if repo is not None:
                env["git"] = repo
            self._result = env
        return self._result

    def cancel(self) -> None:
        """Stop the git processes, if they still run (the snapshot is not needed after all)."""
        self._git.cancel()


def start_capture(extra_packages: Iterable[str] = (), script: str | os.PathLike[str] | None = None) -> PendingCapture:
    """Start a :func:`capture`: git runs in the background until ``.result()`` is asked for."""
    return PendingCapture(extra_packages, script)


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
    if isinstance(found, str) and not found.endswith("+unknown"):  # dagger's own, from a source tree
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
    return _GitQuery(path).result()


class _GitQuery:
    """The two git commands behind :func:`git_info`, run at the same time, given up together.

    Whatever happens while they run (a timeout, an error, Ctrl-C), both end
    killed or finished, and reaped: no git process outlives the query.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        where = os.fspath(path)
        if not os.path.isdir(where):
            where = os.path.dirname(os.path.abspath(where))
        self._procs: list[subprocess.Popen[str] | None] = []
        if os.path.isdir(where):
            try:
                self._procs.append(_start_git(where, "rev-parse", "--show-toplevel", "HEAD"))
                if self._procs[0] is not None:
                    self._procs.append(_start_git(where, "status", "--porcelain", "--untracked-files=no"))
            except BaseException:
                self.cancel()
                raise

    def result(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + GIT_TIMEOUT  # one timeout for both: they run side by side
        try:
            head, status = (_output(proc, deadline) for proc in (self._procs + [None, None])[:2])
        finally:
            self.cancel()  # a no-op for commands that finished; kills what an error left running
        if head is None:
            return None
        lines = head.splitlines()
        if len(lines) != 2:
            return None
        return {"commit": lines[1], "dirty": None if status is None else bool(status.strip()), "root": lines[0]}

    def cancel(self) -> None:
        procs, self._procs = self._procs, []
        for proc in procs:
            if proc is not None and proc.returncode is None:
                proc.kill()
                proc.wait()  # not communicate(): a grandchild may hold the pipe open for long
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()


def _start_git(cwd: str, *args: str) -> subprocess.Popen[str] | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0", LC_ALL="C")
    try:
        return subprocess.Popen(
            ["git", *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            errors="replace",  # a repository path that is not valid UTF-8 must not break the run
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _output(proc: subprocess.Popen[str] | None, deadline: float) -> str | None:
    """What a git command started by :func:`_start_git` printed, or None if it failed or outlived ``deadline``."""
    if proc is None:
        return None
    try:
        out, _ = proc.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None  # killed and reaped by the caller's cancel()
    return out if proc.returncode == 0 else None


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
