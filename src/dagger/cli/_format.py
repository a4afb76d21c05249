"""Text for the commands' output: values, recipe calls, results, statuses, one-line state labels."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from rich.markup import escape

from dagger.state import ExperimentState


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def _recipe_name(meta: dict[str, Any]) -> str:
    recipe = meta.get("recipe")
    return "root" if recipe is None else str(recipe.get("name", "?"))


def _props(meta: dict[str, Any]) -> dict[str, Any]:
    recipe = meta.get("recipe")
    props = meta.get("properties") if recipe is None else recipe.get("properties")
    return dict(props or {})


def _call(meta: dict[str, Any]) -> str:
    """``TrainRecipe(nb_epochs=100, lr=0.1)``, or ``root(dataset_name=...)``."""
    inner = ", ".join(f"{k}={_fmt(v)}" for k, v in _props(meta).items())
    return f"{_recipe_name(meta)}({inner})"


def _flat(results: dict[str, Any]) -> dict[str, Any]:
    """Function results as ``{name: value}``: dict results by key, others by function name."""
    out: dict[str, Any] = {}
    for fn, value in (results or {}).items():
        if isinstance(value, dict):
            for k, v in value.items():
                out[f"{fn}.{k}" if k in out else k] = v
        else:
            out[fn] = value
    return out


def _status(meta: dict[str, Any]) -> str:
    if meta.get("status"):
        return str(meta["status"])
    if meta.get("function_errors"):
        return "function failed"
    return "root" if meta.get("recipe") is None else "done"


def _size(n: int | None) -> str:
    from dagger.store.maintenance import format_bytes

    return "missing" if n is None else format_bytes(n)


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _label(node: ExperimentState, result: str | None = None) -> str:
    """One line of rich markup describing a state."""
    meta = node._meta()
    parts = [f"[bold]{escape(_recipe_name(meta))}[/bold] [dim]{node.sha()[:10]}[/dim]"]
    props = _props(meta)
    if props:
        parts.append(escape(", ".join(f"{k}={_fmt(v)}" for k, v in props.items())))
    if meta.get("tags"):
        parts.append("[magenta]" + escape("[" + ", ".join(meta["tags"]) + "]") + "[/magenta]")
    results = _flat(meta.get("results") or {})
    if result is not None:
        results = {k: v for k, v in results.items() if k == result or k.endswith("." + result)}
    if results:
        parts.append("[cyan]" + escape(" ".join(f"{k}={_fmt(v)}" for k, v in results.items())) + "[/cyan]")
    status = _status(meta)
    colour = {"done": "green", "root": "blue"}.get(status, "red")
    parts.append(f"[{colour}]{escape(status)}[/{colour}]")
    return "  ".join(parts)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: ``{"packages": {"torch": "2.1"}}`` -> ``packages.torch``."""
    if not isinstance(value, dict):
        return {} if value is None else {prefix or "value": value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out
