"""A pool of fresh worker interpreters for ``scheduler="processes"`` when forking is unsafe.

A forked child inherits its parent's memory but not its threads. GNU OpenMP (the
thread pool behind torch's intra-op parallelism on Linux) keeps serving parallel
regions from threads that, after a fork, no longer exist: a forked worker hangs at
its first parallel torch operation once the parent has run one on several threads.
Setting the child's thread count to 1 after the fork only hides this until a recipe
asks for more threads (measured: ``torch.set_num_threads(2)`` in a recipe hangs again).

The workers here are plain interpreters (``python -c``) that import only dagger's
worker loop, never the user's script: ``multiprocessing``'s ``spawn`` and
``forkserver`` would run the script again as ``__mp_main__`` in every worker, and
the paper's listings have no ``if __name__ == "__main__"`` guard. Tasks arrive by
cloudpickle, which carries classes defined in ``__main__`` by value, as on a
dask.distributed cluster. The pool is a :class:`concurrent.futures.Executor`, which
is what ``dask.multiprocessing.get(pool=...)`` takes.
"""

from __future__ import annotations

import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

import cloudpickle

_HEADER = struct.Struct("<Q")


class WorkerDiedError(RuntimeError):
    """A worker interpreter exited while it ran a task."""


def _send(fd: int, obj: Any) -> None:
    data = cloudpickle.dumps(obj)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(fd: int) -> tuple[bool, Any]:
    """The next object on ``fd``: (True, obj), or (False, None) at end of file."""
    header = _read_exact(fd, _HEADER.size)
    if header is None:
        return False, None
    data = _read_exact(fd, _HEADER.unpack(header)[0])
    if data is None:
        return False, None
    return True, cloudpickle.loads(data)


def serve(read_fd: int, write_fd: int) -> None:
    """The worker's loop: run each ``(fn, args, kwargs)`` that arrives, send back its outcome; stop at EOF."""
    ok, setup = _receive(read_fd)
    if not ok:
        return
    sys.path[:] = setup["sys_path"]
    while True:
        ok, call = _receive(read_fd)
        if not ok:
            return
        fn, args, kwargs = call
        try:
            outcome = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's Future
            outcome = (False, exc)
        try:
            _send(write_fd, outcome)
        except Exception as exc:  # the result or the exception would not pickle
            _send(write_fd, (False, RuntimeError(f"a dagger worker could not send back {outcome[1]!r}: {exc}")))


class _Worker:
    """One worker interpreter and the two pipes to it."""

    def __init__(self) -> None:
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        code = f"from dagger._workers import serve; serve({to_child_r}, {from_child_w})"
        try:
            # stdin closed, as multiprocessing does for its workers; stdout and stderr are the user's.
            self.process = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.DEVNULL, pass_fds=(to_child_r, from_child_w)
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        _send(self.to_child, {"sys_path": list(sys.path)})

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        try:
            _send(self.to_child, (fn, args, kwargs))
            ok, outcome = _receive(self.from_child)
        except BrokenPipeError:
            ok = False
        if not ok:
            code = self.process.wait()
            raise WorkerDiedError(f"a dagger worker process exited with status {code} while it ran a task")
        return outcome

    def close(self) -> None:
        os.close(self.to_child)  # EOF: the worker's loop ends
        self.process.wait()
        os.close(self.from_child)


class FreshInterpreterPool(Executor):
    """``workers`` fresh interpreters, each fed tasks by one thread of this process."""

    def __init__(self, workers: int) -> None:
        self._max_workers = workers  # read by dask.multiprocessing.get, as on ProcessPoolExecutor
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._workers = [_Worker() for _ in range(workers)]  # started together: their imports overlap
        self._threads = [threading.Thread(target=self._feed, args=(i,), daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _feed(self, index: int) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                ok, value = self._workers[index].call(fn, args, kwargs)
            except BaseException as exc:  # noqa: BLE001 - the task's Future reports it
                future.set_exception(exc)
                if isinstance(exc, WorkerDiedError):
                    self._workers[index] = _Worker()  # the next task gets a new worker
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()
        for worker in self._workers:
            worker.close()
