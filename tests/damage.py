"""Helpers for tests that damage a state's stored pickle, wherever the store keeps it.

A state's first commit record (``meta/<sha>.<FIRST_REV>.json``, or a segment record) carries a small
pickle; the pickle has its own file (``states/ab/<sha>.pkl``) once a newer
revision replaced that record, when it is large, or in older experiments.
Readers look at the file first, so a test that damages "the pickle file" first
gives the pickle its file (:func:`pickle_file`), and a test of the carried
copy edits the record (:func:`edit_carried_pickle`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable

import records_io

from dagger.store import LocalStore
from dagger.store.records import FIRST_REV, INLINE_FIELD, Records, state_key


def pickle_file(directory: str, sha: str) -> str:
    """The path of ``sha``'s own pickle file, moved out of its first commit record if it was carried there."""
    Records(LocalStore(directory)).externalize_pickle(sha)
    path = os.path.join(directory, state_key(sha))
    assert os.path.exists(path), f"state {sha[:12]} has no pickle to give a file"
    return path


def pickle_bytes(directory: str, sha: str) -> bytes:
    """The stored bytes of ``sha``'s pickle (JSON header line + pickle), from wherever it is kept."""
    return Records(LocalStore(directory)).read_pickle(sha)[1]


def carried_record(directory: str, sha: str) -> str:
    """How messages name ``sha``'s first commit record (its ``meta/`` file or its segment record), which must carry its pickle."""
    assert INLINE_FIELD in records_io.read_json(directory, sha, FIRST_REV), f"state {sha[:12]}'s first record carries no pickle"
    return records_io.label(directory, sha, FIRST_REV)


def edit_carried_pickle(directory: str, sha: str, change: Callable[[bytes], bytes]) -> str:
    """Replace the pickle carried by ``sha``'s first commit record with ``change(old bytes)``; return the record's label
    (its ``meta/`` file's key, or ``segments/<sha>.<rev>``: how dagger's messages name it)."""
    carried_record(directory, sha)

    def edit(record: dict) -> None:
        record[INLINE_FIELD] = base64.b64encode(change(base64.b64decode(record[INLINE_FIELD]))).decode()

    return records_io.edit_json(directory, sha, edit, FIRST_REV)


def sole_pickle_file(directory: str, sha: str) -> str:
    """The path of ``sha``'s pickle file once it is the only copy: as after a newer revision replaced the first record.

    :func:`pickle_file` leaves the carried copy in the first record, where readers
    still find it; a test that removes "the pickle" needs the record replaced too.
    """
    records = Records(LocalStore(directory))
    rev = records.committed()[sha]
    if rev == FIRST_REV:
        records.write_meta(records.read_meta(sha, rev), old_rev=rev)  # moves the pickle out first
        records.close()
    path = os.path.join(directory, state_key(sha))
    assert os.path.exists(path) and not Records(LocalStore(directory)).carries_pickle(sha)
    return path


def left_long_ago(path: str, seconds: float = 3600.0) -> str:
    """Date a leftover file (a temporary file of a killed write) ``seconds`` back, past gc's grace period."""
    then = os.stat(path).st_mtime - seconds
    os.utime(path, (then, then))
    return path
