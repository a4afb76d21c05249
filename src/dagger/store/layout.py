"""The on-disk layout of one experiment: every path dagger writes, and the names inside them.

This module is the one place (with ``docs/storage.md``, "Layout") that says where
things live in an experiment folder or bucket::

    experiment.json                 what the experiment is (format, state class, root)
    meta/<sha>.<rev>.json           a commit record (the state's slim metadata), one file per revision
    segments/<writer>.seg           commit records appended by one writer process (see dagger.store.segments)
    states/ab/<sha>.pkl             a state's pickle (header line + pickle), where it has a file
    blobs/cd/<hash>                 content-addressed large buffers, shared by all states
                                    (named by BLAKE3, or SHA-256 in older experiments)
    index.json                      derived: every state's metadata in one file (see dagger.store.index)
    failed/<sha>.json               why a state's last computation failed (see dagger.execution.failure_key)
    locks/states.ranges             advisory per-state locks (kernel byte ranges; see dagger.store.locks)
    locks/<sha>.lock                lock files, where kernel locks are not available
    leases/w-*.json, leases/gc-*    writer leases and gc's marker (see dagger.store.leases)
    tmp/                            in-flight writes (removed by gc)

A state exists once a commit record of it exists: a ``meta/`` file, or a whole
record in a segment. The record is written last, after the pickle and its
blobs, so a crash leaves a complete state or none. Metadata that changes later
(tags, Function results, timings) is written as a new revision ``<rev>``;
readers take the highest. Where records are read and written:
:class:`dagger.store.records.Records` (``write_meta``, ``read_meta``, ``committed``).

A state's first record has the fixed revision :data:`FIRST_REV`. When its
pickle is small (after large buffers left as blobs: the usual case) that
record carries it, base64 in its last field (:data:`INLINE_FIELD`), so
committing a state writes one record. Before a newer revision replaces the
first record, the pickle moves to ``states/ab/<sha>.pkl``; readers look there
first, then in the first record.
"""

from __future__ import annotations

import os
import re
import time

EXPERIMENT_KEY = "experiment.json"
INDEX_KEY = "index.json"
SEGMENTS = "segments"  # the folder of commit-record segments (dagger.store.segments)
_SHA = re.compile(r"[0-9a-f]{64}")
_META_NAME = re.compile(r"([0-9a-f]{64})\.([0-9a-f]{20})\.json")
_META_LINE = re.compile(r"^([0-9a-f]{64})\.([0-9a-f]{20})\.json$", re.MULTILINE)


def is_sha(text: str) -> bool:
    return isinstance(text, str) and bool(_SHA.fullmatch(text))


def is_blob_name(text: str) -> bool:
    """Whether ``text`` can name a blob (a 256-bit hash in hex); stored names are checked before use."""
    return is_sha(text)


def state_key(sha: str) -> str:
    return f"states/{sha[:2]}/{sha}.pkl"


def blob_key(name: str) -> str:
    return f"blobs/{name[:2]}/{name}"


def meta_key(sha: str, rev: str) -> str:
    return f"meta/{sha}.{rev}.json"


#: The revision of every state's first commit record: fixed (and lower than any later one), so
#: whether a state was committed is one probe for one known name.
FIRST_REV = "0" * 20
#: A pickle file of at most this many bytes (header line included) travels inside its state's
#: first commit record, as the record's last field: one file written per state instead of two.
#: Bounded so that records stay small for the readers that read them all (an index rebuild).
INLINE_MAX = 16 * 1024
INLINE_FIELD = "pickle"
#: Where save_pickle leaves a pickle for write_meta to carry (never written as metadata).
PENDING_PICKLE = "_pending_pickle"
#: The layout version in ``experiment.json``: 2 since first commit records may carry pickles.
#: (Records, pickle headers and hashes keep ``FORMAT_VERSION``: the layout changed, not they.)
#: A dagger that reads only layout 1 refuses the folder instead of missing those pickles.
STORE_FORMAT = 2
#: The layout version once commit records are written to segments (``segments/``): a dagger that
#: reads only ``meta/`` files refuses such a folder instead of missing its states (and gc'ing their blobs).
SEGMENT_FORMAT = 3
#: The newest layout this dagger reads.
NEWEST_FORMAT = SEGMENT_FORMAT
#: Commit records go to segments by default: a new experiment is created with layout
#: :data:`SEGMENT_FORMAT`, and an older one moves there at its first new record (its ``meta/`` files
#: stay readable; `dagger migrate` moves them in). Set to 0 to keep writing ``meta/`` files in
#: experiments of an older layout (one that says :data:`SEGMENT_FORMAT` always gets segments).
SEGMENTS_ENV = "DAGGER_SEGMENTS"


def new_rev() -> str:
    return f"{time.time_ns():016x}{os.urandom(2).hex()}"

