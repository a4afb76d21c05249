"""One pickle per state, with its large buffers stored once each as blobs.

The state is pickled with cloudpickle at protocol 5, so shared references
inside it survive (an optimizer and the model whose parameters it holds come
back linked) and classes defined in ``__main__`` travel by value. Buffers of at
least ``threshold`` bytes leave the pickle "out of band":

- numpy arrays (and anything else exposing ``PickleBuffer``) through pickle's
  ``buffer_callback``;
- large ``bytes``/``bytearray`` values;
- torch storages (so every tensor and ``nn.Parameter`` viewing one storage
  still shares it after loading, and a GPU storage can be loaded on a CPU).

Each such buffer is handed to a ``sink`` that names it by its content hash and
writes it once; the pickle records the list of names. Loading reads the
blobs into writable buffers without copying them again.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import sys
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from dagger.errors import CorruptRecordError

BlobSink = Callable[[memoryview], str]
BlobSource = Callable[[str, int], "bytearray | memoryview"]

DEFAULT_THRESHOLD = 64 * 1024

# Per-thread context while loading: torch storages already rebuilt, and the
# map_location chosen by the caller.
_load_ctx = threading.local()


# Classes and functions cloudpickle saves by reference: asking again costs a module lookup each time.
_BY_REFERENCE: set[Any] = set()


_DISPATCH: tuple[int, dict[Any, Any]] | None = None


def _dispatch_table() -> dict[Any, Any]:
    """cloudpickle's reducers over copyreg's, as one dict (its ChainMap costs a Python call per lookup).

    Built again when ``copyreg.dispatch_table`` grows (a reducer registered for a
    new type) and at every run (:func:`refresh_reducers`, for a reducer replaced
    in place). Comparing the two tables whole at every state (about 240 entries
    once Dask is imported) cost 2% of a cold run.
    """
    global _DISPATCH
    if _DISPATCH is None or _DISPATCH[0] != len(copyreg.dispatch_table):
        _DISPATCH = (len(copyreg.dispatch_table), dict(cloudpickle.Pickler.dispatch_table))
    return _DISPATCH[1]


def refresh_reducers() -> None:
    """Read copyreg's reducers again before the next state is pickled (called at every run)."""
    global _DISPATCH
    _DISPATCH = None
    _MAIN_PAYLOADS.clear()


# ---- classes defined in the script being run (``__main__``) ------------------------------
#
# cloudpickle saves a class defined in ``__main__`` by value: a copy of it is rebuilt when the
# state is loaded. A process that did not save the state (a second run of the script, another
# copy of it running beside, a cluster worker) would then hold a *copy* of ``State`` that is
# not the ``State`` its script defines: ``isinstance`` fails and the copy's methods are the
# old ones. So such a class is saved as its qualified name *and* its by-value pickle; loading
# takes the definition live in this process when there is one (``__main__``'s, or one that
# arrived with a task: :func:`prefer_main_class`), and the stored copy only where none is.
# That is how importable classes behave already: by name.

_MAIN_PAYLOADS: dict[type, bytes] = {}
_KNOWN_MAIN: dict[str, type] = {}


def prefer_main_class(cls: type) -> None:
    """Resolve stored ``__main__.<qualname>`` classes to ``cls`` in this process (e.g. on a cluster worker)."""
    if cls.__module__ == "__main__":
        _KNOWN_MAIN[cls.__qualname__] = cls


def _main_class(qualname: str, payload: Any) -> type:
    """The live ``__main__`` class named ``qualname``, else the stored copy of it."""
    obj: Any = sys.modules.get("__main__")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and obj.__module__ == "__main__" and obj.__qualname__ == qualname:
        return obj
    known = _KNOWN_MAIN.get(qualname)
    if known is not None:
        return known
    return cloudpickle.loads(payload)  # one copy per class and process: cloudpickle tracks it by id


class _StatePickler(cloudpickle.Pickler):
    """cloudpickle's pickler, plus blobs and torch storages; reused by its thread, one state at a time."""

    _sink: BlobSink | None
    blobs: list[tuple[str, int]]

    def __init__(self) -> None:
        self.dispatch_table = _dispatch_table()  # before __init__, which reads it once
        self.file = io.BytesIO()
        super().__init__(self.file, protocol=5, buffer_callback=self._out_of_band)
        self.busy = False
        self._end()

    def _begin(self, sink: BlobSink, threshold: int) -> None:
        self.busy = True
        self._sink = sink
        self._threshold = threshold
        self._torch = sys.modules.get("torch")

    def _end(self) -> None:
        """Forget the last state: the memo and every reference to its objects, the bytes written."""
        self.clear_memo()
        self.globals_ref: dict[int, dict[str, Any]] = {}  # cloudpickle: function globals by id, per pickle
        self.file.seek(0)
        self.file.truncate()
        self.blobs = []
        self._storages: dict[tuple[Any, ...], int] = {}
        self._sink = None
        self._threshold = DEFAULT_THRESHOLD
        self._torch = None
        # Last: a Ctrl-C anywhere above leaves the pickler busy, so it is never reused half reset.
        self.busy = False

    def _out_of_band(self, buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < self._threshold:
            return True  # small: keep in band
        assert self._sink is not None  # set for the duration of a dump
        self.blobs.append((self._sink(view), view.nbytes))
        return False

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls is _LargeBytes:
            data = obj.data
            if len(data) >= self._threshold:
                return (_rebuild_bytes, (type(data) is bytes, pickle.PickleBuffer(data)))
            return (_identity, (data,))
        torch = self._torch
        if torch is not None and isinstance(obj, (torch.storage.TypedStorage, torch.UntypedStorage)):
            return self._reduce_storage(obj)
        if cls is types.FunctionType or isinstance(obj, type):
            # cloudpickle decides, per class or function, whether to save it by reference
            # (importable) or by value (e.g. defined in __main__); remember "by reference".
            if obj in _BY_REFERENCE:
                return NotImplemented
            payload = _MAIN_PAYLOADS.get(obj) if cls is not types.FunctionType else None
            if payload is not None:
                return self._main_reduce(obj, payload)
            reduced = super().reducer_override(obj)
            if reduced is NotImplemented:
                if len(_BY_REFERENCE) < 10_000:
                    _BY_REFERENCE.add(obj)
            elif cls is not types.FunctionType and getattr(obj, "__module__", None) == "__main__":
                payload = _MAIN_PAYLOADS[obj] = cloudpickle.dumps(obj, protocol=5)
                return self._main_reduce(obj, payload)
            return reduced
        return NotImplemented  # what cloudpickle answers for every other object

    def _main_reduce(self, obj: type, payload: bytes) -> Any:
        """A ``__main__`` class: its name, and its by-value pickle as a fallback.

        The by-value pickle holds the module globals its methods name (a data set loaded at
        the top of the script, say): a large one leaves the state's pickle as a blob, stored
        once for all the states that share it rather than inside each of them.
        """
        data: Any = payload if len(payload) < self._threshold else pickle.PickleBuffer(payload)
        return (_main_class, (obj.__qualname__, data))

    def _reduce_storage(self, obj: Any) -> Any:
        torch = self._torch
        assert torch is not None  # only called for torch storages
        typed = isinstance(obj, torch.storage.TypedStorage)
        untyped = obj._untyped_storage if typed else obj
        dtype = str(obj.dtype).removeprefix("torch.") if typed else None
        key = (untyped.data_ptr(), str(untyped.device), untyped.nbytes())
        if key in self._storages:
            return (_shared_storage, (self._storages[key], typed, dtype))
        ident = len(self._storages)
        self._storages[key] = ident
        cpu = untyped.cpu() if untyped.device.type != "cpu" else untyped
        flat = torch.empty(0, dtype=torch.uint8)
        if cpu.nbytes():
            flat = flat.set_(cpu)
        data = pickle.PickleBuffer(flat.numpy()) if cpu.nbytes() >= self._threshold else flat.numpy().tobytes()
        return (_rebuild_storage, (ident, data, typed, dtype, str(untyped.device)))


# Each thread's pickler, reused from state to state: building one costs as much as pickling a small state.
_PICKLERS = threading.local()
# Only after a small pickle: clear_memo() empties the memo table but never shrinks it, and zeroes
# all of it at every later dump. A pickle of at most this many bytes memoized at most about half
# as many objects (each costs a byte or more), so the table kept stays small.
_REUSE_MAX_BYTES = 2048


def dumps(obj: Any, sink: BlobSink, threshold: int = DEFAULT_THRESHOLD) -> tuple[bytes, list[tuple[str, int]]]:
    """Pickle ``obj``; return the pickle and the ``(blob hash, size)`` of each out-of-band buffer."""
    cached: _StatePickler | None = getattr(_PICKLERS, "pickler", None)
    if cached is not None and not cached.busy and cached.dispatch_table is _dispatch_table():
        p = cached
    else:
        p = _StatePickler()
        if cached is None or not cached.busy:
            _PICKLERS.pickler = p  # not while a dump in progress (a reducer pickling a state) holds it
    try:
        p._begin(sink, threshold)
        p.dump(obj)
        data = p.file.getvalue()
        if len(data) > _REUSE_MAX_BYTES and getattr(_PICKLERS, "pickler", None) is p:
            _PICKLERS.pickler = None  # a large memo table: the next state gets a new pickler
        return data, p.blobs
    finally:
        # The memo keeps every pickled object (the whole state, large arrays included) alive:
        # release them now, not at the next state.
        p._end()


def loads(data: bytes | memoryview, blobs: Sequence[tuple[str, int]], source: BlobSource, map_location: Any = None) -> Any:
    """Unpickle a state pickled by :func:`dumps`, reading its blobs through ``source``."""
    buffers = [source(name, size) for name, size in blobs]
    previous = getattr(_load_ctx, "frame", None)
    _load_ctx.frame = {"storages": {}, "map_location": map_location}
    try:
        return pickle.loads(data, buffers=buffers)
    except (pickle.UnpicklingError, EOFError, IndexError) as exc:
        raise CorruptRecordError(f"the state pickle is truncated or corrupt ({exc})") from exc
    finally:
        _load_ctx.frame = previous


class _LargeBytes:
    """Marks a top-level bytes attribute, which the C pickler would otherwise keep in band."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        return (_identity, (self.data,))


def wrap_large_bytes(value: Any) -> Any:
    """Let a large ``bytes`` attribute of a state leave the pickle as a blob."""
    if (type(value) is bytes or type(value) is bytearray) and len(value) >= 4096:
        return _LargeBytes(value)
    return value


def _identity(value: Any) -> Any:
    return value


def _rebuild_bytes(as_bytes: bool, buf: Any) -> bytes | bytearray:
    return bytes(buf) if as_bytes else bytearray(buf)


def _target_device(saved: str) -> str:
    """Where to put a storage saved on ``saved``, honouring ``map_location``."""
    frame = getattr(_load_ctx, "frame", None) or {}
    loc = frame.get("map_location")
    if callable(loc):
        return str(loc(saved))
    if isinstance(loc, dict):
        return str(loc.get(saved, saved))
    if loc is not None:
        return str(loc)
    if saved.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            warnings.warn(
                f"a tensor was saved on {saved!r} but CUDA is not available here: loading it on the "
                "CPU. Pass map_location= to restore() to choose the device explicitly.",
                stacklevel=2,
            )
            return "cpu"
    return saved


def _rebuild_storage(ident: int, data: Any, typed: bool, dtype: str | None, device: str) -> Any:
    import torch

    buf = data if isinstance(data, (bytearray, memoryview)) else bytearray(data)
    if len(buf):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read-only buffer warning: ours are writable
            untyped = torch.frombuffer(buf, dtype=torch.uint8).untyped_storage()
    else:
        untyped = torch.UntypedStorage(0)
    target = _target_device(device)
    if target != "cpu":
        untyped = untyped.to(device=target)
    frame = getattr(_load_ctx, "frame", None)
    if frame is not None:
        frame["storages"][ident] = untyped
    return _typed(untyped, typed, dtype)


def _shared_storage(ident: int, typed: bool, dtype: str | None) -> Any:
    frame = getattr(_load_ctx, "frame", None)
    if frame is None or ident not in frame["storages"]:
        raise CorruptRecordError("a shared torch storage refers to one not yet loaded")
    return _typed(frame["storages"][ident], typed, dtype)


def _typed(untyped: Any, typed: bool, dtype: str | None) -> Any:
    if not typed:
        return untyped
    import torch

    return torch.storage.TypedStorage(wrap_storage=untyped, dtype=getattr(torch, dtype or "uint8"), _internal=True)
