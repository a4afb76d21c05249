"""The shape of a commit record: every field's type, checked on read.

A commit record is plain JSON that anyone can edit. Valid JSON with a wrong
type in one field (``"tags": [{"a": 1}]``, ``"recipe": "str"``) must not
reach the code that browses, tabulates or collects the experiment, where it
would fail far from its cause. :func:`meta_problem` says what is wrong with a
record, in words, or None; :meth:`Records.read_meta
<dagger.store.records.Records.read_meta>` turns that into a
:class:`~dagger.errors.CorruptRecordError`, so the record is skipped with a
warning (browsing) or reported (``verify``) like any other damaged record.

Fields a record does not have are fine (older records lack some); fields
dagger does not know are left alone.
"""

from __future__ import annotations

import re
from typing import Any

_SHA = re.compile(r"[0-9a-f]{64}")


def _is_sha(value: Any) -> bool:
    return type(value) is str and _SHA.fullmatch(value) is not None


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _str_list(value: Any) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _blobs(value: Any) -> bool:
    return type(value) is list and all(
        type(b) is list and len(b) == 2 and _is_sha(b[0]) and type(b[1]) is int and b[1] >= 0 for b in value
    )


def _run(value: Any) -> str | None:
    if type(value) is not dict:
        return "is not an object"
    for key in ("start", "end", "duration"):
        if key in value and value[key] is not None and not _is_number(value[key]):
            return f"has a {key!r} that is not a number"
    if "worker" in value and value["worker"] is not None and type(value["worker"]) is not str:
        return "has a 'worker' that is not a string"
    return None


def _recipe(value: Any) -> str | None:
    if value is None:
        return None
    if type(value) is not dict:
        return "is not an object (or null for a root)"
    for key in ("name", "class"):
        if key in value and type(value[key]) is not str:
            return f"has a {key!r} that is not a string"
    if "properties" in value and value["properties"] is not None and type(value["properties"]) is not dict:
        return "has 'properties' that are not an object"
    for key in ("sha", "source"):
        if key in value and value[key] is not None and type(value[key]) is not str:
            return f"has a {key!r} that is not a string"
    return None


def _optional(check: Any, message: str) -> Any:
    """A field that may hold null (dagger writes null there)."""

    def run(value: Any) -> str | None:
        return None if value is None or check(value) else message

    return run


def _typed(check: Any, message: str) -> Any:
    """A field that, when present, holds a value of its type (never null: readers rely on it)."""

    def run(value: Any) -> str | None:
        return None if check(value) else message

    return run


# field -> a function giving what is wrong with its value (None: nothing).
_FIELDS: dict[str, Any] = {
    "parent": _optional(_is_sha, "is not a state hash (64 hex digits) or null"),
    "depth": lambda v: None if type(v) is int and v >= 0 else "is not a non-negative integer",
    "state_class": _typed(lambda v: type(v) is str, "is not a string"),
    "tags": _typed(_str_list, "is not a list of strings"),
    "properties": _typed(lambda v: type(v) is dict, "is not an object"),
    "created": _typed(_is_number, "is not a number"),
    "recipe": _recipe,
    "explain": _optional(lambda v: type(v) is str, "is not a string"),
    "pickle_bytes": _typed(lambda v: type(v) is int and v >= 0, "is not a non-negative integer"),
    "blobs": _typed(_blobs, "is not a list of [blob name, size] pairs"),
    "results": _typed(lambda v: type(v) is dict, "is not an object"),
    "function_errors": _typed(
        lambda v: type(v) is dict and all(type(e) is str for e in v.values()), "is not an object of strings"
    ),
    "run": _run,
    "status": _typed(lambda v: type(v) is str, "is not a string"),
    "cause": _typed(lambda v: type(v) is str, "is not a string"),
    "environment": _optional(lambda v: type(v) is dict, "is not an object"),
}


def meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the types of a commit record's fields, in words; None if nothing is."""
    get = meta.get
    for name, check in _FIELDS.items():
        if name in meta:
            problem = check(get(name))
            if problem is not None:
                return f"its field {name!r} {problem} ({_short(get(name))})"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parent_problems(parents: dict[str, Any]) -> dict[str, str]:
    """The states whose chain of parents is broken, each with the reason in words.

    ``parents`` maps every stored state to its recorded parent (None for a root).
    A state is broken when following parents from it never reaches a root: the
    chain runs into a cycle (a record names its own child, or itself, as its parent)
    or into a parent that is not stored (dangling). Its descendants are broken too,
    and say which ancestor breaks them. Linear in the number of states, without recursion.
    """
    out: dict[str, str] = {}
    origin: dict[str, tuple[str, str]] = {}  # broken state -> (the state that breaks it, why)
    done: set[str] = set()  # states whose chain is known (fine or broken)
    for start in parents:
        if start in done:
            continue
        path: list[str] = []
        on_path: dict[str, int] = {}
        sha: Any = start
        source: tuple[str, str] | None = None
        while True:
            if sha in done:
                source = origin.get(sha)
                break
            if sha in on_path:  # a cycle: every state on it is broken by it
                cycle = path[on_path[sha] :]
                ring = " -> ".join(s[:12] for s in [*cycle, sha])
                why = (
                    "its record names itself as its parent (a cycle)"
                    if len(cycle) == 1
                    else f"its chain of parents is a cycle ({ring})"
                )
                for s in cycle:
                    out[s] = why
                    origin[s] = (s, why)
                    done.add(s)
                del path[on_path[sha] :]
                source = origin[sha]
                break
            up = parents[sha]
            on_path[sha] = len(path)
            path.append(sha)
            if up is None:
                break
            if up not in parents:
                why = f"its parent {str(up)[:12]} is not in the store (a dangling parent)"
                out[sha] = why
                origin[sha] = (sha, why)
                done.add(sha)
                path.pop()
                source = origin[sha]
                break
            sha = up
        for s in path:
            if source is not None:
                out[s] = f"its ancestor {source[0][:12]} is broken: {source[1]}"
                origin[s] = source
            done.add(s)
    return out
