"""Helpers shared by the index tests: a counting store and the primary records' truth."""

from __future__ import annotations

from dagger.store import LocalStore
from dagger.store import records as rec


class CountingStore(LocalStore):
    """A real local store that counts the files it reads, by folder."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.reads: dict[str, int] = {}

    def get(self, key: str) -> bytes:
        folder = key.split("/", 1)[0] if "/" in key else key
        self.reads[folder] = self.reads.get(folder, 0) + 1
        return super().get(key)


def records_of(directory: str) -> dict[str, dict]:
    """Every state's newest metadata, read from its own meta record one by one."""
    records = rec.Records(LocalStore(directory))
    return {sha: records.read_meta(sha, r) for sha, r in records.committed().items()}


def count_records(monkeypatch) -> None:
    """Count, as a CountingStore's ``reads["records"]``, the commit records read through it, in either layout.

    A ``meta/`` file is one ``get``, but a segment is read whole (not through ``get``) and holds
    many records; so what is counted is each record's bytes asked of the store's ``Records``
    (a carried pickle's too: it is read from its record).
    """
    real = rec.Records.record_bytes

    def record_bytes(self, sha, rev):
        reads = getattr(self.store, "reads", None)
        if reads is not None:
            reads["records"] = reads.get("records", 0) + 1
        return real(self, sha, rev)

    monkeypatch.setattr(rec.Records, "record_bytes", record_bytes)
