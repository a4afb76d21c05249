"""Build a long chain of stored states cheaply: commit records only, written directly (no recipe runs).

Browsing reads metadata only, so a 10,000-deep chain for the read paths needs no
pickles. States alternate between two recipes, each applied thousands of times.
"""

from __future__ import annotations

import hashlib
import time

from dagger.hashing import FORMAT_VERSION
from dagger.store import open_store
from dagger.store.records import STORE_FORMAT, Records


def chain_sha(i: int) -> str:
    return hashlib.sha256(f"chain state {i}".encode()).hexdigest()


def make_chain(directory: str, n: int) -> list[str]:
    """Write a chain of ``n`` states (root first) into ``directory``; return their hashes."""
    records = Records(open_store(directory))
    shas = [chain_sha(i) for i in range(n)]
    records.write_experiment(
        {
            "format": STORE_FORMAT,
            "state_class": "__main__.State",
            "root": shas[0],
            "root_properties": {"name": "chain"},
            "blob_hash": "blake3",
            "created": time.time(),
        }
    )
    for i, sha in enumerate(shas):
        meta = {
            "format": FORMAT_VERSION,
            "sha": sha,
            "parent": shas[i - 1] if i else None,
            "depth": i,
            "state_class": "__main__.State",
            "tags": [f"step:{i % 10}"],
            "properties": {"name": "chain"},
            "created": 1_700_000_000.0 + i,
        }
        if i:
            name = "Train" if i % 2 else "Prune"
            meta["recipe"] = {"name": name, "class": f"__main__.{name}", "properties": {"seed": i}, "version": 0}
            meta["results"] = {"score": {"loss": 1.0 / i}}
        records.write_meta(meta)
    return shas
