"""The progress display of a run, on every scheduler.

::

    dagger: 12/40 done | 9 computed | 2 cached | 2 running | 1 failed | 00:42 elapsed

By default (``progress=None``) it is shown only when standard error is a
terminal, where it redraws one line in place; logs, pipes and CI output get
nothing. ``progress=False`` (or ``DAGGER_PROGRESS=0``) turns it off;
``progress=True`` forces it on standard error, and ``progress=<text stream>``
draws on that stream. On a stream that is not a terminal it never redraws: it
writes whole lines (at most one a second, and a final one), so a log file
stays readable.

Counts come from Dask itself: local schedulers through ``dask.callbacks``
(``running`` is the tasks handed to workers), a ``distributed.Client``
through ``as_completed`` and the scheduler's list of tasks in progress.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from dagger.execution import task_spec

_STATUSES = ("computed", "cached", "failed", "skipped")


class Progress:
    """Counts the states of one run and draws them; a context manager around the run."""

    #: Seconds between in-place redraws on a terminal, and between whole lines elsewhere.
    TTY_INTERVAL = 0.1
    LINE_INTERVAL = 1.0
    #: Seconds between refreshes of the elapsed time (and, on a cluster, the running count).
    TICK = 0.5

    def __init__(self, total: int, enabled: bool, scheduler: Any = None, stream: Any = None) -> None:
        self.total = total
        self.enabled = enabled
        self.scheduler = scheduler
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream)
        self.counts = dict.fromkeys(_STATUSES, 0)
        self.running = 0
        self.start = time.monotonic()
        self._last_draw = float("-inf")
        self._last_line = ""
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._poll: Any = None  # a callable refreshing ``running`` (distributed)

    @classmethod
    def for_run(cls, progress: Any, total: int, scheduler: Any = None) -> Progress:
        """The display for ``exp.run(progress=...)``: None (auto), True, False or a text stream."""
        stream = progress if hasattr(progress, "write") else None
        return cls(total, enabled=cls.wanted(progress), scheduler=scheduler, stream=stream)

    @staticmethod
    def wanted(progress: Any) -> bool:
        """Whether to show progress: as asked, else only when standard error is a terminal."""
        if hasattr(progress, "write"):
            return True
        if progress is not None:
            return bool(progress)
        if os.environ.get("DAGGER_PROGRESS", "").lower() in ("0", "false", "no", "off"):
            return False
        return _isatty(sys.stderr)

    # ---- lifetime ------------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self.enabled:
            self._ticker = threading.Thread(target=self._tick, name="dagger-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)
        if self.enabled:
            with self._lock:
                self.running = 0 if exc[0] is None else self.running
                self._draw(final=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK):
            poll = self._poll
            if poll is not None:
                try:
                    poll()
                except Exception:  # noqa: BLE001 - a display must never fail a run
                    self._poll = None
            self.render(tick=True)

    # ---- drawing -------------------------------------------------------------------

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def line(self) -> str:
        """The display's text, e.g. ``dagger: 3/5 done | 2 computed | 1 cached | 1 running | 0 failed | 00:04 elapsed``."""
        elapsed = int(time.monotonic() - self.start)
        hours, rest = divmod(elapsed, 3600)
        mins, secs = divmod(rest, 60)
        clock = f"{hours}:{mins:02d}:{secs:02d}" if hours else f"{mins:02d}:{secs:02d}"
        parts = [
            f"dagger: {self.done}/{self.total} done",
            f"{self.counts['computed']} computed",
            f"{self.counts['cached']} cached",
            f"{self.running} running",
            f"{self.counts['failed']} failed",
        ]
        if self.counts["skipped"]:
            parts.append(f"{self.counts['skipped']} skipped")
        return " | ".join(parts) + f" | {clock} elapsed"

    def render(self, force: bool = False, tick: bool = False) -> None:
        """Draw if enabled and due: in place on a terminal, as a whole new line elsewhere."""
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if tick and self._last_draw == float("-inf"):
                return  # the first frame comes from the run itself (its first state starting)
            if self.tty:
                if force or now - self._last_draw >= self.TTY_INTERVAL:
                    self._draw()
            elif not tick or self._counts_line() != self._last_line:
                if force or now - self._last_draw >= self.LINE_INTERVAL:
                    self._draw()

    def _counts_line(self) -> str:
        return self.line().rsplit(" | ", 1)[0]

    def _draw(self, final: bool = False) -> None:
        text = self.line()
        try:
            if self.tty:
                self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
            elif final or self._counts_line() != self._last_line:
                self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed or broken stream: stop drawing, keep running
            self.enabled = False
            return
        self._last_draw = time.monotonic()
        self._last_line = self._counts_line()

    # ---- counting ------------------------------------------------------------------

    def started(self) -> None:
        with self._lock:
            self.running += 1
        self.render()

    def finished(self, record: Any) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            status = record.get("status", "failed") if isinstance(record, dict) else "failed"
            self.counts[status] = self.counts.get(status, 0) + 1
        self.render()

    def collect(self, get: Any, graph: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
        """Run ``graph`` with ``get`` while counting; return the records in ``keys`` order."""
        client = getattr(get, "__self__", None)
        if client is not None and hasattr(client, "submit"):
            return self._collect_distributed(client, graph, keys)
        if not self.enabled:
            return list(get(graph, keys))  # nothing to draw: no hooks around every task
        from dask.callbacks import Callback

        progress = self

        class _Hook(Callback):
            def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
                progress.started()

            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                progress.finished(result)

        with _Hook():
            return list(get(graph, keys))

    def _collect_distributed(self, client: Any, graph: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
        from distributed import as_completed

        futures = client.get(_as_data_producers(graph), keys, sync=False)
        by_key = {f.key: f for f in futures}
        finished: set[Any] = set()
        got: dict[Any, dict[str, Any]] = {}  # gathered as they finish: a lost worker may take results with it

        def poll() -> None:
            busy = {k for ks in client.processing().values() for k in ks}
            with self._lock:
                self.running = len((busy & by_key.keys()) - finished)

        self._poll = poll if self.enabled else None
        self.render(force=True)
        try:
            # Results are fetched by the client's event loop as each task finishes (with_results), not by
            # one blocking round trip per future from this thread: 16 trivial states on 2 workers took
            # 2-2.5x plain Dask's time before, most of it waiting on those round trips one after another.
            for fut, result in as_completed(futures, with_results=True, raise_errors=False):
                if fut.status == "finished" and isinstance(result, dict):
                    record = got[fut.key] = result
                else:  # erred or cancelled: the error surfaces below, with its key
                    record = {"status": "failed"}
                with self._lock:
                    finished.add(fut.key)
                    self.running = max(0, self.running - 1)
                    self.counts[record.get("status", "failed")] = self.counts.get(record.get("status", "failed"), 0) + 1
                self.render()
        except BaseException:
            # Ctrl-C (or any error here): stop the cluster from starting more of this run's states.
            self._poll = None
            try:
                client.cancel(futures)
            except Exception:  # noqa: BLE001
                pass
            raise
        self._poll = None
        out: dict[str, dict[str, Any]] = {}
        for key, fut in zip(keys, futures, strict=True):
            if key in got:
                out[key] = got[key]
                continue
            task = graph.get(key)
            parents = [d for d in task_spec(task)[1] if d in out]
            bad = next((p for p in parents if out[p].get("status") in ("failed", "skipped")), None)
            out[key] = _lost(key, fut, task)
            if bad is not None:  # Dask erred it because its parent was lost: skipped, as on local schedulers
                cause = bad if out[bad]["status"] == "failed" else out[bad].get("cause", bad)
                out[key].update(status="skipped", cause=cause, error=None, traceback=None)
        return [out[k] for k in keys]


def _isatty(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):  # a closed stream
        return False


def _lost(key: str, future: Any, task: Any = None) -> dict[str, Any]:
    """A task that Dask itself lost (e.g. its worker died too often): report it failed."""
    spec = task_spec(task)[0]
    try:
        exc = future.exception()
    except Exception as err:  # noqa: BLE001
        exc = err
    now = time.time()
    return {
        "sha": key,
        "label": getattr(spec, "label", "?"),
        "tags": list(getattr(spec, "meta", {}).get("tags", [])),
        "status": "failed",
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": f"Dask lost the task: {type(exc).__name__}: {exc}",
        "start": now,
        "end": now,
        "duration": 0.0,
    }


def _as_data_producers(graph: dict[str, Any]) -> dict[str, Any]:
    """Mark every state task as a data producer, so the scheduler spreads them over idle workers.

    A state's task hands its children only its hash: they load it from the store,
    so where a parent ran does not matter. Left to itself, distributed sends each
    child to the worker that holds its parent's (tiny) result, and a fan-out piles
    up on one worker until work stealing moves some away. Data-producer (root-ish)
    tasks go to the least busy worker instead. The marker is a private argument of
    dask's task spec; where it does not exist the graph is submitted as it is.
    """
    try:
        from dask._task_spec import Task, convert_legacy_task
    except ImportError:  # pragma: no cover - a dask without the task spec
        return graph
    out: dict[str, Any] = {}
    for key, task in graph.items():
        node = convert_legacy_task(key, task, graph)
        if isinstance(node, Task):
            try:
                node = Task(key, node.func, *node.args, _data_producer=True, **node.kwargs)
            except TypeError:  # pragma: no cover - a dask without the marker
                return graph
        out[key] = node
    return out
