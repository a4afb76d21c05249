"""RunReport: what one ``exp.run()`` did, state by state."""

from __future__ import annotations

import time
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunReport:
    """The outcome of a run; ``print(report)`` shows it as a table."""

    states: list[StateRun]
    start: float
    end: float

    @classmethod
    def build(
        cls,
        records: list[dict[str, Any]],
        untouched: list[Any],
        stored: dict[str, dict[str, Any]],
        start: float,
        end: float,
    ) -> RunReport:
        rows = []
        for rec in records:
            meta = rec.get("meta") or stored.get(rec["sha"]) or {}
            rows.append(
                StateRun(
                    sha=rec["sha"],
                    recipe=rec.get("label", "?"),
                    tags=list(meta.get("tags", [])),
                    status=rec["status"],
                    duration=float(rec.get("duration", 0.0)),
                    start=rec.get("start"),
                    end=rec.get("end"),
                    worker=rec.get("worker"),
                    error=rec.get("error"),
                    traceback=rec.get("traceback"),
                    cause=rec.get("cause"),
                    function_errors=rec.get("function_errors") or {},
                )
            )
        for promise in untouched:
            rows.append(
                StateRun(
                    sha=promise.sha(),
                    recipe=type(promise.recipe).__name__ if promise.recipe is not None else "root",
                    tags=list(promise.tags),
                    status="cached",
                )
            )
        return cls(rows, start, end)

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
        return [s for s in self.states if s.status == "failed" or s.function_errors]

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

    def __str__(self) -> str:
        header = f"{'state':<12}  {'recipe':<18} {'status':<9} {'time':>8}  {'worker':<22} tags"
        lines = [header, "-" * len(header)]
        for s in self.states:
            when = f"{s.duration:7.2f}s" if s.status in ("computed", "failed") else "       -"
            lines.append(
                f"{s.sha[:12]:<12}  {s.recipe[:18]:<18} {s.status:<9} {when:>8}  {(s.worker or '-')[:22]:<22} "
                f"{', '.join(s.tags)}"
            )
        lines.append(self.summary())
        return "\n".join(lines)

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per state (e.g. for ``pandas.DataFrame``)."""
        return [s.as_dict() for s in self.states]

    @staticmethod
    def now() -> float:
        return time.time()
