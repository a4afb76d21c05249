"""Code-change detection: a hash of what a recipe's code does, not of how it is typed.

A state's identity (its hash) is fixed by its parent and its recipe's
PROPERTIES and ``VERSION``, never by the recipe's code, so editing ``run``
would otherwise silently reuse states made by the old code. Each computed
state therefore records its recipe's *source hash* in
``meta["recipe"]["source"]``, and :meth:`Experiment.run` compares it with the
current code before reusing the state (:func:`find_changes`, :func:`check`).

The source hash covers every method and class attribute defined in the
recipe class and in its user-defined base classes, and every plain function
of the same module that those methods call (transitively). Each piece is
parsed and dumped through the syntax tree without line numbers and with
docstrings removed, so reformatting, comments and docstrings are no change::

    >>> source_hash(TrainRecipe)            # doctest: +SKIP
    'c0ffee...'
"""

from __future__ import annotations

import ast
import copyreg
import hashlib
import inspect
import sys
import textwrap
import types
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from dagger.errors import DaggerWarning, DefinitionError, RecipeChangedError

#: What ``Experiment(on_code_change=...)`` accepts.
POLICIES = ("warn", "rerun", "error")

# Class attributes that are bookkeeping, not code.
_SKIP = {
    "__module__",
    "__qualname__",
    "__doc__",
    "__dict__",
    "__weakref__",
    "__firstlineno__",
    "__static_attributes__",
    "__annotations__",
    "__orig_bases__",
    "__parameters__",
    "__abstractmethods__",
    "_abc_impl",
    "__slotnames__",  # added by copyreg once an instance is pickled or copied (see _slotnames_line)
}


def source_hash(cls: type) -> str:
    """The source hash of a recipe class (hex sha256); see the module docstring."""
    parts: list[str] = []
    seen_functions: set[int] = set()
    for klass in cls.__mro__:
        if klass is object or klass.__module__.split(".")[0] == "dagger":
            continue
        parts.append(f"class {klass.__module__}.{klass.__qualname__}")
        names = set(vars(klass)) - _SKIP
        slotnames = _slotnames_line(klass) if klass is cls else None
        if slotnames is not None:
            names.add("__slotnames__")
        for name in sorted(names):
            if name == "__slotnames__":
                parts.append(slotnames)  # type: ignore[arg-type]
                continue
            value = vars(klass)[name]
            functions = _functions_of(value)
            if functions:
                for fn in functions:
                    parts.append(f"def {name}")
                    parts.append(_function_text(fn, seen_functions, parts))
            else:
                parts.append(f"attr {name}={_value_text(value)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _slotnames_line(cls: type) -> str | None:
    """The ``__slotnames__`` line of the recipe class, whether or not Python has added it yet.

    copyreg caches ``__slotnames__`` on a class the first time one of its instances is copied
    or pickled (applying a recipe copies it), so it comes and goes with what the process did,
    not with the code. It is derived from ``__slots__``, which is hashed anyway; the line is
    kept, always, only so that source hashes recorded before it was made stable stay the same.
    Classes that pickle themselves (their own ``__reduce_ex__``, ``__reduce__``,
    ``__getstate__`` or ``__copy__``) never got it, and still don't.
    """
    for hook in ("__reduce_ex__", "__reduce__", "__getstate__"):
        if getattr(cls, hook, None) is not getattr(object, hook, None):
            return None
    if hasattr(cls, "__copy__"):
        return None
    names = cls.__dict__.get("__slotnames__")
    if names is None:
        names = copyreg._slotnames(cls)  # type: ignore[attr-defined]  # what a copy would cache; undone below
        try:
            delattr(cls, "__slotnames__")
        except (AttributeError, TypeError):
            pass
    return f"attr __slotnames__={_value_text(names)}"


def _functions_of(value: Any) -> list[types.FunctionType]:
    if isinstance(value, (staticmethod, classmethod)):
        value = value.__func__
    if isinstance(value, property):
        return [f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType)]
    value = inspect.unwrap(value) if callable(value) else value
    return [value] if isinstance(value, types.FunctionType) else []


def _value_text(value: Any) -> str:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_value_text(v) for v in value]
        if isinstance(value, (set, frozenset)):
            items.sort()
        return f"{type(value).__name__}[{', '.join(items)}]"
    if isinstance(value, dict):
        return "dict{" + ", ".join(sorted(f"{_value_text(k)}: {_value_text(v)}" for k, v in value.items())) + "}"
    if isinstance(value, type):
        return f"type {value.__module__}.{value.__qualname__}"
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def _function_text(fn: types.FunctionType, seen: set[int], parts: list[str]) -> str:
    """The normalized text of ``fn``; same-module functions it calls are appended to ``parts``."""
    seen.add(id(fn))
    tree = _parse(fn)
    if tree is None:
        return _bytecode_text(fn.__code__)
    for called in _called_functions(tree, fn):
        if id(called) not in seen:
            parts.append(f"uses {called.__qualname__}")
            parts.append(_function_text(called, seen, parts))
    return ast.dump(tree, annotate_fields=False, include_attributes=False)


def _parse(fn: types.FunctionType) -> ast.AST | None:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):
        return None
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:  # e.g. a lambda inside an expression: fall back to its bytecode
        return None
    _strip_docstrings(tree)
    return tree


def _strip_docstrings(tree: ast.AST) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    node.body = body[1:] or [ast.Pass()]


def _called_functions(tree: ast.AST, fn: types.FunctionType) -> list[types.FunctionType]:
    """Plain functions of ``fn``'s own module that ``tree`` names (called or passed along)."""
    names = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)})
    scope: dict[str, Any] = {}
    if fn.__closure__:  # functions defined next to a recipe inside another function
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__, strict=True):
            if _filled(cell):
                scope[name] = cell.cell_contents
    out = []
    for name in names:
        value = scope[name] if name in scope else fn.__globals__.get(name)
        if isinstance(value, types.FunctionType) and value.__globals__ is fn.__globals__:
            out.append(value)
    return out


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


def _bytecode_text(code: types.CodeType) -> str:
    consts = [_bytecode_text(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return f"bytecode {sys.version_info[:2]} {code.co_code.hex()} {code.co_names} {consts}"


# ---- comparing stored states with the current code ----------------------------------


class SourceHashes:
    """Source hashes computed at most once per class (one per run)."""

    def __init__(self) -> None:
        self._cache: dict[type, str | None] = {}

    def __call__(self, cls: type) -> str | None:
        if cls not in self._cache:
            try:
                self._cache[cls] = source_hash(cls)
            except Exception:  # noqa: BLE001 - never let detection break a run
                self._cache[cls] = None
        return self._cache[cls]


def find_changes(
    promises: Iterable[Any], recorded_source: Callable[[str], str | None], hashes: SourceHashes
) -> dict[str, str]:
    """``{sha: recipe name}`` of stored states whose recipe code differs from the recorded one.

    ``recorded_source(sha)`` is the source hash a stored state records for its
    recipe, None for states not stored or made by an older dagger (nothing is
    known about the code that made those, so they are not counted).
    """
    changed: dict[str, str] = {}
    for promise in promises:
        recipe = promise.recipe
        if recipe is None:
            continue
        recorded = recorded_source(promise._sha)
        if not recorded:
            continue
        current = hashes(type(recipe))
        if current and recorded != current:
            changed[promise._sha] = type(recipe).__qualname__
    return changed


def summarize(changed: dict[str, str]) -> dict[str, int]:
    """``{recipe name: number of affected states}``, sorted by name."""
    counts: dict[str, int] = {}
    for name in changed.values():
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def describe(changed: dict[str, str]) -> str:
    counts = summarize(changed)
    listed = ", ".join(f"{name} ({n} state{'s' if n != 1 else ''})" for name, n in counts.items())
    return f"the code of {len(counts)} recipe(s) changed since their cached states were computed: {listed}"


def check(policy: str, changed: dict[str, str]) -> None:
    """Tell the user about ``changed`` states according to ``policy`` (warn, or raise for ``"error"``)."""
    if not changed:
        return
    if policy == "error":
        error = RecipeChangedError(
            describe(changed) + ". Bump the recipe's VERSION to recompute, pass on_code_change='rerun' to "
            "recompute the affected states and their subtrees, or on_code_change='warn' to keep the cache."
        )
        error.changed = summarize(changed)  # type: ignore[attr-defined]
        raise error
    if policy == "warn":
        warnings.warn(
            describe(changed) + ". The cached states are reused; pass on_code_change='rerun' to recompute them "
            "(or bump the recipe's VERSION), or on_code_change='error' to stop instead.",
            DaggerWarning,
            stacklevel=4,
        )


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise DefinitionError(f"on_code_change must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    return policy
