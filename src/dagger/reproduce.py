"""Re-verification: recompute a stored state and compare it with what the store holds.

:meth:`Experiment.reproduce` (and ``dagger reproduce DIR HASH``) loads the
state's parent from the store, runs the state's recipe on it in memory with
the same seeding as a real run, and compares the result with the stored
state attribute by attribute and buffer by buffer. Nothing is written to
the store. A recipe that reads an unseeded source of randomness (the OS
entropy pool, a fresh ``numpy.random.default_rng()``, the clock), data from
outside the state, or a nondeterministic kernel shows up as a difference::

    report = exp.reproduce("3fa9c1")
    if not report.ok:
        print(report)          # which attributes differ, and by how much
"""

from __future__ import annotations

import importlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from dagger.errors import DefinitionError, StateNotFoundError
from dagger.execution import TaskSpec, _compute
from dagger.sourcehash import SourceHashes
from dagger.state import _INTERNAL

_MAX_DEPTH = 60


@dataclass
class Difference:
    """One place where the recomputed state differs from the stored one."""

    path: str  #: where, e.g. ``model['w']`` or ``net{state_dict}['fc.weight']``
    detail: str  #: what differs, e.g. ``values differ at 3 of 6 elements (max |a-b| = 0.02)``
    max_abs: float | None = None  #: the largest absolute difference, for numbers and arrays

    @property
    def attribute(self) -> str:
        """The state attribute the difference lies in."""
        for i, ch in enumerate(self.path):
            if ch in ".[{":
                return self.path[:i]
        return self.path


@dataclass
class ReproduceReport:
    """The outcome of :meth:`Experiment.reproduce`; ``print(report)`` explains it."""

    sha: str
    recipe: str
    rtol: float
    atol: float
    attributes: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    duration: float = 0.0
    #: Whether the recipe's code differs from the code that made the stored state (see dagger.sourcehash).
    code_changed: bool = False

    @property
    def ok(self) -> bool:
        """Whether the recomputed state matches the stored one (within the tolerance)."""
        return not self.differences

    @property
    def differing_attributes(self) -> list[str]:
        """The state attributes with at least one difference, sorted."""
        return sorted({d.attribute for d in self.differences})

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        tol = "exactly" if self.rtol == 0 and self.atol == 0 else f"within rtol={self.rtol:g}, atol={self.atol:g}"
        head = f"state {self.sha[:12]} ({self.recipe}): {len(self.attributes)} attribute(s) compared {tol}"
        if self.ok:
            return f"{head}: reproduced in {self.duration:.2f}s."
        lines = [f"{head}: NOT reproduced, {len(self.differing_attributes)} attribute(s) differ:"]
        if self.code_changed:
            lines.append("  (the recipe's code changed since the state was stored: that alone can explain it)")
        lines.extend(f"  - {d.path}: {d.detail}" for d in self.differences[:50])
        if len(self.differences) > 50:
            lines.append(f"  ... and {len(self.differences) - 50} more")
        lines.append(
            "Common causes: an unseeded source of randomness (os.urandom, np.random.default_rng() without a "
            "seed, time), data read from outside the state, nondeterministic kernels, or a library or code "
            "change since the state was stored."
        )
        return "\n".join(lines)


def reproduce(experiment: Any, sha_or_prefix: str, rtol: float = 0.0, atol: float = 0.0) -> ReproduceReport:
    """Recompute one stored state into memory and compare it with the stored one."""
    start = time.time()
    records = experiment.records
    metas = records.load_all_meta()
    sha = _resolve(metas, sha_or_prefix)
    meta = metas[sha]
    spec = _spec_for(experiment, sha, meta)
    stored = records.load_pickle(sha)
    recomputed = _compute(experiment.runtime, records, spec)
    report = ReproduceReport(sha, spec.label, float(rtol), float(atol))
    report.differences = compare_states(stored, recomputed, rtol, atol, report.attributes)
    recorded = (meta.get("recipe") or {}).get("source")
    if recorded and spec.recipe is not None:
        report.code_changed = SourceHashes()(type(spec.recipe)) not in (None, recorded)
    report.duration = time.time() - start
    return report


def _resolve(metas: dict[str, dict[str, Any]], text: str) -> str:
    text = text.strip().lower()
    if text in metas:
        return text
    found = [sha for sha in metas if sha.startswith(text)] if len(text) >= 4 else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise StateNotFoundError(f"hash prefix {text!r} is ambiguous ({len(found)} states); give more digits")
    raise StateNotFoundError(f"no stored state has hash {text!r} (give at least 4 hex digits of a stored state)")


def _spec_for(experiment: Any, sha: str, meta: dict[str, Any]) -> TaskSpec:
    """What a run would do to compute ``sha``: from this session's definitions, else from its metadata."""
    state_class = experiment.state_class or _import(
        str(meta.get("state_class") or (experiment.info or {})["state_class"])
    )
    promise = experiment._promises.get(sha)
    recipe_meta = meta.get("recipe")
    if promise is not None:
        recipe, properties, init_kwargs = promise.recipe, promise.properties, promise.init_kwargs
    elif recipe_meta is None:
        recipe, properties, init_kwargs = None, dict(meta.get("properties") or {}), {}
    else:
        recipe, properties, init_kwargs = _rebuild_recipe(recipe_meta), {}, None
    label = type(recipe).__name__ if recipe is not None else "root"
    run_meta = {k: v for k, v in meta.items() if k != "rev"}
    return TaskSpec(
        sha=sha,
        parent=meta.get("parent"),
        compute=True,
        state_class=state_class,
        recipe=recipe,
        properties=properties if recipe is None else {},
        init_kwargs=init_kwargs,
        meta=run_meta,
        label=label,
    )


def _rebuild_recipe(recipe_meta: dict[str, Any]) -> Any:
    """The recipe that made a state, from the class path and properties in its metadata."""
    path = str(recipe_meta.get("class"))
    cls = _import(path)
    recipe = cls.__new__(cls)
    for name, value in (recipe_meta.get("properties") or {}).items():
        setattr(recipe, name, value)
    try:
        _, sha = recipe.identity()
    except Exception as exc:  # noqa: BLE001 - explained below
        raise DefinitionError(f"cannot rebuild recipe {path} from the stored metadata ({exc})") from None
    if sha != recipe_meta.get("sha"):
        raise DefinitionError(
            f"recipe {path} cannot be rebuilt exactly from the stored metadata (its properties or VERSION do not "
            "round-trip through JSON): define the tree in this session, then call reproduce on the same Experiment"
        )
    return recipe


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError):
        raise DefinitionError(
            f"cannot import {path!r} to recompute the state: run reproduce where that code is importable, "
            "or on the Experiment that defined the tree"
        ) from None
    return obj


# ---- comparison ---------------------------------------------------------------------------


def compare_states(
    stored: Any, recomputed: Any, rtol: float = 0.0, atol: float = 0.0, attributes: list[str] | None = None
) -> list[Difference]:
    """Every difference between two states, attribute by attribute (``attributes`` collects their names)."""
    a = {k: v for k, v in vars(stored).items() if k not in _INTERNAL}
    b = {k: v for k, v in vars(recomputed).items() if k not in _INTERNAL}
    comparer = _Comparer(rtol, atol)
    if type(stored) is not type(recomputed):
        comparer.differ("<state>", f"type {_tname(stored)} vs {_tname(recomputed)}")
    for name in sorted(set(a) | set(b)):
        if attributes is not None:
            attributes.append(name)
        if name not in b:
            comparer.differ(name, "missing from the recomputed state")
        elif name not in a:
            comparer.differ(name, "not in the stored state")
        else:
            comparer.compare(a[name], b[name], name, 0)
    return comparer.out


class _Comparer:
    """Walks a stored (``a``) and a recomputed (``b``) value side by side, collecting differences.

    ``seen`` pairs are compared once (shared and cyclic references); ``rtol`` and
    ``atol`` loosen float comparisons as in ``numpy.isclose``.
    """

    def __init__(self, rtol: float, atol: float) -> None:
        self.rtol = rtol
        self.atol = atol
        self.out: list[Difference] = []
        # keeps temporaries (state_dict(), ...) alive, so that their ids are not reused
        self.seen: dict[tuple[int, int], Any] = {}

    @property
    def exact(self) -> bool:
        return self.rtol == 0 and self.atol == 0

    def differ(self, path: str, detail: str, magnitude: float | None = None) -> None:
        self.out.append(Difference(path, detail, magnitude))

    def compare(self, a: Any, b: Any, path: str, depth: int) -> None:
        if a is b or depth > _MAX_DEPTH:
            return
        key = (id(a), id(b))
        if key in self.seen:
            return
        self.seen[key] = (a, b)
        if _is_array(a) or _is_array(b):
            return self._arrays(a, b, path)
        if _is_tensor(a) or _is_tensor(b):
            return self._tensors(a, b, path)
        if type(a) is not type(b) and not (_is_number(a) and _is_number(b)):
            return self.differ(path, f"type {_tname(a)} vs {_tname(b)}")
        if isinstance(a, (bool, str, bytes, bytearray, type(None), int)):
            if a != b:
                self.differ(path, f"{_short(a)} vs {_short(b)}")
            return
        if _is_number(a):
            return self._numbers(a, b, path)
        if isinstance(a, dict):
            return self._dicts(a, b, path, depth)
        if isinstance(a, (list, tuple)):
            if len(a) != len(b):
                return self.differ(path, f"length {len(a)} vs {len(b)}")
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                self.compare(x, y, f"{path}[{i}]", depth + 1)
            return
        if isinstance(a, (set, frozenset)):
            if a != b:
                self.differ(path, f"{len(a ^ b)} member(s) differ")
            return
        state_dict = getattr(a, "state_dict", None)
        if callable(state_dict) and _torch_stateful(a):
            self.compare(state_dict(), b.state_dict(), f"{path}{{state_dict}}", depth + 1)
            if getattr(a, "training", None) != getattr(b, "training", None):
                self.differ(f"{path}.training", f"{a.training} vs {b.training}")
            return
        self._objects(a, b, path, depth)

    def _dicts(self, a: dict[Any, Any], b: dict[Any, Any], path: str, depth: int) -> None:
        try:
            same_keys = set(a) == set(b)
        except TypeError:
            same_keys = False
        if same_keys:
            for k in a:
                self.compare(a[k], b[k], f"{path}[{k!r}]", depth + 1)
            return
        if len(a) == len(b) and all(not isinstance(k, (str, int, float, bytes, tuple)) for k in a):
            # keys are objects (e.g. tensors keying an optimizer's state): compare in order
            for i, (x, y) in enumerate(zip(a.values(), b.values(), strict=True)):
                self.compare(x, y, f"{path}[#{i}]", depth + 1)
            return
        try:
            only_a, only_b = sorted(map(repr, set(a) - set(b))), sorted(map(repr, set(b) - set(a)))
        except TypeError:
            only_a, only_b = ["?"], ["?"]
        self.differ(path, f"keys differ: stored only {only_a[:5]}, recomputed only {only_b[:5]}")

    def _objects(self, a: Any, b: Any, path: str, depth: int) -> None:
        if callable(a) and not hasattr(a, "__dict__"):
            if getattr(a, "__qualname__", repr(a)) != getattr(b, "__qualname__", repr(b)):
                self.differ(path, f"{_short(a)} vs {_short(b)}")
            return
        bit_generator = getattr(a, "bit_generator", None)
        if bit_generator is not None:  # numpy Generator
            return self.compare(bit_generator.state, b.bit_generator.state, f"{path}.bit_generator", depth + 1)
        getstate = getattr(a, "getstate", None)
        if callable(getstate) and type(a).__module__ == "random":
            return self.compare(getstate(), b.getstate(), f"{path}.getstate()", depth + 1)
        if hasattr(a, "__dict__") and not isinstance(a, type):
            attrs_a, attrs_b = vars(a), vars(b)
            for name in sorted(set(attrs_a) | set(attrs_b)):
                if name not in attrs_a or name not in attrs_b:
                    self.differ(f"{path}.{name}", "missing on one side")
                else:
                    self.compare(attrs_a[name], attrs_b[name], f"{path}.{name}", depth + 1)
            return
        try:
            equal = a == b
            if isinstance(equal, bool) and (equal or type(a).__eq__ is not object.__eq__):
                if not equal:
                    self.differ(path, f"{_short(a)} vs {_short(b)}")
                return
        except Exception:  # noqa: BLE001 - fall through to the pickled form
            pass
        try:
            ra, rb = a.__reduce_ex__(4), b.__reduce_ex__(4)
        except Exception:  # noqa: BLE001
            if repr(a) != repr(b):
                self.differ(path, f"{_short(a)} vs {_short(b)}")
            return
        self.compare(list(ra[1:]), list(rb[1:]), f"{path}<reduce>", depth + 1)

    def _numbers(self, a: Any, b: Any, path: str) -> None:
        fa, fb = complex(a), complex(b)
        if fa == fb or (_isnan(fa) and _isnan(fb)):
            return
        diff = abs(fa - fb)
        if not math.isnan(diff) and diff <= self.atol + self.rtol * abs(fa):
            return
        self.differ(path, f"{a!r} vs {b!r}", diff)

    def _arrays(self, a: Any, b: Any, path: str) -> None:
        import numpy as np

        if not (_is_array(a) and _is_array(b)):
            return self.differ(path, f"type {_tname(a)} vs {_tname(b)}")
        if a.dtype != b.dtype or a.shape != b.shape:
            return self.differ(path, f"dtype/shape {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        if a.dtype.kind in "fc":
            if self.exact:
                close = (a == b) | (np.isnan(a) & np.isnan(b))
            else:
                close = np.isclose(a, b, rtol=self.rtol, atol=self.atol, equal_nan=True)
        elif a.dtype.kind in "iub":
            if self.exact:
                close = a == b
            else:
                close = np.isclose(a.astype(np.float64), b.astype(np.float64), rtol=self.rtol, atol=self.atol)
        elif a.dtype.hasobject:
            for i, (x, y) in enumerate(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True)):
                self.compare(x, y, f"{path}.flat[{i}]", 1)
            return
        else:
            if a.tobytes() != b.tobytes():
                self.differ(path, "bytes differ")
            return
        bad = int(np.size(close) - np.count_nonzero(close))
        if bad:
            with np.errstate(all="ignore"):
                gap = np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64) - b)
                finite = gap[np.isfinite(gap)]
                max_abs = float(finite.max()) if finite.size else float("nan")
            self.differ(path, f"values differ at {bad} of {a.size} elements (max |a-b| = {max_abs:.3g})", max_abs)

    def _tensors(self, a: Any, b: Any, path: str) -> None:
        if not (_is_tensor(a) and _is_tensor(b)):
            return self.differ(path, f"type {_tname(a)} vs {_tname(b)}")
        ta, tb = a.detach().cpu(), b.detach().cpu()
        if ta.dtype != tb.dtype or tuple(ta.shape) != tuple(tb.shape):
            return self.differ(path, f"dtype/shape {ta.dtype}{list(ta.shape)} vs {tb.dtype}{list(tb.shape)}")
        if ta.is_sparse or tb.is_sparse:
            ta, tb = ta.to_dense(), tb.to_dense()
        import torch

        if ta.dtype.is_floating_point or ta.dtype.is_complex:
            if self.exact:
                close = (ta == tb) | (torch.isnan(ta) & torch.isnan(tb))
            else:
                close = torch.isclose(ta, tb, rtol=self.rtol, atol=self.atol, equal_nan=True)
        elif self.exact:
            close = ta == tb
        else:
            close = torch.isclose(ta.double(), tb.double(), rtol=self.rtol, atol=self.atol)
        bad = int(close.numel() - int(close.sum()))
        if bad:
            gap = (ta.double() - tb.double()).abs() if not ta.dtype.is_complex else (ta - tb).abs().double()
            finite = gap[torch.isfinite(gap)]
            max_abs = float(finite.max()) if finite.numel() else float("nan")
            self.differ(path, f"values differ at {bad} of {ta.numel()} elements (max |a-b| = {max_abs:.3g})", max_abs)


def _isnan(z: complex) -> bool:
    return math.isnan(z.real) or math.isnan(z.imag)


def _is_array(x: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_stateful(x: Any) -> bool:
    """A torch module, optimizer or scheduler: compared through its ``state_dict()``."""
    if type(x).__module__.startswith("torch"):
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    kinds: tuple[type, ...] = (torch.nn.Module, torch.optim.Optimizer)
    scheduler = getattr(torch.optim.lr_scheduler, "LRScheduler", None)
    return isinstance(x, kinds + ((scheduler,) if isinstance(scheduler, type) else ()))


def _is_number(x: Any) -> bool:
    if isinstance(x, bool):
        return False
    if isinstance(x, (int, float, complex)):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.generic) and x.dtype.kind in "iufc"


def _tname(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}" if type(x).__module__ != "builtins" else type(x).__name__


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."
