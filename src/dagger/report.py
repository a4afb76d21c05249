"""RunReport: what one ``exp.run()`` did, state by state."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StateRun:
    """One state in a run: computed, cached, failed or skipped (a parent failed)."""

    sha: str
    recipe: str
    tags: list[str]
    status: str
    duration: float = 0.0
    start: float | None = None
    end: float | None = None
    worker: str | None = None
    error: str | None = None
    traceback: str | None = None
    cause: str | None = None
    function_errors: dict[str, str] = field(default_factory=dict)
    #: Why it was computed rather than served from the store ("never stored", "previous attempt
    #: failed", "recipe code changed", "forced by policy"); None for cached states.
    reason: str | None = None
    #: For a cached state: the run that computed it (start, end, duration, worker), from its metadata.
    stored_run: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class RunReport:
    """The outcome of a run; ``print(report)`` shows it as a table.

    ``states`` lists every state of the run: those that ran (computed, failed,
    skipped, or cached but evaluated by a Function) in start order, then those
    served from the store untouched. The rows of the untouched ones are made on
    first use, from the stored metadata (a fully cached rerun of a large tree
    decodes none of it unless the report is read).
    """

    def __init__(self, states: list[StateRun], start: float, end: float) -> None:
        self._states = list(states)
        self._pending: Callable[[], list[StateRun]] | None = None
        self.start = start
        self.end = end

    @property
    def states(self) -> list[StateRun]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._states.extend(pending())
        return self._states

    def __repr__(self) -> str:
        return f"RunReport({self.summary()})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunReport):
            return NotImplemented
        return (self.states, self.start, self.end) == (other.states, other.start, other.end)

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    @classmethod
    def build(
        cls,
        records: list[dict[str, Any]],
        untouched: list[Any],
        stored: Any,
        start: float,
        end: float,
    ) -> RunReport:
        """The report of a run: ``records`` from its tasks, ``untouched`` promises served from the store.

        ``stored`` maps a hash to its stored metadata (``.get``); the untouched
        states' rows read it when first asked for.
        """
        rows = []
        for rec in records:
            meta = rec.get("meta") or stored.get(rec["sha"]) or {}
            rows.append(
                StateRun(
                    sha=rec["sha"],
                    recipe=rec.get("label", "?"),
                    tags=list(meta.get("tags", rec.get("tags", []))),
                    status=rec["status"],
                    duration=float(rec.get("duration", 0.0)),
                    start=rec.get("start"),
                    end=rec.get("end"),
                    worker=rec.get("worker"),
                    error=rec.get("error"),
                    traceback=rec.get("traceback"),
                    cause=rec.get("cause"),
                    function_errors=rec.get("function_errors") or {},
                    reason=rec.get("reason"),
                    stored_run=meta.get("run") if rec["status"] == "cached" else None,
                )
            )
        report = cls(rows, start, end)
        if untouched:

            def untouched_rows() -> list[StateRun]:
                return [
                    StateRun(
                        sha=promise.sha(),
                        recipe=type(promise.recipe).__name__ if promise.recipe is not None else "root",
                        tags=list(promise.tags),
                        status="cached",
                        stored_run=(stored.get(promise.sha()) or {}).get("run"),
                    )
                    for promise in untouched
                ]

            report._pending = untouched_rows
        return report

    @classmethod
    def from_metadata(cls, metas: Any) -> RunReport:
        """How each stored state was computed (when, how long, where), from slim metadata only.

        ``metas`` is an iterable of metadata dicts or of slim states, e.g.
        ``RunReport.from_metadata(dg.Experiment.restore(path).graph.nodes)``; each
        state appears as ``computed`` with the facts its run recorded.
        """
        rows = []
        for item in metas:
            meta = item.metadata if hasattr(item, "metadata") else item
            run = meta.get("run") or {}
            recipe = meta.get("recipe") or {}
            rows.append(
                StateRun(
                    sha=meta["sha"],
                    recipe=recipe.get("name", "root"),
                    tags=list(meta.get("tags", [])),
                    status="computed",
                    duration=float(run.get("duration") or 0.0),
                    start=run.get("start"),
                    end=run.get("end"),
                    worker=run.get("worker"),
                )
            )
        rows.sort(key=lambda r: (r.start is None, r.start or 0.0))
        starts = [r.start for r in rows if r.start is not None]
        ends = [r.end for r in rows if r.end is not None]
        return cls(rows, min(starts, default=0.0), max(ends, default=0.0))

    def _with(self, status: str) -> list[StateRun]:
        return [s for s in self.states if s.status == status]

    @property
    def computed(self) -> list[StateRun]:
        return self._with("computed")

    @property
    def cached(self) -> list[StateRun]:
        return self._with("cached")

    @property
    def skipped(self) -> list[StateRun]:
        return self._with("skipped")

    @property
    def failures(self) -> list[StateRun]:
        """Failed states, and states whose Functions raised."""
        # Not the untouched states' rows (made on first use): served from the store, they ran nothing.
        return [s for s in self._states if s.status == "failed" or s.function_errors]

    @property
    def duration(self) -> float:
        return self.end - self.start

    def summary(self) -> str:
        parts = [f"{len(self.states)} states", f"{len(self.computed)} computed", f"{len(self.cached)} cached"]
        if self._with("failed"):
            parts.append(f"{len(self._with('failed'))} failed")
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        return ", ".join(parts) + f" in {self.duration:.2f}s"

    def failure_message(self) -> str:
        lines = [f"{len(self.failures)} state(s) failed; every other branch finished and was saved."]
        for s in self.failures:
            tags = f" [{', '.join(s.tags)}]" if s.tags else ""
            if s.status == "failed":
                lines.append(f"  - {s.sha[:12]} {s.recipe}{tags}: {s.error}")
            for name, err in s.function_errors.items():
                lines.append(f"  - {s.sha[:12]} {s.recipe}{tags}: Function {name!r} raised {err}")
        if self.skipped:
            lines.append(f"  ({len(self.skipped)} descendant state(s) were not run because a parent failed.)")
        lines.append("Fix the cause and run again: finished states are served from the store.")
        return "\n".join(lines)

    def table(self, tracebacks: bool = False) -> str:
        """The report as a text table, one row per state, then the summary.

        ``time`` is how long the state took in this run; for a cached state it
        is the stored duration of the run that computed it, in parentheses.
        With ``tracebacks=True`` each failure's traceback follows the table.
        """
        head = ("state", "recipe", "status", "started", "time", "worker", "tags")
        rows = []
        for s in self.states:
            started, took = "-", "-"
            if s.status in ("computed", "failed") and s.start is not None:
                started = time.strftime("%H:%M:%S", time.localtime(s.start))
                took = _seconds(s.duration)
            elif s.stored_run and s.stored_run.get("duration") is not None:
                took = f"({_seconds(float(s.stored_run['duration']))})"
            status = s.status if not s.function_errors else f"{s.status}*"
            tags = ", ".join(s.tags)
            if s.status == "failed" and s.error:
                tags = f"{tags}  ! {s.error.splitlines()[0][:80]}".strip()
            elif s.status == "skipped" and s.cause:
                tags = f"{tags}  (parent {s.cause[:12]} failed)".strip()
            rows.append((s.sha[:12], s.recipe, status, started, took, s.worker or "-", tags))
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
        right = {4}

        def fmt(cells: tuple[str, ...]) -> str:
            out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
            return "  ".join(out).rstrip()

        lines = [fmt(head), "  ".join("-" * w for w in widths)]
        lines += [fmt(r) for r in rows]
        lines.append(self.summary())
        if any(s.function_errors for s in self.states):
            lines.append("* a Function raised on this state (see .failures)")
        if tracebacks:
            for s in self.failures:
                lines.append("")
                lines.append(f"--- {s.sha[:12]} {s.recipe} on {s.worker or '?'}")
                lines.append((s.traceback or s.error or "").rstrip())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per state (e.g. for ``pandas.DataFrame``)."""
        return [s.as_dict() for s in self.states]


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f}h"
    if value >= 60:
        return f"{value / 60:.1f}m"
    return f"{value:.2f}s"
