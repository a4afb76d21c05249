"""Checks of ``verify`` about what records claim: lineage, which state a pickle belongs to, the index.

:func:`dagger.store.maintenance.verify` checks that files exist, parse and hash
to what they should; the checks here ask whether they say the truth about each
other: every state's chain of parents reaches a root, every pickle names the
state whose record holds it (and, with a signing key, is signed by it), and the
derived ``index.json`` agrees with the commit records it was built from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dagger.errors import UntrustedPickleError
from dagger.store import signing
from dagger.store.validate import parent_problems

if TYPE_CHECKING:
    from dagger.store.maintenance import VerifyReport
    from dagger.store.records import Records


def _problem(file: str, message: str, state: str | None = None) -> Any:
    from dagger.store.maintenance import Problem

    return Problem(file, message, state)


def check_lineage(
    report: VerifyReport,
    metas: dict[str, dict[str, Any]],
    newest: dict[str, str],
    committed: Iterable[str] = (),
    where: Any = None,
) -> None:
    """A problem for each state whose chain of parents is a cycle or ends at a missing parent.

    The states below such a state are counted in its problem, not listed one by one.
    ``committed``: every state with a commit record, readable or not; a parent whose record
    is unreadable is reported as that (elsewhere), not as missing. ``where(sha, rev)``: how to
    name a state's record (default: its ``meta/`` file).
    """
    from dagger.store.records import meta_key

    where = where or meta_key

    parents: dict[str, Any] = dict.fromkeys(committed)  # unreadable records: where a lineage stops, unknown
    parents.update((sha, meta.get("parent")) for sha, meta in metas.items())
    problems = {sha: why for sha, why in parent_problems(parents).items() if sha in metas}
    below: dict[str, int] = {}
    for why in problems.values():
        if why.startswith("its ancestor "):
            origin = why.removeprefix("its ancestor ").split(" ", 1)[0]
            below[origin] = below.get(origin, 0) + 1
    for sha, why in problems.items():
        if why.startswith("its ancestor "):
            continue
        under = below.get(sha[:12], 0)
        extra = f"; {under} state(s) below it have no lineage either" if under else ""
        report.problems.append(_problem(where(sha, newest[sha]), f"its lineage is broken: {why}{extra}", sha))


def check_binding(
    report: VerifyReport, records: Records, sha: str, key: str, header: dict[str, Any], raw: bytes, legacy: list[str]
) -> None:
    """Whether the pickle at ``key`` names state ``sha`` (and, with a signing key, is signed for it)."""
    claimed = header.get("sha")
    if claimed is None:
        legacy.append(sha)
    elif claimed != sha:
        report.problems.append(
            _problem(
                key,
                f"the pickle belongs to state {str(claimed)[:12]}, not to this state: it was copied from another "
                "state (restore refuses it)",
                sha,
            )
        )
        return
    if records.signing_key is not None:
        data = memoryview(raw)[raw.find(b"\n") + 1 :]
        try:
            signing.check(header, sha, data, records.signing_key, key)
        except UntrustedPickleError as exc:
            reason = str(exc).split(": ", 2)[-1].split(". It is not signed")[0]
            report.problems.append(_problem(key, f"the pickle is not signed by the signing key: {reason}", sha))


def note_legacy(report: VerifyReport, legacy: list[str], records: Records) -> None:
    """A note for pickles written before pickles named their state (older dagger): read as before."""
    if legacy and records.signing_key is None:
        report.notes.append(
            f"{len(legacy)} state pickles were written by an older dagger and do not name their state "
            "(legacy: restored as before, but a pickle copied there from another state cannot be detected)"
        )


def check_index(
    report: VerifyReport, records: Records, metas: dict[str, dict[str, Any]], newest: dict[str, str]
) -> None:
    """A problem for each state the derived ``index.json`` describes otherwise than its commit record does.

    The index is rebuilt from the records, so an entry that disagrees with its record at the
    same revision was edited (or damaged): browsing and reruns would believe it.
    """
    from dagger.store.records import INDEX_KEY, SlimIndex

    try:
        raw = records.store.get(INDEX_KEY)
    except OSError:
        return
    index = SlimIndex.parse(records, raw)
    fix = "delete index.json (it is derived: the next restore rebuilds it from the records)"
    for sha, meta in metas.items():
        if sha not in index:
            continue
        entry = index.states.get(sha) if index.lazy else index.decoded.get(sha)
        if not isinstance(entry, dict) or entry.get("rev") != newest.get(sha):
            continue  # stale: refreshed from the records on the next restore
        found = index._from_text(sha, entry) if index.lazy else entry
        differ: list[str] = []
        if found is not None:
            differ = sorted(k for k in set(found) | set(meta) if found.get(k) != meta.get(k))
        if index.lazy:
            i = index._position(sha)
            up = index.parent[i]
            parent = None if up == -1 else (index.shas[up] if up >= 0 else meta.get("parent"))
            for name, value in (("parent", parent), ("depth", index.depth[i]), ("tags", index.tags[i])):
                if value != meta.get(name, 0 if name == "depth" else [] if name == "tags" else None):
                    differ.append(f"{name} (column)")
        if differ:
            report.problems.append(
                _problem(
                    INDEX_KEY,
                    f"the index disagrees with the state's commit record on {', '.join(differ)}: it was edited; "
                    f"the record is the truth. {fix}",
                    sha,
                )
            )
