"""Canonical, typed, exact hashing of the values that make up a state's identity.

A state's hash is built from the hashes of its parts, never from ``str()`` of
an object (DESIGN §2)::

    root  = H(("dagger.root",   FORMAT_VERSION, state class path, root PROPERTIES[, state VERSION]))
    child = H(("dagger.state",  parent hash,    recipe hash))
    recipe= H(("dagger.recipe", recipe class path, recipe PROPERTIES, VERSION))

(the state class's VERSION only when it is not 0, so that roots keep their hashes).
A ``functools.partial`` is encoded as its function's import path, its positional
arguments and its keyword arguments.

Values are encoded by type dispatch (walking ``type(obj).__mro__``) into a
stream of tagged, length-prefixed tokens fed straight into SHA-256, so large
values are hashed without building a copy in memory. The encoding is exact
and typed: ``0.1`` and ``0.1000000001`` differ, and so do ``1``, ``1.0``,
``True`` and ``"1"``. Dicts and sets are order-free. numpy and torch encoders
are registered lazily, only once those libraries are imported. All NaNs are one
value, whatever their sign or payload, in Python floats, numpy scalars and arrays
and torch tensors alike (so NaN-filled inputs hash the same however they were made).

Extend it for your own types in either of two ways::

    class Schedule:
        def __dagger_hash__(self):          # return plain, encodable values
            return (self.kind, self.steps)

    @dagger.register_encoder(MyConfig)
    def _(cfg):
        return {"depth": cfg.depth, "width": cfg.width}

An object with no stable encoding raises :class:`~dagger.errors.UnhashableError`;
it is never silently pickled or ``repr``-ed into a hash.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import hashlib
import pathlib
import struct
import sys
import types
import uuid
from collections.abc import Callable
from typing import Any

from dagger.errors import DaggerWarning, UnhashableError

#: Bump only with a migration: every stored hash depends on it.
FORMAT_VERSION = 1

Encoder = Callable[[Any], Any]

_pack_len = struct.Struct(">Q").pack
_pack_double = struct.Struct(">d").pack

# Exact-type and MRO dispatch table: type -> function(hasher, obj, state).
_dispatch: dict[type, Callable[[Any, Any, _Walk], None]] = {}
# User encoders: type -> function(obj) returning an encodable value.
_user_encoders: dict[type, Encoder] = {}
# Classes given to register_encoder(cls) whose returned decorator was never applied.
_pending: dict[type, bool] = {}
# Top-level module name -> function registering that library's encoders.
_lazy: dict[str, Callable[[], None]] = {}


def register_encoder(cls: type, fn: Encoder | None = None) -> Any:
    """Register ``fn(obj) -> encodable`` as the encoding of instances of ``cls``.

    The function returns plain values (numbers, strings, tuples, dicts, ...)
    that stand for the object; they are encoded in turn, tagged with the
    class's import path. Subclasses use the encoder of their nearest base.
    Use it as a decorator, or call it with the function::

        @dagger.register_encoder(Fraction)
        def _(f):
            return (f.numerator, f.denominator)

        dagger.register_encoder(Fraction, lambda f: (f.numerator, f.denominator))

    ``register_encoder(cls)`` alone registers nothing until the function it
    returns is applied to an encoder; dagger warns when that decorator is
    dropped unused, and hashing an instance of ``cls`` then says so.
    """
    if not isinstance(cls, type):
        raise TypeError(
            f"register_encoder takes the class first, not {cls!r}: write @dagger.register_encoder(MyClass) "
            "above the encoder function, or call dagger.register_encoder(MyClass, fn)"
        )
    if fn is not None:
        _set_encoder(cls, fn)
        return fn
    _pending[cls] = True
    return _EncoderDecorator(cls)


def _set_encoder(cls: type, fn: Any) -> None:
    if not callable(fn):
        raise TypeError(f"the encoder for {cls.__name__} must be a function fn(obj) returning plain values, not {fn!r}")
    _user_encoders[cls] = fn
    _pending.pop(cls, None)
    _dispatch.pop(cls, None)
    _resolved.clear()


class _EncoderDecorator:
    """What ``register_encoder(cls)`` returns: apply it to the encoder function to register it."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.applied = False

    def __call__(self, *args: Any, **kwargs: Any) -> Encoder:
        if len(args) != 1 or kwargs:
            raise TypeError(
                f"register_encoder({self.cls.__name__}) returns a decorator for the encoder function, called "
                f"here with {len(args)} argument(s){' and keywords' if kwargs else ''}: put "
                f"@dagger.register_encoder({self.cls.__name__}) above a function fn(obj), or call "
                f"dagger.register_encoder({self.cls.__name__}, fn)"
            )
        _set_encoder(self.cls, args[0])
        self.applied = True
        return args[0]  # type: ignore[no-any-return]

    def __del__(self) -> None:
        if not self.applied and _pending.get(self.cls) and sys is not None and sys.meta_path is not None:
            import warnings

            warnings.warn(
                f"dagger.register_encoder({self.cls.__name__}) registered nothing: it returns a decorator. "
                f"Put @dagger.register_encoder({self.cls.__name__}) above an encoder function fn(obj), or call "
                f"dagger.register_encoder({self.cls.__name__}, fn)",
                DaggerWarning,
                stacklevel=2,
            )


def object_path(obj: Any) -> str:
    """The import path of a class or function, e.g. ``"mypkg.recipes.TrainRecipe"``."""
    module = getattr(obj, "__module__", None) or "<unknown>"
    if module == "__mp_main__":  # a script's __main__ as re-imported by multiprocessing workers
        module = "__main__"
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "<unnamed>")
    return f"{module}.{qualname}"


def digest(value: Any) -> str:
    """The canonical SHA-256 hex digest of ``value``.

    >>> digest(0.1) == digest(0.1000000001)
    False
    >>> digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    True
    """
    h = hashlib.sha256()
    _Walk(h).feed(value)
    return h.hexdigest()


def root_hash(state_class_path: str, properties: dict[str, Any], version: Any = 0) -> str:
    """Hash of a root state: format version, state class, root PROPERTIES and the class's VERSION.

    The VERSION is part of the hashed tuple only when it is not 0 (the default), so that
    the roots of classes that never set it keep the hashes they always had.
    """
    parts: tuple[Any, ...] = ("dagger.root", FORMAT_VERSION, state_class_path, properties)
    if not (type(version) is int and version == 0):
        parts += (version,)
    try:
        return digest(parts)
    except UnhashableError as exc:
        if exc.path.startswith("[4]"):
            exc.path = "VERSION" + exc.path.removeprefix("[4]")
        exc.path = exc.path.removeprefix("[3]")
        raise


def _str_token(text: str) -> bytes:
    """The encoding of a ``str`` (as ``_enc_str`` feeds it), as bytes."""
    payload = text.encode("utf-8", "surrogatepass")
    return b"S" + _pack_len(len(payload)) + payload


# The constant heads of the state and recipe tuples, encoded once (same bytes as the walk).
_STATE_HEAD = b"T" + _pack_len(3) + _str_token("dagger.state")
_RECIPE_HEADS: dict[str, bytes] = {}


def recipe_hash(recipe_class_path: str, properties: dict[str, Any], version: Any) -> str:
    """Hash of a recipe: its class, its PROPERTIES and its VERSION."""
    if type(recipe_class_path) is str:
        # digest(("dagger.recipe", path, properties, version)), its head encoded once per class.
        head = _RECIPE_HEADS.get(recipe_class_path)
        if head is None:
            head = b"T" + _pack_len(4) + _str_token("dagger.recipe") + _str_token(recipe_class_path)
            if len(_RECIPE_HEADS) < 10_000:
                _RECIPE_HEADS[recipe_class_path] = head
        h = hashlib.sha256(head)
        w = _Walk(h)
        w.feed(properties)
        try:
            w.feed(version)
        except UnhashableError as exc:
            raise _at(exc, "[3]") from None
        return h.hexdigest()
    try:
        return digest(("dagger.recipe", recipe_class_path, properties, version))
    except UnhashableError as exc:
        exc.path = exc.path.removeprefix("[2]")
        raise


def name_path(exc: UnhashableError, owner: str) -> UnhashableError:
    """Turn a path like ``['lr'][0]`` into ``TrainRecipe.lr[0]`` for error messages."""
    key, sep, rest = exc.path.partition("]")
    if sep and key.startswith("['"):
        exc.path = f"{owner}.{key[2:-1]}{rest}"
        exc.message = f"property {key[2:-1]!r} of {owner}: " + exc.message
    return exc


def child_hash(parent: str, recipe: str) -> str:
    """Hash of a child state: fully determined by its parent and its recipe."""
    if type(parent) is str and type(recipe) is str:  # digest(("dagger.state", parent, recipe)), directly
        return hashlib.sha256(_STATE_HEAD + _str_token(parent) + _str_token(recipe)).hexdigest()
    return digest(("dagger.state", parent, recipe))


class _Walk:
    """One traversal: feeds tokens into ``h`` and guards against cycles."""

    __slots__ = ("h", "active")

    def __init__(self, h: Any) -> None:
        self.h = h
        self.active: set[int] = set()

    def feed(self, obj: Any) -> None:
        fn = _resolve(type(obj))
        if fn is None:
            raise _unhashable(obj)
        fn(self.h, obj, self)

    def sub_digest(self, *objs: Any) -> bytes:
        """Digest of one member of an unordered collection (sorted by the caller)."""
        sub = _Walk(hashlib.sha256())
        sub.active = self.active
        for obj in objs:
            sub.feed(obj)
        return sub.h.digest()

    def enter(self, obj: Any) -> None:
        key = id(obj)
        if key in self.active:
            raise UnhashableError(
                f"cannot hash a self-referencing {type(obj).__name__}: it contains itself. "
                "Identity values must be finite trees of plain values; break the cycle."
            )
        self.active.add(key)


_resolved: dict[type, Callable[[Any, Any, _Walk], None] | None] = {}
_BUILTINS = frozenset({int, float, complex, str, bytes, list, tuple, dict, set, frozenset})


def _resolve(cls: type) -> Callable[[Any, Any, _Walk], None] | None:
    try:
        return _resolved[cls]
    except KeyError:
        pass
    if _lazy:
        for base in cls.__mro__:
            register = _lazy.pop(base.__module__.partition(".")[0], None)
            if register is not None:
                register()
    fn = _lookup(cls)
    _resolved[cls] = fn
    return fn


def _lookup(cls: type) -> Callable[[Any, Any, _Walk], None] | None:
    for base in cls.__mro__:
        if base in _user_encoders:
            return _make_user(_user_encoders[base])
    if hasattr(cls, "__dagger_hash__"):
        return _enc_hook
    if issubclass(cls, enum.Enum):
        return _enc_enum
    if dataclasses.is_dataclass(cls):
        return _enc_dataclass
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return _enc_namedtuple
    for base in cls.__mro__:
        if base in _dispatch:
            fn = _dispatch[base]
            return _subclass(fn) if base in _BUILTINS and base is not cls else fn
    return None


def _subclass(fn: Callable[[Any, Any, _Walk], None]) -> Callable[[Any, Any, _Walk], None]:
    """A subclass of a builtin is that builtin tagged with its own class path."""

    def enc(h: Any, obj: Any, w: _Walk) -> None:
        _tok(h, b"s", object_path(type(obj)).encode())
        fn(h, obj, w)

    return enc


def _unhashable(obj: Any) -> UnhashableError:
    path = object_path(type(obj))
    pending = next((base for base in type(obj).__mro__ if base in _pending), None)
    if pending is not None:
        name = pending.__name__
        return UnhashableError(
            f"dagger cannot hash a value of type {path!r}: register_encoder({name}) was called without an "
            "encoder function, so nothing was registered. Put "
            f"@dagger.register_encoder({name}) above a function fn(obj) that returns plain values, or call "
            f"dagger.register_encoder({name}, fn)."
        )
    return UnhashableError(
        f"dagger cannot hash a value of type {path!r}: it has no stable, canonical encoding, "
        "so it cannot be part of a state's identity. Either give the class a "
        "`__dagger_hash__(self)` method that returns plain values (numbers, strings, tuples, "
        f"dicts), or register an encoder:\n\n    @dagger.register_encoder({type(obj).__name__})\n"
        "    def _(obj):\n        return (obj.some_field, obj.other_field)\n\n"
        "Alternatively, keep the value out of PROPERTIES (e.g. in NONHASHED_ATTRIBUTES)."
    )


def _tok(h: Any, tag: bytes, payload: bytes) -> None:
    h.update(tag)
    h.update(_pack_len(len(payload)))
    h.update(payload)


def _register(*classes: type) -> Callable[[Callable[[Any, Any, _Walk], None]], Any]:
    def decorator(fn: Callable[[Any, Any, _Walk], None]) -> Any:
        for cls in classes:
            _dispatch[cls] = fn
        return fn

    return decorator


@_register(type(None))
def _enc_none(h: Any, obj: Any, w: _Walk) -> None:
    h.update(b"N")


@_register(bool)
def _enc_bool(h: Any, obj: bool, w: _Walk) -> None:
    h.update(b"B1" if obj else b"B0")


@_register(int)
def _enc_int(h: Any, obj: int, w: _Walk) -> None:
    _tok(h, b"I", int(obj).to_bytes(obj.bit_length() // 8 + 1, "big", signed=True))


@_register(float)
def _enc_float(h: Any, obj: float, w: _Walk) -> None:
    # Exact bits: no rounding merges distinct learning rates. All NaNs are one value.
    h.update(b"Fnan" if obj != obj else b"F" + _pack_double(obj))


@_register(complex)
def _enc_complex(h: Any, obj: complex, w: _Walk) -> None:
    h.update(b"C")
    _enc_float(h, obj.real, w)
    _enc_float(h, obj.imag, w)


@_register(str)
def _enc_str(h: Any, obj: str, w: _Walk) -> None:
    _tok(h, b"S", obj.encode("utf-8", "surrogatepass"))


@_register(bytes)
def _enc_bytes(h: Any, obj: bytes, w: _Walk) -> None:
    _tok(h, b"Y", obj)


@_register(bytearray, memoryview)
def _enc_bytearray(h: Any, obj: Any, w: _Walk) -> None:
    view = memoryview(obj).cast("B")
    h.update(b"y")
    h.update(_pack_len(view.nbytes))
    h.update(view)


def _sequence(tag: bytes) -> Callable[[Any, Any, _Walk], None]:
    def enc(h: Any, obj: Any, w: _Walk) -> None:
        w.enter(obj)
        h.update(tag)
        h.update(_pack_len(len(obj)))
        for i, item in enumerate(obj):
            try:
                w.feed(item)
            except UnhashableError as exc:
                raise _at(exc, f"[{i}]") from None
        w.active.discard(id(obj))

    return enc


_register(list)(_sequence(b"L"))
_register(tuple)(_sequence(b"T"))


def _unordered(tag: bytes) -> Callable[[Any, Any, _Walk], None]:
    def enc(h: Any, obj: Any, w: _Walk) -> None:
        w.enter(obj)
        members = sorted(w.sub_digest(m) for m in obj)
        h.update(tag)
        h.update(_pack_len(len(members)))
        for m in members:
            h.update(m)
        w.active.discard(id(obj))

    return enc


_register(set)(_unordered(b"E"))
_register(frozenset)(_unordered(b"Z"))


@_register(dict, types.MappingProxyType)
def _enc_dict(h: Any, obj: Any, w: _Walk) -> None:
    w.enter(obj)
    items = []
    for k, v in obj.items():
        try:
            items.append(w.sub_digest(k, v))
        except UnhashableError as exc:
            raise _at(exc, f"[{k!r}]") from None
    items.sort()
    h.update(b"D")
    h.update(_pack_len(len(items)))
    for item in items:
        h.update(item)
    w.active.discard(id(obj))


@_register(type)
def _enc_class(h: Any, obj: type, w: _Walk) -> None:
    _tok(h, b"c", object_path(obj).encode())


@_register(types.FunctionType, types.BuiltinFunctionType, types.MethodType)
def _enc_function(h: Any, obj: Any, w: _Walk) -> None:
    path = object_path(obj)
    if "<lambda>" in path:
        raise UnhashableError(
            f"cannot hash the lambda {path!r}: lambdas have no stable import path. "
            "Define the function with `def` at module level and pass that instead."
        )
    if isinstance(obj, types.MethodType):
        h.update(b"m")
        w.feed(obj.__self__)
    _tok(h, b"f", path.encode())


@_register(functools.partial)
def _enc_partial(h: Any, obj: functools.partial[Any], w: _Walk) -> None:
    # A partial is its function (by import path) and the arguments it binds, keywords order-free.
    h.update(b"p")
    for where, part in ((".func", obj.func), (".args", tuple(obj.args)), (".keywords", dict(obj.keywords))):
        try:
            w.feed(part)
        except UnhashableError as exc:
            raise _at(exc, where) from None


@_register(enum.Enum)
def _enc_enum(h: Any, obj: enum.Enum, w: _Walk) -> None:
    _tok(h, b"e", object_path(type(obj)).encode())
    w.feed(obj.value)


@_register(pathlib.PurePath)
def _enc_path(h: Any, obj: pathlib.PurePath, w: _Walk) -> None:
    # A Windows path is tagged with its flavour, so PureWindowsPath("a\\b") and PurePosixPath("a/b")
    # differ; a POSIX path keeps the encoding it always had.
    tag = b"Pw" if isinstance(obj, pathlib.PureWindowsPath) else b"P"
    _tok(h, tag, obj.as_posix().encode())


@_register(datetime.datetime, datetime.date, datetime.time)
def _enc_datetime(h: Any, obj: Any, w: _Walk) -> None:
    _tok(h, b"t" + type(obj).__name__.encode(), obj.isoformat().encode())


@_register(datetime.timedelta)
def _enc_timedelta(h: Any, obj: datetime.timedelta, w: _Walk) -> None:
    micros = (obj.days * 86_400 + obj.seconds) * 1_000_000 + obj.microseconds
    seconds = micros / 1_000_000  # == obj.total_seconds(), correctly rounded
    if (micros - 1) / 1_000_000 != seconds and (micros + 1) / 1_000_000 != seconds:
        # No other timedelta has these float seconds: the encoding it always had is exact.
        _tok(h, b"ttimedelta", str(seconds).encode())
        return
    # Beyond about 285 years a float no longer tells microseconds apart: encode the exact parts.
    h.update(b"tD")
    for n in (obj.days, obj.seconds, obj.microseconds):
        _enc_int(h, n, w)


@_register(decimal.Decimal)
def _enc_decimal(h: Any, obj: decimal.Decimal, w: _Walk) -> None:
    _tok(h, b"d", str(obj).encode())


@_register(fractions.Fraction)
def _enc_fraction(h: Any, obj: fractions.Fraction, w: _Walk) -> None:
    h.update(b"Q")
    _enc_int(h, obj.numerator, w)
    _enc_int(h, obj.denominator, w)


@_register(uuid.UUID)
def _enc_uuid(h: Any, obj: uuid.UUID, w: _Walk) -> None:
    _tok(h, b"U", obj.bytes)


@_register(range)
def _enc_range(h: Any, obj: range, w: _Walk) -> None:
    h.update(b"R")
    for n in (obj.start, obj.stop, obj.step):
        _enc_int(h, n, w)


def _enc_dataclass(h: Any, obj: Any, w: _Walk) -> None:
    w.enter(obj)
    _tok(h, b"k", object_path(type(obj)).encode())
    fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    try:
        _enc_dict(h, fields, w)
    except UnhashableError as exc:
        raise _at(exc, f"<{type(obj).__name__}>") from None
    w.active.discard(id(obj))


def _enc_hook(h: Any, obj: Any, w: _Walk) -> None:
    w.enter(obj)
    _tok(h, b"H", object_path(type(obj)).encode())
    w.feed(obj.__dagger_hash__())
    w.active.discard(id(obj))


def _make_user(fn: Encoder) -> Callable[[Any, Any, _Walk], None]:
    def enc(h: Any, obj: Any, w: _Walk) -> None:
        w.enter(obj)
        _tok(h, b"X", object_path(type(obj)).encode())
        w.feed(fn(obj))
        w.active.discard(id(obj))

    return enc


def _at(exc: UnhashableError, where: str) -> UnhashableError:
    """Record where inside a container the unhashable value sits."""
    exc.path = where + exc.path
    return exc


def _enc_namedtuple(h: Any, obj: Any, w: _Walk) -> None:
    _tok(h, b"n", object_path(type(obj)).encode())
    _sequence(b"T")(h, obj, w)


# ---- lazily registered libraries -------------------------------------------------

_CHUNK = 1 << 24


def _feed_buffer(h: Any, view: memoryview) -> None:
    view = view.cast("B")
    h.update(_pack_len(view.nbytes))
    for start in range(0, view.nbytes, _CHUNK):
        h.update(view[start : start + _CHUNK])


def _register_numpy() -> None:
    import numpy as np

    @_register(np.ndarray)
    def _enc_ndarray(h: Any, obj: Any, w: _Walk) -> None:
        if obj.dtype.hasobject:
            w.enter(obj)
            _tok(h, b"Ao", repr(obj.shape).encode())
            _sequence(b"L")(h, obj.ravel().tolist(), w)
            w.active.discard(id(obj))
            return
        _tok(h, b"A", f"{obj.dtype.str}|{obj.dtype.descr!r}|{obj.shape!r}".encode())
        contiguous: Any = np.ascontiguousarray(obj)
        if obj.dtype.kind in "fc" and obj.size:
            _feed_floats(h, contiguous)
            return
        _feed_buffer(h, memoryview(contiguous.reshape(-1)).cast("B"))  # reshape: a (0, 3) array too

    def _float_view(arr: Any) -> Any:
        """A contiguous float or complex array as a flat array of its float parts."""
        flat = arr.reshape(-1)
        if arr.dtype.kind == "c":
            flat = flat.view(f"{arr.dtype.str[0]}f{arr.dtype.itemsize // 2}")  # e.g. "<c16" -> "<f8"
        return flat

    def _feed_floats(h: Any, arr: Any) -> None:
        # As _feed_buffer, with every NaN written as the canonical one (as np.nan stores it), so
        # that, as for Python floats, all NaNs are one value whatever their sign or payload.
        flat = _float_view(arr)
        h.update(_pack_len(arr.nbytes))
        step = max(1, _CHUNK // flat.itemsize)
        for start in range(0, flat.size, step):
            chunk = flat[start : start + step]
            nans = np.isnan(chunk)
            if nans.any():
                chunk = chunk.copy()
                chunk[nans] = np.nan
            h.update(memoryview(chunk).cast("B"))

    @_register(np.generic)
    def _enc_npscalar(h: Any, obj: Any, w: _Walk) -> None:
        if obj.dtype.hasobject:
            raise _unhashable(obj)
        data = obj.tobytes()
        if obj.dtype.kind in "fc" and np.isnan(obj):
            flat = _float_view(np.array([obj])).copy()
            flat[np.isnan(flat)] = np.nan
            data = flat.tobytes()
        _tok(h, b"a" + obj.dtype.str.encode(), data)

    @_register(np.dtype)
    def _enc_dtype(h: Any, obj: Any, w: _Walk) -> None:
        _tok(h, b"ad", repr(obj.descr).encode())


def _register_torch() -> None:
    import torch

    @_register(torch.Tensor)
    def _enc_tensor(h: Any, obj: Any, w: _Walk) -> None:
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        t = t.cpu().contiguous()
        _tok(h, b"tt", f"{t.dtype}|{tuple(t.shape)!r}".encode())
        if t.is_floating_point() or t.is_complex():  # all NaNs are one value, as for numpy and floats
            parts = torch.view_as_real(t) if t.is_complex() else t
            nans = parts.isnan()
            if nans.any():
                t = torch.where(nans, torch.full_like(parts, float("nan")), parts).contiguous()
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        raw: Any = flat.numpy()
        _feed_buffer(h, memoryview(raw))

    @_register(torch.dtype, torch.device)
    def _enc_torch_misc(h: Any, obj: Any, w: _Walk) -> None:
        _tok(h, b"td", str(obj).encode())


_lazy["numpy"] = _register_numpy
_lazy["torch"] = _register_torch
# If the library is already imported, there is nothing lazy to gain.
for _name in list(_lazy):
    if _name in sys.modules:
        _lazy.pop(_name)()
