"""Helpers for tests that read, edit, damage or remove a state's commit record, in either layout.

A commit record is a ``meta/<sha>.<rev>.json`` file (layout 2) or a frame in a
segment (``segments/*.seg``, layout 3). Tests of what readers do with a damaged
or hostile record (bad JSON, wrong types, another state's pickle, a cycle) use
these helpers, so that the same test holds on whichever layout the experiment
uses. An edit of a segment record rewrites its segment with that one frame's
payload replaced, under a valid CRC: the reader sees a whole record with bad
content, as a hostile edit or a buggy writer would leave it. (A frame whose
CRC fails is a torn tail, and the segment tests cover that.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from dagger.store import LocalStore
from dagger.store import segments as seglog
from dagger.store.layout import SEGMENTS, meta_key
from dagger.store.records import Records


def _records(directory: str) -> Records:
    return Records(LocalStore(directory))


def _meta_revs(directory: str, sha: str) -> list[str]:
    folder = os.path.join(directory, "meta")
    if not os.path.isdir(folder):
        return []
    return sorted(n[65:-5] for n in os.listdir(folder) if n.startswith(f"{sha}.") and n.endswith(".json"))


def _segment_hits(directory: str, sha: str) -> list[tuple[str, str]]:
    """``(rev, segment name)`` of every whole record of ``sha`` in the segments (tombstones left out)."""
    hits = []
    for name, scan in seglog.scan_segments(LocalStore(directory)):
        hits += [(r.rev, name) for r in scan.records if r.key == sha and not r.deleted]
    return sorted(hits)


def revs(directory: str, sha: str) -> list[str]:
    """Every stored revision of ``sha``'s record, oldest first (``meta/`` files and segment records)."""
    return sorted(set(_meta_revs(directory, sha)) | {rev for rev, _ in _segment_hits(directory, sha)})


def newest_rev(directory: str, sha: str) -> str:
    found = revs(directory, sha)
    assert found, f"state {sha[:12]} has no commit record"
    return found[-1]


def in_segments(directory: str, sha: str, rev: str | None = None) -> bool:
    """Whether ``sha``'s record (newest, or at ``rev``) is a segment frame rather than a ``meta/`` file."""
    rev = rev or newest_rev(directory, sha)
    return rev not in _meta_revs(directory, sha)


def label(directory: str, sha: str, rev: str | None = None) -> str:
    """How dagger's messages name the record: its ``meta/`` file, or ``segments/<sha>.<rev>``."""
    rev = rev or newest_rev(directory, sha)
    return f"{SEGMENTS}/{sha}.{rev}" if in_segments(directory, sha, rev) else meta_key(sha, rev)


def read_bytes(directory: str, sha: str, rev: str | None = None) -> bytes:
    """The raw bytes of ``sha``'s record (newest, or at ``rev``)."""
    rev = rev or newest_rev(directory, sha)
    if not in_segments(directory, sha, rev):
        with open(os.path.join(directory, meta_key(sha, rev)), "rb") as f:
            return f.read()
    for _, scan in seglog.scan_segments(LocalStore(directory)):
        for r in scan.records:
            if r.key == sha and r.rev == rev and not r.deleted:
                return bytes(r.payload)
    raise FileNotFoundError(f"{sha}.{rev}")


def read_json(directory: str, sha: str, rev: str | None = None) -> dict[str, Any]:
    return json.loads(read_bytes(directory, sha, rev))


def _rewrite_segment(directory: str, name: str, change: Callable[[list[seglog.SegmentRecord]], list]) -> None:
    """Write segment ``name`` again with ``change(records)`` as its records, keeping its seal and compression."""
    path = os.path.join(directory, SEGMENTS, name)
    with open(path, "rb") as f:
        raw = f.read()
    scan = seglog.decode_segment(raw)
    frames = bytearray()
    kept = change(list(scan.records))
    for r in kept:
        frames += seglog.encode_frame(seglog.DELETE if r.deleted else seglog.RECORD, r.key, r.rev, r.payload)
    if scan.sealed:
        frames += seglog.encode_frame(seglog.SEAL, "seal", f"{len(kept):x}")
    data = seglog.compress_segment(frames) if scan.compressed else bytes(frames)
    if not scan.compressed and scan.torn_bytes:
        data += raw[scan.whole_bytes :]
    tmp = f"{path}.edit"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_bytes(directory: str, sha: str, data: bytes, rev: str | None = None) -> str:
    """Replace ``sha``'s record (newest, or at ``rev``) with ``data``, in place; return its :func:`label`."""
    rev = rev or newest_rev(directory, sha)
    where = label(directory, sha, rev)
    if not in_segments(directory, sha, rev):
        with open(os.path.join(directory, meta_key(sha, rev)), "wb") as f:
            f.write(data)
        return where
    for _, name in [hit for hit in _segment_hits(directory, sha) if hit[0] == rev]:
        _rewrite_segment(
            directory,
            name,
            lambda rs: [r._replace(payload=data) if (r.key, r.rev) == (sha, rev) and not r.deleted else r for r in rs],
        )
    return where


def edit_json(directory: str, sha: str, change: Callable[[dict[str, Any]], Any], rev: str | None = None) -> str:
    """Apply ``change`` to ``sha``'s record as JSON (in place, or return a new dict) and store it; return its label."""
    record = read_json(directory, sha, rev)
    changed = change(record)
    record = record if changed is None else changed
    return write_bytes(directory, sha, json.dumps(record, separators=(",", ":")).encode(), rev)


def add_record(directory: str, sha: str, rev: str, data: bytes, like: str | None = None) -> str:
    """Store ``data`` as a new revision ``rev`` of ``sha``'s record, in the layout its newest record uses
    (or, for a state with no record yet, the layout of state ``like``'s); return how messages name it."""
    if not in_segments(directory, like or sha):
        with open(os.path.join(directory, meta_key(sha, rev)), "wb") as f:
            f.write(data)
        return meta_key(sha, rev)
    seglog.write_records(LocalStore(directory), [(sha, rev, data)], fsync=False, compress=False)
    return f"{SEGMENTS}/{sha}.{rev}"


def remove(directory: str, sha: str, rev: str | None = None) -> None:
    """Remove ``sha``'s record at ``rev`` (every revision when None) from wherever it is, as if never written."""
    for found in _meta_revs(directory, sha):
        if rev is None or found == rev:
            os.remove(os.path.join(directory, meta_key(sha, found)))
    for name in {name for found, name in _segment_hits(directory, sha) if rev is None or found == rev}:
        _rewrite_segment(directory, name, lambda rs: [r for r in rs if not (r.key == sha and (rev is None or r.rev == rev))])


def every_sha(directory: str) -> list[str]:
    """The hash of every committed state (either layout)."""
    return sorted(_records(directory).committed())
