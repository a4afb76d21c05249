"""Running the experiment graph on Dask.

Each state to compute (or to evaluate with Functions) is one Dask task keyed
by its hash. Tasks hand each other small status records, never states: a
task loads its parent from the store by hash, which also gives it an
independent copy to mutate. A task never raises: a failure is recorded and
every descendant is skipped, so one failing branch never stops the others.
"""

from __future__ import annotations

import os
import random
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from dagger.errors import DefinitionError, RecipeReturnError, ResultNotStorableError
from dagger.recipe import seeds_global_rngs
from dagger.state import ExperimentState, set_attributes
from dagger.store import open_store, pickling, signing
from dagger.store._local import current_pid
from dagger.store.records import Records, encode_json, state_key

_HOST = socket.gethostname()


@dataclass
class Runtime:
    """Everything a worker needs to reach the store; small and picklable."""

    location: str
    storage_options: dict[str, Any] = field(default_factory=dict)
    blob_threshold: int = 64 * 1024
    verify_blobs: bool = True
    fsync: bool = False
    seed: bool = True
    locking: bool = True
    lock_stale_after: float = 6 * 3600.0
    #: The Store object itself when the experiment was opened on one (not on a path or URL).
    store: Any = field(default=None, repr=False, compare=False)
    #: The key that signs pickles (see dagger.store.signing); None: workers read $DAGGER_SIGNING_KEY.
    signing_key: bytes | None = field(default=None, repr=False)

    def records_key(self) -> tuple[Any, ...]:
        """Which of this process's Records (one per store and options) tasks of this runtime use."""
        key = self.__dict__.get("_records_key")
        if key is None:
            key = self.__dict__["_records_key"] = (
                self.location,
                repr(sorted(self.storage_options.items())),
                self.blob_threshold,
                self.verify_blobs,
                self.fsync,
                signing.key_id(signing.resolve_key(self.signing_key)),
            )
        return key

    def records(self) -> Records:
        if self.store is not None:  # a Store object given by the caller: use it, not a fresh one
            recs = self.__dict__.get("_records")
            if recs is None:
                recs = self.__dict__["_records"] = Records(
                    self.store, self.blob_threshold, self.verify_blobs, signing_key=self.signing_key
                )
            return recs
        key = self.records_key()
        recs = _RECORDS.get(key)
        if recs is None:
            store = open_store(self.location, fsync=self.fsync, **self.storage_options)
            recs = _RECORDS[key] = Records(store, self.blob_threshold, self.verify_blobs, signing_key=self.signing_key)
        return recs


def keep_written(runtime: Runtime) -> None:
    """Have this process's tasks for ``runtime``'s store keep the commit records' text (see take_written)."""
    runtime.records().keep_written = True


def take_written(runtime: Runtime) -> dict[str, tuple[str, str]]:
    """The commit records this process's tasks wrote for ``runtime``'s store, as text (for the index).

    Tasks that ran in other processes (``processes``, a cluster) are not here: the index
    encodes their metadata again.
    """
    recs = runtime.__dict__.get("_records") if runtime.store is not None else _RECORDS.get(runtime.records_key())
    return recs.take_written() if recs is not None else {}


def process_records(runtime: Runtime) -> Records | None:
    """The Records this process's tasks used for ``runtime``'s store, if any ran here (None otherwise)."""
    if runtime.store is not None:
        return runtime.__dict__.get("_records")  # type: ignore[no-any-return]
    return _RECORDS.get(runtime.records_key())


def close_records(runtime: Runtime) -> None:
    """Commit, seal and close this process's segment writer for ``runtime``'s store (at the end of a run)."""
    recs = runtime.__dict__.get("_records") if runtime.store is not None else _RECORDS.get(runtime.records_key())
    if recs is not None:
        recs.close()


def flush_records(runtime: Runtime) -> None:
    """Commit the records this process's tasks queued for ``runtime``'s store (object-store segment batches)."""
    recs = runtime.__dict__.get("_records") if runtime.store is not None else _RECORDS.get(runtime.records_key())
    if recs is not None:
        recs.flush()


def forget_recent(runtime: Runtime) -> None:
    """Forget this process's in-memory copies of saved pickles, so a new run reads parents from the store.

    Also read copyreg's reducers again (one replaced since the last run takes effect).
    """
    pickling.refresh_reducers()
    for recs in [*_RECORDS.values(), runtime.__dict__.get("_records")]:
        if recs is not None:
            recs.forget_recent()


# One Records per store per process: workers reuse their store connection.
_RECORDS: dict[tuple[Any, ...], Records] = {}


def _forget_records_in_child() -> None:
    """A forked worker opens its own stores: fsspec's async file systems (s3, gcs, ...) refuse to be
    used across a fork ("This class is not fork-safe"), and a lock held by a parent's thread at the
    fork would never be released in the child."""
    _RECORDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_records_in_child)

_TASK_CLASSES: tuple[Any, Any] | None = None


def _task_classes() -> tuple[Any, Any]:
    """dask's Task and TaskRef (dask 2024.12 and later), or Nones; imported on first use, like dask."""
    global _TASK_CLASSES
    if _TASK_CLASSES is None:
        try:
            from dask._task_spec import Task, TaskRef

            _TASK_CLASSES = (Task, TaskRef)
        except ImportError:  # pragma: no cover - an older dask: legacy tuple tasks
            _TASK_CLASSES = (None, None)
    return _TASK_CLASSES


def state_task(runtime: Runtime, spec: TaskSpec, parent: str | None) -> Any:
    """The Dask task for ``spec``'s state, depending on the task of ``parent`` when one is given.

    A Task object where dask has them: dask would otherwise convert every tuple task itself.
    """
    task, ref = _TASK_CLASSES or _task_classes()
    if task is None:  # pragma: no cover - an older dask
        return (run_task, runtime, spec, parent) if parent is not None else (run_task, runtime, spec)
    if parent is not None:
        return task(spec.sha, run_task, runtime, spec, ref(parent))
    return task(spec.sha, run_task, runtime, spec)


def task_spec(task: Any) -> tuple[TaskSpec | None, list[str]]:
    """The TaskSpec a graph entry made by :func:`state_task` runs, and the keys it depends on."""
    if isinstance(task, tuple):
        args, deps = task[1:], [a for a in task[3:] if isinstance(a, str)]
    else:
        args, deps = getattr(task, "args", ()), sorted(getattr(task, "dependencies", ()))
    return next((a for a in args if isinstance(a, TaskSpec)), None), deps


@dataclass(eq=False)
class TaskSpec:
    """What one task must do for one state."""

    sha: str
    parent: str | None
    compute: bool
    state_class: type[ExperimentState]
    recipe: Any = None
    properties: dict[str, Any] = field(default_factory=dict)
    init_kwargs: dict[str, Any] | None = None
    functions: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    #: Why the state is computed (NEVER_STORED, FAILED_BEFORE, ...); None when it is not.
    reason: str | None = None
    #: Recompute although committed, replacing this metadata revision (policy "rerun").
    replace_rev: str | None = None
    #: A stored state evaluated again: whether this run gives it other tags than it has.
    retagged: bool = False


def worker_name() -> str:
    """Which worker runs the current task: a Dask worker address, or host:pid[/thread]."""
    if "distributed" in sys.modules:
        try:
            from distributed import get_worker

            return str(get_worker().address)
        except (ValueError, ImportError):
            pass
    thread = threading.current_thread()
    suffix = "" if thread is threading.main_thread() else f"/{thread.name}"
    return f"{_HOST}:{current_pid()}{suffix}"


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (when imported)."""
    random.seed(seed)
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


class _GlobalRandomGuard:
    """Keeps code that uses the process's global random generators out of a seeded run's way.

    Python's, numpy's and torch's global generators are process-wide. A seeded run (a root's
    ``initialize_state``, a recipe with ``SEED_GLOBAL_RNGS`` on) holds them alone: it waits for every other
    recipe and Function of this process to finish, and they wait for it, or a thread would draw
    from its stream and change its numbers. Unseeded recipes and Functions only shut seeded runs
    out; they run beside each other. Re-entrant, for a run that starts another run in its thread.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None  # the thread holding the seeded (exclusive) side
        self._depth = 0
        self._shared = 0
        self._waiting = 0  # seeded runs waiting: new unseeded ones queue behind them

    @contextmanager
    def seeded(self) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner != me:
                self._waiting += 1
                while self._owner is not None or self._shared:
                    self._cond.wait()
                self._waiting -= 1
                self._owner = me
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if not self._depth:
                    self._owner = None
                    self._cond.notify_all()

    @contextmanager
    def unseeded(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:  # inside this thread's own seeded run
            yield
            return
        with self._cond:
            while self._owner is not None or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()


_RANDOM_GUARD = _GlobalRandomGuard()

#: Why a state is computed rather than served from the store.
NEVER_STORED = "never stored"
FAILED_BEFORE = "previous attempt failed"
CODE_CHANGED = "recipe code changed"
FORCED_BY_POLICY = "forced by policy"


def failure_key(sha: str) -> str:
    """Where a failed attempt at computing ``sha`` is recorded (removed once it succeeds)."""
    return f"failed/{sha}.json"


def _record_failure(records: Records, spec: TaskSpec, record: dict[str, Any]) -> None:
    info = {k: record.get(k) for k in ("sha", "label", "error", "worker", "start", "end")}
    try:
        records.store.put(failure_key(spec.sha), encode_json(info))
    except Exception:  # noqa: BLE001 - the failure itself is what the user needs to see
        pass


def run_task(runtime: Runtime, spec: TaskSpec, *parents: dict[str, Any]) -> dict[str, Any]:
    """The body of one Dask task. Returns a status record; never raises."""
    start = time.time()
    record: dict[str, Any] = {"sha": spec.sha, "label": spec.label, "start": start, "worker": worker_name()}
    record["tags"] = list(spec.meta.get("tags", []))  # failed and skipped states have no meta to read them from
    for parent in parents:
        if parent.get("status") in ("failed", "skipped"):
            cause = parent["sha"] if parent["status"] == "failed" else parent.get("cause", parent["sha"])
            record.update(status="skipped", cause=cause, end=start, duration=0.0)
            return record
    records = runtime.records()
    lock = None
    try:
        if spec.compute:
            if runtime.locking:
                lock = records.store.lock(f"locks/{spec.sha}.lock", runtime.lock_stale_after)
                lock.acquire()
            existing, leftover = (None, True) if spec.replace_rev else _already_committed(records, spec.sha)
            if existing is not None:
                record["status"] = "cached"
                meta = existing
                state = None
            else:
                state = _compute(runtime, records, spec)
                meta = dict(spec.meta)
                # A first commit carries a small pickle in its record. Where a pickle file is already
                # there (a replaced state's, or one left by a run killed before its commit), the new
                # pickle is written over it instead: readers look at that file first.
                meta.update(records.save_pickle(spec.sha, state, inline=not leftover))
                record["status"] = "computed"
        else:
            meta = dict(spec.meta)
            state = None
            record["status"] = "cached"
        before = (meta.get("results"), meta.get("function_errors"))
        if spec.functions:
            if state is None:
                state = records.load_pickle(spec.sha)
                _attach(state, spec.sha, meta)
            results = dict(meta.get("results") or {})
            errors = {}
            for fn in spec.functions:
                try:
                    with _RANDOM_GUARD.unseeded() if runtime.seed else nullcontext():
                        value = fn.fn(state)
                    results[fn.name] = result_json(fn.name, value)
                except Exception as exc:  # noqa: BLE001 - reported, never raised
                    errors[fn.name] = f"{type(exc).__name__}: {exc}"
                    results.pop(fn.name, None)  # never show a stale result beside a failure
                    record["traceback"] = traceback.format_exc()
            meta["results"] = results
            if errors:
                record["function_errors"] = meta["function_errors"] = errors
            else:
                meta.pop("function_errors", None)
        end = time.time()
        if record["status"] == "computed":
            meta["run"] = {"start": start, "end": end, "duration": end - start, "worker": record["worker"]}
        # A stored state is given a new revision only when this run changed it: a rerun whose
        # Functions give the results already recorded writes nothing (and keeps a carried pickle
        # where it is); nor does a state another process committed meanwhile.
        changed = spec.retagged or (meta.get("results"), meta.get("function_errors")) != before
        if record["status"] == "computed" or changed:
            old_rev = meta.get("rev") if record["status"] == "cached" else spec.replace_rev
            records.write_meta(meta, old_rev=old_rev)
            if not records.keep_written:  # another process than the run's (a cluster worker): commit now
                records.flush()
        if record["status"] == "computed":
            record["reason"] = spec.reason
            # Also where this run saw no failure: a concurrent runner may have failed this state
            # (and recorded it) between this run's planning and this commit.
            records.store.delete(failure_key(spec.sha))
        record.update(end=end, duration=end - start, meta=meta)
        return record
    except BaseException as exc:  # noqa: BLE001 - a task must never take its siblings down
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        end = time.time()
        record.update(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
            end=end,
            duration=end - start,
            reason=spec.reason,
        )
        if spec.compute:
            _record_failure(records, spec, record)
        return record
    finally:
        records.release(spec.sha)  # a save that failed before its commit record holds no writer lease
        if lock is not None:
            lock.release()


def _already_committed(records: Records, sha: str) -> tuple[dict[str, Any] | None, bool]:
    """Whether another process committed ``sha`` meanwhile (its metadata, else None), and, when it
    did not, whether a pickle file is there all the same (left by a run killed before its commit).

    Every state's first commit record has one known name. A state whose first
    record a newer revision replaced has its pickle file; a state from an older
    experiment (whose records have no fixed first name) too.
    """
    rev = records.committed_now(sha)
    if rev is not None:
        return records.read_meta(sha, rev), False
    return None, records.store.exists(state_key(sha))


def _attach(state: ExperimentState, sha: str, meta: dict[str, Any]) -> None:
    # Not through state.__dict__: that would slow every attribute the recipe reads (see set_attributes).
    set_attributes(state, (("_dg_sha", sha), ("_dg_meta", meta), ("_dg_loaded", True)))


def _compute(runtime: Runtime, records: Records, spec: TaskSpec) -> ExperimentState:
    cls = spec.state_class
    seed = int(spec.sha[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF
    if spec.parent is None:
        state = cls.__new__(cls)
        if cls.__init__ is not ExperimentState.__init__:  # a user's own __init__ (reference style)
            cls.__init__(state, parent_sha=None, experiment_object=None)
        set_attributes(state, spec.properties.items())
        _attach(state, spec.sha, spec.meta)
        with _RANDOM_GUARD.seeded() if runtime.seed else nullcontext():
            if runtime.seed:
                seed_everything(seed)
            state.initialize_state(**(spec.init_kwargs or {}))
        return state
    if cls.__module__ == "__main__":
        pickling.prefer_main_class(cls)  # a worker that did not run the script knows State from the task
    parent = records.load_pickle(spec.parent)
    _attach(parent, spec.sha, spec.meta)  # the recipe sees the child's identity (seed, tags)
    recipe = spec.recipe
    seeded = runtime.seed and seeds_global_rngs(type(recipe))
    with _RANDOM_GUARD.seeded() if seeded else _RANDOM_GUARD.unseeded() if runtime.seed else nullcontext():
        if seeded:
            seed_everything(seed)
        child: Any = recipe.run(parent)
    if not isinstance(child, cls):
        raise RecipeReturnError(
            f"{type(recipe).__name__}.run returned {type(child).__name__!s} ({_short(child)}), "
            f"not a {cls.__name__}: end run() with `return state`"
        )
    if child is not parent:
        _attach(child, spec.sha, spec.meta)
    return child


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,}")


def result_json(name: str, value: Any) -> Any:
    """The JSON form of what Function ``name`` returned, stable from run to run, or a clear error.

    Raises :class:`ResultNotStorableError` (recorded as that Function's failure; the state is
    saved all the same) when the value has no faithful JSON form: dict keys that become one
    string (``1`` and ``"1"``; JSON keys are strings, so other keys are stored as ``str(key)``),
    an object whose only form is a ``repr`` holding a memory address, or an int too long for JSON.
    """
    try:
        out = jsonable(value, strict=True)
        encode_json(out)
    except ResultNotStorableError as exc:
        raise ResultNotStorableError(f"Function {name!r} returned {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ResultNotStorableError(
            f"Function {name!r} returned a value that cannot be stored as JSON ({exc}): return plain numbers, "
            "strings, lists and dicts (e.g. str() of a very large int)"
        ) from None
    return out


def check_storable(properties: dict[str, Any], owner: str) -> None:
    """Raise a :class:`DefinitionError` naming the property whose value cannot go into the metadata.

    Called when a state is defined, so that a property JSON cannot hold (an int of more digits
    than Python converts to text, 4300 by default) is refused before anything is computed rather
    than failing the save after it. Walks the value as :func:`jsonable` would, copying nothing.
    """
    for prop, value in properties.items():
        found = _long_int(value)
        if found is not None:
            raise DefinitionError(
                f"property {prop!r} of {owner} holds an int of about {int(found.bit_length() * 0.30103) + 1} digits, "
                f"more than can be written as text in the state's metadata (Python's limit: "
                f"{sys.get_int_max_str_digits()} digits). Pass it in a form JSON holds (e.g. a str, or a smaller number)."
            )


_LONG_BITS = 14_000  # an int of fewer bits has fewer than 4,300 digits (Python's default limit)


def _long_int(value: Any, depth: int = 0) -> int | None:
    """The first int inside ``value`` that ``str()`` refuses (too many digits), or None."""
    if isinstance(value, int):
        if value.bit_length() <= _LONG_BITS or isinstance(value, bool):
            return None
        try:
            str(value)
        except ValueError:
            return value
        return None
    if value is None or isinstance(value, (float, str, bytes)) or depth > 20:
        return None
    if isinstance(value, dict):
        items: Any = (x for kv in value.items() for x in kv)
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    elif getattr(getattr(value, "dtype", None), "hasobject", False) and callable(getattr(value, "tolist", None)):
        items = [value.tolist()]  # a numpy object array: jsonable stores its tolist()
    else:
        return None
    for item in items:
        if type(item) is int:  # the common case, without a call
            if item.bit_length() <= _LONG_BITS:
                continue
        elif item is None or type(item) in (float, str, bool):
            continue
        found = _long_int(item, depth + 1)
        if found is not None:
            return found
    return None


def jsonable(value: Any, depth: int = 0, strict: bool = False) -> Any:
    """A JSON-friendly version of a Function's result (numbers, strings, lists, dicts).

    ``strict`` (Function results, see :func:`result_json`) refuses what would not be faithful:
    dict keys that collide as strings, and a ``repr`` holding a memory address.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 20:
        return _repr(value, strict)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            key = str(k)
            if strict and key in out:
                other = next(o for o in value if o is not k and str(o) == key)
                raise ResultNotStorableError(
                    f"a dict whose keys {other!r} and {k!r} are one key in JSON ({key!r}; JSON keys are strings): "
                    "give them distinct string keys"
                )
            out[key] = jsonable(v, depth + 1, strict)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1, strict) for v in value]
    item = getattr(value, "item", None)
    size = getattr(value, "size", None)
    if callable(item) and (size is None or size == 1 or (callable(size) and value.numel() == 1)):
        try:
            return jsonable(item(), depth + 1, strict)
        except ResultNotStorableError:
            raise
        except (ValueError, TypeError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            return jsonable(tolist(), depth + 1, strict)
        except ResultNotStorableError:
            raise
        except (ValueError, TypeError, RuntimeError):
            pass
    return _repr(value, strict)


def _repr(value: Any, strict: bool) -> str:
    text = repr(value)
    if strict and _ADDRESS.search(text):
        cls = type(value)
        raise ResultNotStorableError(
            f"a {cls.__module__}.{cls.__qualname__} object, which has no JSON form, and its repr "
            "holds a memory address that changes every run: return plain numbers, strings, lists and dicts "
            "(e.g. vars(obj) or dataclasses.asdict(obj)), or give the class a __repr__ that shows its values"
        )
    return text


def _fork_is_safe() -> bool:
    """Whether a forked worker can use everything this process has loaded.

    torch's intra-op thread pool on Linux is GNU OpenMP's, which does not survive a
    fork: once this process has run a parallel torch operation, a forked child hangs
    at its first one. Whether that has happened can't be asked, so any torch set to
    more than one thread counts. (OpenBLAS, numpy's, re-creates its threads after a fork.)
    """
    torch = sys.modules.get("torch")
    get_num_threads = getattr(torch, "get_num_threads", None)
    return get_num_threads is None or get_num_threads() <= 1


def _process_get(num_workers: int | None) -> Any:
    """dask's multiprocessing scheduler on a ``fork`` pool where that is safe, else on fresh interpreters.

    Forked workers start in milliseconds and inherit the classes defined in
    ``__main__``. Where forking is unsafe (:func:`_fork_is_safe`: torch on several
    threads) or unavailable, workers are plain interpreters running dagger's worker
    loop (:mod:`dagger._workers`); they never import the user's script, which
    ``spawn`` and ``forkserver`` would re-run (the paper's listings have no
    ``if __name__ == "__main__"`` guard), and tasks carry ``__main__``'s classes by value.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from dask.multiprocessing import get as get_processes

    from dagger._workers import FreshInterpreterPool

    def get(dsk: Any, keys: Any, **kw: Any) -> Any:
        workers = num_workers or os.cpu_count() or 1
        # One state per dispatch: dask's default batches 6 tasks into one process, so a fan-out
        # of 8 states would run 6 + 2 on two workers instead of 4 + 4.
        kw.setdefault("chunksize", 1)
        kw.setdefault("num_workers", workers)
        if "fork" in multiprocessing.get_all_start_methods() and _fork_is_safe():
            pool: Any = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
        else:
            pool = FreshInterpreterPool(workers)
        with pool:
            return get_processes(dsk, keys, pool=pool, **kw)

    return get


# ---- schedulers --------------------------------------------------------------------

SCHEDULERS = ("single-threaded", "threads", "processes")


def resolve_scheduler(scheduler: Any, num_workers: int | None = None) -> tuple[Any, Any]:
    """A ``get(graph, keys)`` function for ``scheduler``, and a client to close afterwards."""
    if scheduler in (None, "single-threaded", "sync", "synchronous"):
        from dask.local import get_sync

        return get_sync, None
    if scheduler == "threads":
        from dask.threaded import get as get_threads

        return (lambda dsk, keys, **kw: get_threads(dsk, keys, num_workers=num_workers, **kw)), None
    if scheduler == "processes":
        return _process_get(num_workers), None
    if isinstance(scheduler, str) and "://" in scheduler:
        from distributed import Client

        client = Client(scheduler)
        return client.get, client
    if hasattr(scheduler, "get") and hasattr(scheduler, "submit"):
        return scheduler.get, None
    raise DefinitionError(
        f"unknown scheduler {scheduler!r}: use 'single-threaded' (default), 'threads', 'processes', "
        "a dask.distributed.Client, or a scheduler address such as 'tcp://127.0.0.1:8786'"
    )
