"""Store maintenance: ``gc`` frees what nothing needs, ``verify`` checks every record.

Both work on a :class:`~dagger.store.records.Records` (any store: local, S3,
memory) and return a report that prints readably and converts to a dict::

    from dagger.store.maintenance import gc, verify

    print(gc(exp.records, dry_run=True))      # what would be freed
    report = verify(exp.records)
    if not report.ok:
        print(report)                          # one line per problem: state, file, what

``gc`` removes blobs no state refers to, leftovers of interrupted writes
(``tmp/``, state pickles never committed), stale locks, superseded metadata
revisions and, only with ``unreachable=True``, states whose chain of parents
does not reach the experiment's root. While another process holds a live lock
(an experiment is running), ``gc`` leaves in-flight data alone: temporary
files, uncommitted pickles and unreferenced blobs may belong to a state being
written, so they are kept and reported as skipped.
"""

from __future__ import annotations

import base64
import errno
import json
from dataclasses import dataclass, field
from typing import Any, cast

from dagger.errors import CorruptRecordError, FormatVersionError, StoreError
from dagger.hashing import FORMAT_VERSION
from dagger.store import audit, digest, segments
from dagger.store._local import LocalStore, linked_folder_error
from dagger.store.base import Store
from dagger.store.leases import WRITER_PREFIX, GcMarker, live
from dagger.store.locks import RANGES_KEY, _is_stale, range_holders
from dagger.store.records import (
    _META_NAME,
    EXPERIMENT_KEY,
    FIRST_REV,
    INDEX_KEY,
    INLINE_FIELD,
    SEGMENTS,
    Records,
    blob_key,
    checksum_matches,
    is_sha,
    meta_key,
    state_key,
)

#: A lock older than this is stale whoever owns it (the default of a run's locks).
LOCK_STALE_AFTER = 6 * 3600.0

_CHUNK = 8 * 1024 * 1024

#: What gc keeps although superseded: a first commit record it cannot read (it may carry the pickle).
UNREADABLE = "unreadable_first_records"

#: gc leaves a temporary file alone until nothing has written to it for this long: writers that
#: hold no state lock (a tag update, a Function's result recorded on a cached state) may be
#: between writing it and renaming it into place, whatever the locks say.
TMP_GRACE_S = 60.0
#: What gc reports as kept for that reason.
RECENT_TMP = "recent_tmp"
#: What gc keeps when a committed state's records are all unreadable: blobs it may need.
UNKNOWN_REFS = "blobs_of_unreadable_states"
#: What gc reports when segments hold damaged bytes (it then keeps every blob and pickle file).
DAMAGED_SEGMENTS = "damaged_segments"

#: gc's categories, in the order reports list them.
GC_KINDS = {
    "blobs": "unreferenced blobs",
    "tmp": "temporary files",
    "orphan_pickles": "uncommitted state pickles",
    "locks": "stale locks",
    "meta_revisions": "superseded metadata revisions",
    "unreachable_states": "unreachable states",
}


def format_bytes(n: int) -> str:
    """A byte count for people: ``"512 B"``, ``"3.4 MiB"``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


# ---- reports ----------------------------------------------------------------------


@dataclass
class GcReport:
    """What :func:`gc` removed (or, with ``dry_run``, would remove).

    ``removed[kind]`` lists the store keys of each kind (see :data:`GC_KINDS`;
    for ``unreachable_states``, the state hashes), ``freed[kind]`` their bytes.
    """

    location: str
    dry_run: bool = False
    removed: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in GC_KINDS})
    freed: dict[str, int] = field(default_factory=lambda: {k: 0 for k in GC_KINDS})
    skipped: dict[str, int] = field(default_factory=dict)
    live_locks: int = 0
    compacted: int = 0  # superseded segment records dropped by compaction

    @property
    def freed_bytes(self) -> int:
        """Bytes freed in all (or that would be freed, in a dry run)."""
        return sum(self.freed.values())

    @property
    def removed_count(self) -> int:
        return sum(len(v) for v in self.removed.values())

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.removed.items()}

    def _add(self, kind: str, key: str, size: int) -> None:
        self.removed[kind].append(key)
        self.freed[kind] += size

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "dry_run": self.dry_run,
            "freed_bytes": self.freed_bytes,
            "removed_count": self.removed_count,
            "counts": self.counts(),
            "bytes": dict(self.freed),
            "removed": {k: list(v) for k, v in self.removed.items()},
            "skipped": dict(self.skipped),
            "live_locks": self.live_locks,
        }

    def __str__(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [f"gc {self.location}" + (" (dry run)" if self.dry_run else "")]
        for kind, label in GC_KINDS.items():
            n = len(self.removed[kind])
            if n:
                lines.append(f"  {verb} {n} {label} ({format_bytes(self.freed[kind])})")
        if not self.removed_count:
            lines.append("  nothing to remove")
        for kind, n in self.skipped.items():
            if kind == UNREADABLE:
                lines.append(
                    f"  kept {n} unreadable superseded commit record(s) that may carry a pickle: run `dagger verify`"
                )
            elif kind == UNKNOWN_REFS:
                lines.append(
                    f"  kept {n} unreferenced blobs: a committed state's records cannot be read, so which blobs "
                    "it needs is unknown (run `dagger verify`)"
                )
            elif kind == DAMAGED_SEGMENTS:
                lines.append(
                    f"  kept every blob and pickle file: {n} segment(s) hold damaged bytes, so which states they "
                    "held is unknown (run `dagger verify --repair`)"
                )
            elif kind == RECENT_TMP:
                lines.append(
                    f"  kept {n} temporary files written in the last {TMP_GRACE_S:.0f} s: a write may still "
                    "be renaming them into place (a later gc removes them)"
                )
            else:
                lines.append(f"  kept {n} {GC_KINDS.get(kind, kind)}: a running experiment may still need them")
        freed = "would free" if self.dry_run else "freed"
        lines.append(f"  {freed} {format_bytes(self.freed_bytes)} in total")
        return "\n".join(lines)


@dataclass(frozen=True)
class Problem:
    """One thing :func:`verify` found wrong: which state (if known), which file, what."""

    file: str
    message: str
    state: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "file": self.file, "message": self.message}

    def __str__(self) -> str:
        who = f"state {self.state[:12]}: " if self.state else ""
        return f"{who}{self.file}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify` checked and every problem it found; ``ok`` when there is none."""

    location: str
    states: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Files that ``verify(repair=True)`` removed.
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __bool__(self) -> bool:
        return self.ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "ok": self.ok,
            "states": self.states,
            "blobs": self.blobs,
            "blob_bytes": self.blob_bytes,
            "problems": [p.to_dict() for p in self.problems],
            "notes": list(self.notes),
            "repaired": list(self.repaired),
        }

    def __str__(self) -> str:
        head = f"verify {self.location}: {self.states} states, {self.blobs} blobs ({format_bytes(self.blob_bytes)}) checked"
        lines = [head]
        if self.ok:
            lines.append("  OK: no problems")
        else:
            lines.append(f"  {len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}:")
            lines.extend(f"  - {p}" for p in self.problems)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ---- helpers ---------------------------------------------------------------------------


def _meta_files(store: Store) -> list[str]:
    names = getattr(store, "names", None)
    entries = names("meta") if names else [k.rsplit("/", 1)[-1] for k in store.list("meta")]
    return sorted(entries)


def _size(store: Store, key: str) -> int:
    try:
        return store.size(key)
    except (FileNotFoundError, OSError):
        return 0


def _parse_header(raw: bytes) -> dict[str, Any]:
    """The JSON header line of a state pickle's bytes; CorruptRecordError if unreadable."""
    newline = raw.find(b"\n")
    if newline < 0:
        raise CorruptRecordError("it has no header line (truncated)")
    try:
        header = json.loads(raw[:newline])
    except ValueError as exc:
        raise CorruptRecordError(f"its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or not isinstance(header.get("format"), int):
        raise CorruptRecordError("its header has no format version")
    if header["format"] > FORMAT_VERSION:
        raise CorruptRecordError(f"it was written by a newer dagger (format {header['format']})")
    blobs = header.get("blobs", [])
    if not isinstance(blobs, list) or not all(
        isinstance(b, list) and len(b) == 2 and is_sha(b[0]) and isinstance(b[1], int) for b in blobs
    ):
        raise CorruptRecordError("its header's blob list is malformed")
    return header


def _blob_digest(store: Store, key: str, algorithm: str) -> tuple[str, int]:
    """Content hash and size of a blob, streamed from disk where the store is local."""
    if isinstance(store, LocalStore):
        h = digest.hasher(algorithm)
        size = 0
        with open(store._path(key), "rb", buffering=0) as f:
            buf = bytearray(_CHUNK)
            view = memoryview(buf)
            while True:
                n = f.readinto(view)
                if not n:
                    break
                h.update(view[:n])
                size += n
        return h.hexdigest(), size
    data = store.get(key)
    return digest.hexdigest(algorithm, data), len(data)


def _live_locks(store: Store, stale: list[str]) -> int:
    """Count live locks; append stale (or half-broken) lock keys to ``stale``."""
    live = 0
    if isinstance(store, LocalStore):
        live += range_holders(store._path(RANGES_KEY))  # kernel locks: only live processes hold them
    for key in store.list("locks"):
        if key == RANGES_KEY:
            continue
        if not key.endswith(".lock"):
            stale.append(key)  # a ".stale" leftover of breaking a lock
            continue
        try:
            raw = store.get(key)
        except FileNotFoundError:
            continue
        if _is_stale(raw, LOCK_STALE_AFTER):
            stale.append(key)
        else:
            live += 1
    return live


def _reachable(metas: dict[str, dict[str, Any]], root: str | None) -> set[str]:
    children: dict[str, list[str]] = {}
    for sha, meta in metas.items():
        parent = meta.get("parent")
        if isinstance(parent, str):
            children.setdefault(parent, []).append(sha)
    if root is None or root not in metas:
        return set()
    seen = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def _blob_names(value: Any) -> set[str] | None:
    """The blob names of a ``[[name, size], ...]`` list as records store it (None if it is not one)."""
    if not isinstance(value, list):
        return None
    return {b[0] for b in value if isinstance(b, list) and len(b) == 2 and is_sha(b[0])}


def _add_state_blobs(records: Records, sha: str, rev: str, out: set[str]) -> bool:
    """Add to ``out`` every blob that a committed record of ``sha`` lists; False if none could be read.

    Its newest commit record (metadata ``blobs``, and the pickle a first record carries),
    the first record's carried pickle where a newer revision exists, and its pickle file:
    the union, so a stray or torn pickle file never hides the blobs the record names.
    """
    store = records.store
    known = False
    for r in dict.fromkeys((rev, FIRST_REV)):
        try:
            record = json.loads(records.record_bytes(sha, r))
        except (FileNotFoundError, ValueError, OSError):
            continue
        if not isinstance(record, dict):
            continue
        names = _blob_names(record.get("blobs"))
        if names is not None:
            out.update(names)
            known = True
        carried = record.get(INLINE_FIELD)
        if isinstance(carried, str):
            try:
                header = _parse_header(base64.b64decode(carried, validate=True))
            except (ValueError, CorruptRecordError):
                continue
            out.update(str(name) for name, _size_ in header.get("blobs", []))
            known = True
    try:
        header = _parse_header(store.get(state_key(sha)))
    except (FileNotFoundError, CorruptRecordError, OSError):
        return known
    out.update(str(name) for name, _size_ in header.get("blobs", []))
    return True


def _sweep(
    records: Records,
    report: GcReport,
    newest: dict[str, str],
    marker: GcMarker | None,
    referenced: set[str],
    unknown: list[str],
    every_tmp: list[str],
    tmp_keys: list[str],
    orphans: list[str],
    blob_keys: list[str],
    remove: Any,
) -> None:
    """Delete the in-flight-able files no state needs, unless a writer holds a lease (gc's steps c, b, d)."""
    store = records.store
    stale: list[str] = []
    writers = live(store, WRITER_PREFIX, stale)
    for key in stale:
        remove("locks", key)  # a writer lease whose process is gone
    # A live state lock also means a run in progress (one of an older dagger, too, that takes no lease).
    busy = writers or report.live_locks
    report.live_locks += writers
    unreferenced = [k for k in blob_keys if k.rsplit("/", 1)[-1] not in referenced]
    if busy:
        for kind, keys in (("tmp", every_tmp), ("orphan_pickles", orphans), ("blobs", unreferenced)):
            if keys:
                report.skipped[kind] = len(keys)
        return
    # States committed since the first listing (their records were written before their leases went).
    for sha, rev in records.committed().items():
        if newest.get(sha) != rev and not _add_state_blobs(records, sha, rev, referenced):
            unknown.append(sha)
        newest.setdefault(sha, rev)
    unreferenced = [k for k in unreferenced if k.rsplit("/", 1)[-1] not in referenced]
    orphans = [k for k in orphans if k.rsplit("/", 1)[-1].removesuffix(".pkl") not in newest]
    if len(every_tmp) > len(tmp_keys):
        report.skipped[RECENT_TMP] = len(every_tmp) - len(tmp_keys)
    if unknown and unreferenced:
        # A committed state whose blobs cannot be read from any record: keep every blob for it.
        report.skipped[UNKNOWN_REFS] = len(unreferenced)
        unreferenced = []
    for kind, keys in (("tmp", tmp_keys), ("orphan_pickles", orphans), ("blobs", unreferenced)):
        for key in keys:
            if marker is not None:
                marker.refresh()
            remove(kind, key)


# ---- gc --------------------------------------------------------------------------------


def gc(records: Records, unreachable: bool = False, dry_run: bool = False) -> GcReport:
    """Remove what no committed state needs; return a :class:`GcReport`.

    Always: blobs no state pickle refers to, ``tmp/`` leftovers, state pickles
    without a commit record, stale locks (owner dead or older than
    :data:`LOCK_STALE_AFTER`) and older metadata revisions. With
    ``unreachable=True`` also every state whose parents do not lead back to
    the experiment's root (with its pickle; its blobs go if no other state
    uses them). ``dry_run=True`` removes nothing and reports what would go.
    """
    store = records.store
    report = GcReport(location=store.url, dry_run=dry_run)
    if isinstance(store, LocalStore):
        # gc deletes what it finds: never through a link to files outside the folder, nor the link itself.
        links = store.links()
        if links:
            raise (
                linked_folder_error(store.root, links[0])
                if len(links) == 1
                else StoreError(
                    errno.ELOOP,
                    f"refusing to gc {store.root}: it holds {len(links)} symbolic links ({', '.join(links[:5])}"
                    f"{', ...' if len(links) > 5 else ''}), and dagger never follows a link out of the experiment "
                    "folder nor deletes what it did not make. Replace each with a real folder (move the files back "
                    "in), or remove it, then run gc again.",
                )
            )

    stale_locks: list[str] = []
    report.live_locks = _live_locks(store, stale_locks)

    # Metadata: newest revision per state, older revisions are superseded.
    newest = records.committed()
    superseded = []
    for name in _meta_files(store):
        m = _META_NAME.fullmatch(name)
        if m is not None and m.group(2) < newest.get(m.group(1), ""):
            superseded.append(meta_key(m.group(1), m.group(2)))

    # Unreachable states.
    doomed: set[str] = set()
    if unreachable:
        metas: dict[str, dict[str, Any]] = {}
        for sha, rev in newest.items():
            try:
                metas[sha] = records.read_meta(sha, rev)
            except (FileNotFoundError, CorruptRecordError):
                metas[sha] = {}
        info = records.read_experiment() or {}
        keep = _reachable(metas, info.get("root"))
        doomed = set(newest) - keep

    kept_states = {sha: newest[sha] for sha in newest if sha not in doomed}

    # Referenced blobs: every blob that any committed record of a kept state lists (its metadata,
    # the pickle its first record carries, its pickle file): a stray or torn file shadows nothing.
    referenced: set[str] = set()
    unknown = [sha for sha, rev in kept_states.items() if not _add_state_blobs(records, sha, rev, referenced)]
    pickles = store.list("states")

    def remove(kind: str, key: str, label: str | None = None) -> None:
        report._add(kind, label or key, _size(store, key))
        if not dry_run:
            store.delete(key)

    for key in stale_locks:
        remove("locks", key)
    for key in superseded:
        m = _META_NAME.fullmatch(key.removeprefix("meta/"))
        if m is not None and m.group(2) == FIRST_REV and not dry_run:
            try:
                records.externalize_pickle(m.group(1))  # the first record may carry the pickle: keep it
            except CorruptRecordError:  # unreadable: kept as it is, for `verify` to report
                report.skipped[UNREADABLE] = report.skipped.get(UNREADABLE, 0) + 1
                continue
        remove("meta_revisions", key)
    for sha in sorted(doomed):
        # The commit record goes first, so a crash here leaves an uncommitted pickle, never a broken state.
        keys = [meta_key(sha, newest[sha]), state_key(sha)]
        report._add("unreachable_states", sha, sum(_size(store, k) for k in keys))
        if not dry_run:
            if records.in_segments(sha):
                records.remove_records(sha, [])  # a tombstone in this process's segment
            for key in keys:
                store.delete(key)

    # In-flight data (see dagger.store.leases for why nothing a state being saved needs goes).
    every_tmp: list[str] = cast("list[str]", store.temp_keys())  # base.py's annotation confuses mypy
    tmp_keys: list[str] = cast("list[str]", store.temp_keys(older_than=TMP_GRACE_S))
    orphans = [k for k in pickles if k.rsplit("/", 1)[-1].removesuffix(".pkl") not in newest]
    damaged_segments = sorted(records._follower.damaged) if records._follower else []
    if damaged_segments:
        # A damaged segment may have held records of states that now read as uncommitted: what they
        # need is unknown, so no blob nor pickle goes until `dagger verify --repair` has dealt with it.
        unknown.extend(f"{SEGMENTS}/{name}" for name in damaged_segments)
        report.skipped[DAMAGED_SEGMENTS] = len(damaged_segments)
        orphans = []
    blob_keys = store.list("blobs")
    if dry_run:  # writes nothing (the folder may be read-only): reads the leases only
        _sweep(records, report, newest, None, referenced, unknown, every_tmp, tmp_keys, orphans, blob_keys, remove)
    else:
        with GcMarker(store) as marker:
            _sweep(
                records, report, newest, marker, referenced, unknown, every_tmp, tmp_keys, orphans, blob_keys, remove
            )
        records._known_blobs.clear()

    if not dry_run:
        # Superseded revisions in segments (and records tombstoned above) go by compaction: idle
        # segments rewritten as one, the newest record of each state kept (see dagger.store.segments).
        done = segments.compact(store)
        report.compacted = done.records_in - done.records_out
        rewritten = bool(done.merged)  # (a new fingerprint: the index is written again to keep it)
    else:
        rewritten = False
    if not dry_run and (doomed or superseded or report.compacted or rewritten):
        try:
            index = records.load_index(on_corrupt=lambda *a: None)  # rewrites the derived index where stale
            if rewritten:
                records.keep_fingerprint(index)  # and where only the segments' fingerprint changed
        except (OSError, CorruptRecordError):
            pass
    return report


# ---- verify ----------------------------------------------------------------------------


def verify(records: Records, repair: bool = False) -> VerifyReport:
    """Check every record of the store; return a :class:`VerifyReport` (``.ok`` when clean).

    Re-hashes every blob; checks that every metadata record parses, has a
    format version and describes the state its file name says; that every
    committed state's pickle exists with a valid header, is complete, and that
    every blob it refers to exists with the recorded size and content hash.
    Each problem names the state and the file. Temporary files and uncommitted
    pickles (leftovers of interrupted writes, removed by ``gc``) are notes, not
    problems.

    ``repair=True`` then removes what is damaged, so that the next run recomputes it: blobs
    whose bytes fail their hash, unreadable commit records, and every record and pickle file of
    a state whose pickle or blobs are damaged or missing (see :func:`_repair`).
    """
    store = records.store
    report = VerifyReport(location=store.url)

    try:
        raw = store.get(EXPERIMENT_KEY)
    except FileNotFoundError:
        report.notes.append(f"{EXPERIMENT_KEY} is missing: no tree was ever defined here")
    else:
        try:
            info = json.loads(raw)
            if not isinstance(info, dict) or not isinstance(info.get("format"), int):
                raise ValueError("no format version")
        except ValueError as exc:
            report.problems.append(Problem(EXPERIMENT_KEY, f"not a valid experiment record ({exc})"))

    doomed: list[str] = []  # what repair removes
    damaged_records: set[str] = set()  # states whose newest segment record is unreadable (repair tombstones it)
    # Every metadata file.
    newest: dict[str, str] = {}
    metas: dict[str, dict[str, Any]] = {}
    for name in _meta_files(store):
        key = f"meta/{name}"
        m = _META_NAME.fullmatch(name)
        if m is None:
            report.problems.append(Problem(key, "file name is not <state hash>.<revision>.json"))
            continue
        sha, rev = m.group(1), m.group(2)
        try:
            meta = records.read_meta(sha, rev)
        except FileNotFoundError:
            continue  # replaced by a newer revision while we looked
        except CorruptRecordError as exc:
            report.problems.append(Problem(key, str(exc).removeprefix(f"{key} ").strip(), sha))
            if not isinstance(exc, FormatVersionError):  # (a newer dagger's record is not damaged)
                doomed.append(key)
            continue
        if rev > newest.get(sha, ""):
            newest[sha] = rev
            metas[sha] = meta
    # Every segment record that is the newest of its state (older ones wait for compaction).
    for sha, record in records.segment_records().items():
        if record.rev <= newest.get(sha, ""):
            continue
        if record.deleted:
            newest.pop(sha, None)
            metas.pop(sha, None)
            continue
        key = f"{SEGMENTS}/{sha}.{record.rev}"
        try:
            meta = records.read_meta(sha, record.rev)
        except FileNotFoundError:
            continue  # compacted away meanwhile: a newer record exists
        except CorruptRecordError as exc:
            report.problems.append(Problem(key, str(exc).removeprefix(f"{key} ").strip(), sha))
            if not isinstance(exc, FormatVersionError):
                damaged_records.add(sha)
            continue
        newest[sha] = record.rev
        metas[sha] = meta
    for name, torn in sorted((records._follower.torn if records._follower else {}).items()):
        report.notes.append(
            f"{SEGMENTS}/{name} ends in {torn} bytes that are not a whole record (a writer killed mid-append, or "
            "damage): ignored; any state they held reads as not computed and the next run computes it"
        )
    damaged_segments = sorted((records._follower.damaged if records._follower else {}).items())
    for name, size in damaged_segments:
        report.problems.append(
            Problem(
                f"{SEGMENTS}/{name}",
                f"holds {size} damaged bytes between whole records (changed on the device, or edited): the records "
                "in them are lost, those around them are read. `dagger verify --repair` rewrites the segment without "
                "them, and the next run recomputes any state they held; until then gc keeps every blob",
            )
        )
    report.states = len(newest)
    audit.check_lineage(report, metas, newest, records.committed(), records.record_key)

    # Blobs: re-hash every one.
    blob_sizes: dict[str, int] = {}
    bad_blobs: dict[str, str] = {}
    for key in sorted(store.list("blobs")):
        name = key.rsplit("/", 1)[-1]
        if not is_sha(name) or key != blob_key(name):
            report.problems.append(Problem(key, "not a blob name (blobs/<2 hex>/<64 hex>)"))
            continue
        try:
            found, size = _blob_digest(store, key, records.blob_hash)
        except FileNotFoundError:
            continue
        report.blobs += 1
        report.blob_bytes += size
        blob_sizes[name] = size
        if found != name:
            bad_blobs[name] = f"content hashes to {found[:12]}..., not its name: the blob was modified or truncated"

    # Every committed state: its pickle and the blobs it refers to.
    users: dict[str, list[str]] = {}
    legacy: list[str] = []  # states whose pickle predates naming its state
    first_state_problem = len(report.problems)
    strays = 0
    for sha in sorted(newest):
        try:
            key, raw = records.read_pickle(sha)
            if key == state_key(sha) and _shadows(records, sha, raw):
                strays += 1  # a damaged pickle file beside the intact pickle its record carries
                doomed.append(key)
                key, raw = records.read_pickle_carried(sha)
        except FileNotFoundError:
            report.problems.append(
                Problem(state_key(sha), "the state pickle is missing although the state is committed", sha)
            )
            continue
        except CorruptRecordError as exc:  # a first record whose pickle field is damaged
            report.problems.append(
                Problem(records.record_key(sha, FIRST_REV), f"the state pickle is corrupt: {exc}", sha)
            )
            continue
        try:
            header = _parse_header(raw)
        except CorruptRecordError as exc:
            report.problems.append(Problem(key, f"the state pickle is corrupt: {exc}", sha))
            continue
        expected = metas[sha].get("pickle_bytes")
        if isinstance(expected, int) and expected != len(raw):
            report.problems.append(
                Problem(key, f"the state pickle has {len(raw)} bytes, its commit record says {expected}", sha)
            )
        elif not raw.endswith(b"."):
            report.problems.append(Problem(key, "the state pickle is truncated (no STOP opcode at its end)", sha))
        elif not checksum_matches(header, memoryview(raw)[raw.find(b"\n") + 1 :]):
            report.problems.append(Problem(key, "the state pickle does not match its checksum (modified)", sha))
        audit.check_binding(report, records, sha, key, header, raw, legacy)
        for name, size in header.get("blobs", []):
            users.setdefault(name, []).append(sha)
            bkey = blob_key(name)
            if name not in blob_sizes:
                report.problems.append(Problem(bkey, "blob is missing", sha))
            elif blob_sizes[name] != size:
                report.problems.append(
                    Problem(bkey, f"blob has {blob_sizes[name]} bytes, the state expects {size}", sha)
                )
            elif name in bad_blobs:
                report.problems.append(Problem(bkey, bad_blobs[name], sha))
    for name, message in bad_blobs.items():
        if name not in users:
            report.problems.append(Problem(blob_key(name), message + " (no state uses it)"))
    damaged = {p.state for p in report.problems[first_state_problem:] if p.state}
    doomed.extend(blob_key(name) for name in bad_blobs)
    if strays:
        report.notes.append(
            f"{strays} damaged state pickle files shadow nothing: their states' commit records carry intact "
            "pickles, which restore uses (`verify --repair` removes the damaged files)"
        )

    audit.note_legacy(report, legacy, records)
    audit.check_index(report, records, metas, newest)

    # Leftovers: not problems, but worth a note.
    leftovers = len(store.temp_keys())
    orphans = sum(1 for k in store.list("states") if k.rsplit("/", 1)[-1].removesuffix(".pkl") not in newest)
    unused = sum(1 for n in blob_sizes if n not in users)
    for count, what in (
        (leftovers, "temporary files"),
        (orphans, "uncommitted state pickles"),
        (unused, "unreferenced blobs"),
    ):
        if count:
            report.notes.append(f"{count} {what} (leftovers of interrupted or replaced writes; `gc` removes them)")
    if store.exists(INDEX_KEY):
        try:
            json.loads(store.get(INDEX_KEY))
        except (ValueError, FileNotFoundError):
            report.notes.append(f"{INDEX_KEY} is unreadable; it is derived and will be rebuilt on the next restore")
    if repair and (doomed or damaged or damaged_records or damaged_segments):
        _repair(records, report, doomed, damaged | damaged_records, [name for name, _ in damaged_segments])
    return report


def _shadows(records: Records, sha: str, raw: bytes) -> bool:
    """Whether ``raw``, the bytes of ``sha``'s pickle file, is damaged while its first record carries an intact pickle."""
    try:
        header = _parse_header(raw)
        if raw.endswith(b".") and checksum_matches(header, memoryview(raw)[raw.find(b"\n") + 1 :]):
            return False
    except FormatVersionError:
        return False
    except CorruptRecordError:
        pass
    return records._intact_carried(sha) is not None


def _repair(
    records: Records,
    report: VerifyReport,
    doomed: list[str],
    damaged: set[str],
    damaged_segments: list[str],
) -> None:
    """Remove damaged files so that the next run recomputes what they held (``verify(repair=True)``).

    ``doomed``: blobs whose bytes fail their hash, unreadable commit records, damaged pickle
    files that an intact carried pickle makes redundant. ``damaged``: states whose pickle or
    blobs are damaged or missing; each loses its commit records (all revisions) and pickle file,
    so it counts as never computed, and the next run computes it again and writes every blob it
    needs anew. Done under gc's marker, and only while no run is saving states (a writer's
    lease is live), so that no blob a writer just replaced is removed.
    """
    store = records.store
    with GcMarker(store):
        writers = live(store, WRITER_PREFIX)
        if writers:
            report.notes.append(
                f"repair skipped: {writers} running experiment(s) are saving states here; run `dagger verify "
                "--repair` again when they have finished"
            )
            return
        names = _meta_files(store)
        keys = list(doomed)
        for sha in sorted(damaged):
            keys.extend(f"meta/{n}" for n in names if n.startswith(f"{sha}."))
            keys.append(state_key(sha))
            if records.in_segments(sha):  # its records in segments: a tombstone hides them all
                report.repaired.extend(records.remove_records(sha, []))
        for key in dict.fromkeys(keys):
            if store.exists(key):
                store.delete(key)
                report.repaired.append(key)
        for name in damaged_segments:  # rewritten with their whole records: the damaged bytes go
            if segments.rewrite_whole(store, name) is not None:
                report.repaired.append(f"{SEGMENTS}/{name}")
            else:
                report.notes.append(
                    f"repair left {SEGMENTS}/{name} as it is: a running process still holds it open (it may append "
                    "to it); run `dagger verify --repair` again once that process has exited"
                )
    records._known_blobs.clear()
    report.notes.append(
        f"repaired: removed {len(report.repaired)} damaged files; {len(damaged)} states will be recomputed by the "
        "next run of the experiment"
    )
