"""Content hashes that name blobs and check pickles.

A blob is named by the hash of its bytes, so saving one costs a hash of every
byte besides writing it. SHA-256 runs at about 1.8 GB/s on one core here,
slower than writing to the page cache (about 4 GB/s), so it, not the disk,
set the speed of saving a large array. BLAKE3 is a cryptographic hash
(256-bit, as collision-resistant as SHA-256 for this purpose) that runs at
about 4.4 GB/s on one core, so hashing now hides behind the write.

An experiment records the algorithm its blobs are named with in
``experiment.json`` (``"blob_hash"``). Experiments written before that key
existed used SHA-256 and still open; new ones use BLAKE3. Both produce 64 hex
digits, so the layout (``blobs/ab/<hex>``) is the same.

State identities are a separate matter: they stay SHA-256 (``dagger.hashing``)
and never depend on this choice.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from dagger.errors import FormatVersionError

#: What new experiments use.
DEFAULT = "blake3"
#: What an experiment whose record names no algorithm used (written before the choice existed).
LEGACY = "sha256"
ALGORITHMS = ("blake3", "sha256")


class Hasher(Protocol):
    def update(self, data: Any, /) -> Any: ...

    def hexdigest(self) -> str: ...


def check(algorithm: Any, where: str = "experiment.json") -> str:
    """``algorithm`` if this dagger knows it, else a clear error."""
    if algorithm not in ALGORITHMS:
        raise FormatVersionError(
            f"{where} names blobs with {algorithm!r}, which this version of dagger does not know "
            f"(it knows {', '.join(ALGORITHMS)}). Upgrade dagger to open this experiment."
        )
    return str(algorithm)


_BLAKE3: Any = None


def hasher(algorithm: str) -> Hasher:
    """A new incremental hasher (``update``, ``hexdigest``)."""
    global _BLAKE3
    if algorithm == "blake3":
        if _BLAKE3 is None:
            from blake3 import blake3

            _BLAKE3 = blake3
        return _BLAKE3()  # type: ignore[no-any-return]
    return hashlib.new(check(algorithm))


def hexdigest(algorithm: str, data: Any) -> str:
    """The hex digest of a bytes-like object (the GIL is released for large inputs)."""
    h = hasher(algorithm)
    h.update(data)
    return h.hexdigest()
