"""Which state a stored pickle belongs to, and who wrote it: checked before anything is unpickled.

Every pickle's header names its state (``"sha"``), so a pickle copied into
another state's record, or a state file copied over another, is refused
instead of restored as that state. That binds a pickle to its state against
accidents, not against someone who edits the folder: anyone can rewrite the
header and its checksum.

Against that, an experiment can have a **signing key**
(``Experiment(..., signing_key=...)`` or the ``DAGGER_SIGNING_KEY``
environment variable). Every pickle is then written with an HMAC-SHA256 of the
state's hash, the list of its blobs and the pickle's bytes (``"hmac"`` in the
header), and every pickle is checked against the key before it is unpickled:
one without a valid signature is never loaded (:class:`UntrustedPickleError`,
naming the state and the reason). Blobs are covered by their names, which are
their content hashes, checked on load.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from dagger.errors import UntrustedPickleError

#: The environment variable read when ``Experiment(signing_key=...)`` is not given.
ENV_KEY = "DAGGER_SIGNING_KEY"
_DOMAIN = b"dagger state pickle v1\0"


def resolve_key(key: bytes | str | None) -> bytes | None:
    """The signing key to use: ``key`` (str is UTF-8), else ``$DAGGER_SIGNING_KEY``, else None (no signing)."""
    if key is None:
        key = os.environ.get(ENV_KEY) or None
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or len(key) < 16:
        raise ValueError(
            "a signing key is bytes or a string of at least 16 characters (e.g. secrets.token_hex(32)); "
            f"got {type(key).__name__} of length {len(key) if hasattr(key, '__len__') else '?'}"
        )
    return bytes(key)


def key_id(key: bytes | None) -> str | None:
    """A short public name for a key (never the key): tells processes' Records apart."""
    return None if key is None else hashlib.sha256(b"dagger key id\0" + key).hexdigest()[:16]


def signature(key: bytes, sha: str, blobs_json: str, data: Any) -> str:
    """The HMAC-SHA256 (hex) binding ``data`` (the pickle) and its blob list to state ``sha``."""
    mac = hmac.new(key, _DOMAIN, hashlib.sha256)
    mac.update(sha.encode() + b"\0" + blobs_json.encode() + b"\0")
    mac.update(data)
    return mac.hexdigest()


def blobs_text(blobs: Any) -> str:
    """The blob list as the signature covers it (compact JSON, as the header writes it)."""
    return json.dumps(blobs, separators=(",", ":")) if blobs else "[]"


def check(header: dict[str, Any], sha: str, data: Any, key: bytes | None, where: str) -> None:
    """Refuse, before unpickling, a pickle that names another state or lacks a valid signature.

    ``header`` is the pickle's parsed header line, ``data`` its bytes after the header.
    A header without ``"sha"`` was written before pickles named their state (legacy):
    accepted when no key is set.
    """
    claimed = header.get("sha")
    if claimed is not None and claimed != sha:
        raise UntrustedPickleError(
            f"state {sha[:12]}: {where} holds the pickle of state {str(claimed)[:12]}, not its own: it was "
            "copied from another state. It was not unpickled. Run `dagger verify`; to recompute this state, "
            f"delete meta/{sha}.*.json and run the experiment again"
        )
    if key is None:
        return
    mac = header.get("hmac")
    if not isinstance(mac, str):
        reason = "it carries no signature (written without the key, by an older dagger, or planted)"
    elif claimed is None:
        reason = "its header does not name its state"
    elif not hmac.compare_digest(mac, signature(key, sha, blobs_text(header.get("blobs", [])), data)):
        reason = "its signature does not match (the pickle, its blob list or its state was changed, or another key signed it)"
    else:
        return
    raise UntrustedPickleError(
        f"state {sha[:12]}: refusing to unpickle {where}: {reason}. It is not signed by this experiment's "
        f"signing key. Nothing was loaded. Restore only pickles your key signed; if you trust this folder, "
        f"open it without a key (unset {ENV_KEY})"
    )
