"""``dagger migrate``: move an experiment's ``meta/<sha>.<rev>.json`` records into one segment.

Experiments written before segments keep working without it: readers read both
layouts (newest revision of each state wins), and new records go where
:meth:`Records.writes_segments <dagger.store.records.Records.writes_segments>`
says. Migrating makes the folder all-segments, so opening it is one listing
and a few reads however many states it holds.

The steps, each safe to interrupt:

1. mark ``experiment.json`` layout :data:`~dagger.store.layout.SEGMENT_FORMAT`
   (a dagger that reads only ``meta/`` then refuses the folder instead of
   missing states), and from then on every writer appends to segments;
2. read the newest record of every state from ``meta/`` (a first record that a
   newer one replaced gives its carried pickle a file first, as gc does);
3. write them all as one compacted segment: written under a hidden name,
   flushed to the device, renamed into place;
4. remove the ``meta/`` files listed in 2, then compact the segments and
   rewrite the index.

A crash before 3 leaves the old layout; between 3 and 4 both, which read the
same (the same revisions); nothing is lost at any point. Unreadable records
are left in ``meta/`` and reported (``dagger verify`` says what they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dagger.errors import CorruptRecordError
from dagger.store import segments
from dagger.store.layout import _META_NAME, FIRST_REV, SEGMENT_FORMAT, SEGMENTS, meta_key
from dagger.store.records import Records


@dataclass
class MigrateReport:
    """What :func:`migrate` did."""

    location: str
    moved: int = 0  # states whose newest record went into the new segment
    removed_files: int = 0  # meta/ files removed
    segment: str | None = None  # the segment written
    left: list[str] = field(default_factory=list)  # meta/ files kept: unreadable (see verify)
    compacted: int = 0  # superseded segment records dropped by the compaction that followed

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __str__(self) -> str:
        lines = [f"migrate {self.location}"]
        if not self.moved and not self.removed_files:
            lines.append("  nothing to migrate: no meta/ records")
        else:
            lines.append(
                f"  {self.moved} states' records moved into {SEGMENTS}/{self.segment}; "
                f"{self.removed_files} meta/ files removed"
            )
        if self.compacted:
            lines.append(f"  compaction dropped {self.compacted} superseded records")
        for key in self.left:
            lines.append(f"  left in place (unreadable; run `dagger verify`): {key}")
        return "\n".join(lines)


def migrate(records: Records) -> MigrateReport:
    """Move every ``meta/`` record into one segment and mark the folder layout 3 (see the module docstring)."""
    store = records.store
    report = MigrateReport(location=store.url)
    info = records.read_experiment()
    if info is not None and info["format"] < SEGMENT_FORMAT:
        records.write_experiment({**info, "format": SEGMENT_FORMAT})
    records.forget_recent()  # (and decide afresh: this folder now writes segments)
    names = records._meta_names()
    listed = set(names)
    newest: dict[str, str] = {}
    for name in names:
        m = _META_NAME.fullmatch(name)
        if m is not None and m.group(2) > newest.get(m.group(1), ""):
            newest[m.group(1)] = m.group(2)
    in_segments = records.segment_records()
    moving: list[tuple[str, str, bytes]] = []
    keep: set[str] = set()
    for sha, rev in sorted(newest.items()):
        found = in_segments.get(sha)
        if found is not None and found.rev >= rev:
            continue  # a segment holds this state's newest record already
        try:
            records.read_meta(sha, rev)  # whole and valid, or left where it is
            if rev != FIRST_REV and f"{sha}.{FIRST_REV}.json" in listed:
                records.externalize_pickle(sha)  # the first record goes: its carried pickle gets a file
            raw = store.get(meta_key(sha, rev))
        except FileNotFoundError:
            continue  # replaced meanwhile by a writer (its newer record is in a segment)
        except CorruptRecordError:
            keep.add(sha)
            report.left.append(meta_key(sha, rev))
            continue
        moving.append((sha, rev, raw))
    if moving:
        report.segment = segments.write_records(store, moving)
        report.moved = len(moving)
    for name in names:
        m = _META_NAME.fullmatch(name)
        if m is None or m.group(1) in keep:
            continue
        store.delete(f"meta/{name}")
        report.removed_files += 1
    done = segments.compact(store)
    report.compacted = done.records_in - done.records_out
    records.forget_recent()
    try:
        index = records.load_index(on_corrupt=lambda *a: None)  # rewrite the derived index where stale
        records.keep_fingerprint(index)  # (the records did not change: the segments' fingerprint did)
    except (OSError, CorruptRecordError):
        pass
    return report
