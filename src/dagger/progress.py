"""A one-line progress display for runs, on every scheduler.

Shown only when standard error is a terminal (or when asked for), so logs
and CI output stay clean. It counts states done, computed, cached, running
and failed, with the elapsed time.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any


class Progress:
    def __init__(self, total: int, enabled: bool, scheduler: Any = None, stream: Any = None) -> None:
        self.total = total
        self.enabled = enabled
        self.scheduler = scheduler
        self.stream = stream or sys.stderr
        self.counts = {"computed": 0, "cached": 0, "failed": 0, "skipped": 0}
        self.running = 0
        self.start = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    @staticmethod
    def wanted(progress: bool | None) -> bool:
        if progress is not None:
            return bool(progress)
        if os.environ.get("DAGGER_PROGRESS", "").lower() in ("0", "false", "no", "off"):
            return False
        isatty = getattr(sys.stderr, "isatty", None)
        return bool(isatty and isatty())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.render(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        done = sum(self.counts.values())
        elapsed = time.monotonic() - self.start
        mins, secs = divmod(int(elapsed), 60)
        parts = [
            f"dagger {done}/{self.total} states",
            f"{self.counts['computed']} computed",
            f"{self.counts['cached']} cached",
            f"{self.running} running",
            f"{self.counts['failed']} failed",
        ]
        if self.counts["skipped"]:
            parts.append(f"{self.counts['skipped']} skipped")
        return " | ".join(parts) + f" | {mins:02d}:{secs:02d}"

    def render(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        self.stream.write("\r\x1b[2K" + self.line())
        self.stream.flush()

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

        futures = client.get(graph, keys, sync=False)
        self.running = len(futures)
        for fut in as_completed(futures):
            try:
                self.finished(fut.result())
            except Exception:  # noqa: BLE001 - the error surfaces below, with its key
                self.finished({"status": "failed"})
        return [f.result() if f.status == "finished" else _lost(k, f) for k, f in zip(keys, futures)]


def _lost(key: str, future: Any) -> dict[str, Any]:
    """A task that Dask itself lost (e.g. its worker died too often): report it failed."""
    try:
        exc = future.exception()
    except Exception as err:  # noqa: BLE001
        exc = err
    now = time.time()
    return {"sha": key, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "start": now, "end": now, "duration": 0.0}
