"""The slim index: ``index.json``, its text format, and reading it lazily.

``index.json`` is derived from the commit records (see :mod:`dagger.store.layout`):
every state's metadata in one file, with columns that browsing and a cached
rerun read without decoding each state. It is rebuilt whenever it does not
match the records. :class:`SlimIndex` reads it, :func:`index_bytes` and
:meth:`StoredMetas.index_bytes` write it; :meth:`Records.load_index
<dagger.store.records.Records.load_index>` brings it up to date.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from dagger.errors import StateNotFoundError
from dagger.hashing import FORMAT_VERSION
from dagger.store.gctune import paused_gc
from dagger.store.validate import meta_problem

if TYPE_CHECKING:
    from dagger.store.records import Records

#: The encoder of commit records and the index (compact; the same text as records are written in).
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=True, default=str)

# index.json is one JSON object, written as
#
#   {"format":"F+index2","states":{sha:{"rev":R,"at":N},...},
#    "columns":{"properties":[P,...],"parent":[...],"depth":[...],"p":[...],"tags":[[...],...],
#               "sources":[S,...],"src":[...]},
#    "metas":[META,...]}
#
# States are in tree order (depth, then creation). "columns" hold, in that
# order, what browsing needs: the parent's place (-1 for a root, -2 when the
# parent is not indexed), the depth, the root properties (a place in the table
# of distinct ones) and the tags; then what a cached rerun needs: the recorded
# source hash of the recipe that made the state (a place in the table of
# distinct ones, -1 for none; optional, as indexes written before it lack it).
# "at" is where the state's full metadata
# starts, counted from just after "metas":[ (the text is ASCII, so characters
# and bytes agree). Opening an experiment parses the head only and decodes a
# state's metadata on first use; a decoded record must name its state and
# revision, else the meta record itself is read. A file in any other shape
# (edited, reformatted, an older layout) is read as plain JSON and rewritten.
# "format" is not the plain format number, so that a dagger that only knows the
# first layout (full metadata per state) ignores this file and rebuilds it.

_INDEX_FORMAT = f"{FORMAT_VERSION}+index2"
_INDEX_HEAD = f'{{"format":"{_INDEX_FORMAT}","states":'
_DECODER = json.JSONDecoder()
_METAS_START = b',"metas":['
_NO_PARENT = -1
_UNINDEXED_PARENT = -2


def recorded_source(meta: dict[str, Any]) -> str | None:
    """The source hash of the recipe that made a state, as its metadata records it (None if none)."""
    recipe = meta.get("recipe")
    source = recipe.get("source") if type(recipe) is dict else None
    return source if type(source) is str and source else None


_first = operator.itemgetter(0)

# One state of the index as the writer needs it: (order, sha, rev, depth, parent sha, root
# properties, tags, recipe source hash, the state's metadata as JSON text).
_Row = tuple[Any, str, Any, Any, Any, Any, Any, "str | None", str]


def _meta_row(meta: dict[str, Any], written: dict[str, tuple[str, str]], order: Any) -> _Row:
    sha, rev = meta["sha"], meta.get("rev")
    known = written.get(sha)
    if known is not None and known[0] == rev and len(known[1]) > 2:
        text = f'{known[1][:-1]},"rev":"{rev}"}}'
    else:
        text = _JSON.encode(meta)
    depth = meta.get("depth", 0)
    return (order, sha, rev, depth, meta.get("parent"), meta.get("properties"), meta.get("tags") or [], recorded_source(meta), text)


#: What an index may say it was written for: a fingerprint of the segments folder (see
#: :func:`dagger.store.segments.fingerprint`) and ``{sha: rev}`` of every committed state read after
#: it was taken. The index records the fingerprint only when its states are exactly those.
Segments = tuple[str, dict[str, str]]


def index_bytes(
    metas: Iterable[dict[str, Any]],
    written: dict[str, tuple[str, str]] | None = None,
    segments: Segments | None = None,
) -> bytes:
    """The text of ``index.json`` for these metadata records (see the layout above).

    ``written`` maps a sha to ``(rev, text)``, the JSON of its commit record as just written
    (without its rev): a record of the same rev is embedded from that text, not encoded again.
    """
    written = written or {}
    with paused_gc():
        rows = [_meta_row(m, written, (m.get("depth", 0), m.get("created", 0))) for m in metas]
        return _index_text(rows, segments)


def _index_text(rows: list[_Row], segments: Segments | None = None) -> bytes:
    encode = _JSON.encode
    rows.sort(key=_first)
    place = {row[1]: i for i, row in enumerate(rows)}
    table: dict[str, int] = {}
    states: dict[str, dict[str, Any]] = {}
    parent: list[int] = []
    depth: list[Any] = []
    props: list[int] = []
    tags: list[Any] = []
    parts: list[str] = []
    offset = 0
    last: Any = object()
    p = 0
    sources: dict[str, int] = {}
    src: list[int] = []
    for _, sha, rev, level, up, root, labels, source, text in rows:
        states[sha] = {"rev": rev, "at": offset}
        parent.append(_NO_PARENT if up is None else place.get(up, _UNINDEXED_PARENT))
        depth.append(level)
        if root is not last and root != last:  # states of one tree share their root's properties
            p = table.setdefault(encode(root), len(table))
            last = root
        props.append(p)
        tags.append(labels)
        src.append(-1 if source is None else sources.setdefault(source, len(sources)))
        parts.append(text)
        offset += len(text) + 1  # and the comma
    fields: dict[str, Any] = {"parent": parent, "depth": depth, "p": props, "tags": tags, "sources": list(sources), "src": src}
    if segments is not None and _same_states(states, segments[1]):
        fields["segments"] = segments[0]  # these states are exactly what the segments held (see SlimIndex.segments)
    columns = encode(fields)
    head = f'{_INDEX_HEAD}{encode(states)},"columns":{{"properties":[{",".join(table)}],{columns[1:]},"metas":['
    return (head + ",".join(parts) + "]}").encode()


def _same_states(states: dict[str, dict[str, Any]], committed: dict[str, str]) -> bool:
    if len(states) != len(committed):
        return False
    get = committed.get
    return all(get(sha) == entry["rev"] for sha, entry in states.items())


def _ints(column: Any, n: int, low: int, high: int) -> bool:
    """Whether ``column`` is a list of ``n`` ints in ``[low, high)``."""
    if type(column) is not list or len(column) != n:
        return False
    return not n or (set(map(type, column)) == {int} and low <= min(column) and max(column) < high)


def _describes(meta: Any, sha: str, rev: Any) -> bool:
    """Whether ``meta`` (decoded from the index) is the metadata of ``sha`` at revision ``rev``."""
    return type(meta) is dict and meta.get("sha") == sha and meta.get("rev") == rev and meta_problem(meta) is None


class SlimIndex:
    """Every state of an experiment, with each state's full metadata decoded on demand.

    ``lazy``: parsed from an up-to-date index file; ``shas`` lists the states
    in tree order and the columns (``parent``, ``depth``, ``p``, ``tags``,
    ``properties``) hold what browsing needs, in the same order. Otherwise
    ``decoded`` holds every state's full metadata. :meth:`meta` gives one
    state's full metadata, :meth:`entry` its browsing fields.
    """

    def __init__(self, records: Records) -> None:
        self.records = records
        self.lazy = False
        self.states: dict[str, dict[str, Any]] = {}  # from the file: {"rev", "at"} by hash
        self.shas: list[str] = []
        self.properties: list[Any] = []
        self.parent: list[int] = []
        self.depth: list[int] = []
        self.p: list[int] = []
        self.tags: list[list[str]] = []
        self.sources: list[str] = []
        self.src: list[int] | None = None  # absent from indexes written before it
        # The segments' fingerprint when this index's states were exactly the committed ones (else None):
        # while the folder still has that fingerprint (and no meta/ file), the index is current as it is.
        self.segments: str | None = None
        self.decoded: dict[str, dict[str, Any]] = {}
        self._raw = b""
        self._text = ""
        self._base = 0
        self._place: dict[str, int] | None = None

    @classmethod
    def of(cls, metas: dict[str, dict[str, Any]], records: Records) -> SlimIndex:
        """An index of metadata already in memory."""
        index = cls(records)
        index.decoded = dict(metas)
        return index

    @classmethod
    def parse(cls, records: Records, raw: bytes | None) -> SlimIndex:
        """The index in ``raw`` (the bytes of index.json); empty when it is missing or unreadable."""
        index = cls(records)
        if not raw:
            return index
        if raw.startswith(_INDEX_HEAD.encode()):
            try:
                if index._parse_head(raw):
                    return index
            except (ValueError, TypeError):
                pass
            index = cls(records)  # damaged after its head: read it as plain JSON
        try:
            index._parse_any(raw.decode())
        except UnicodeDecodeError:
            pass
        return index

    def _parse_head(self, raw: bytes) -> bool:
        # The head ends where the metadata starts: that text cannot occur earlier, as JSON escapes
        # every quote inside a string. Only the head is decoded now; the rest on first use.
        end = raw.find(_METAS_START)
        if end < 0 or not raw.endswith(b"]}"):
            return False
        text = raw[:end].decode() + _METAS_START.decode()
        states, pos = _DECODER.raw_decode(text, len(_INDEX_HEAD))
        if not text.startswith(',"columns":', pos):
            return False
        columns, pos = _DECODER.raw_decode(text, pos + 11)
        if pos != end:
            return False
        if type(states) is not dict or type(columns) is not dict or set(map(type, states.values())) - {dict}:
            return False
        n = len(states)
        props, tags = columns.get("properties"), columns.get("tags")
        if not (
            type(props) is list
            and type(tags) is list
            and len(tags) == n
            and not set(map(type, tags)) - {list}
            and all(type(t) is str for labels in tags for t in labels)
            and _ints(columns.get("parent"), n, _UNINDEXED_PARENT, n)
            and _ints(columns.get("depth"), n, 0, 1 << 62)
            and _ints(columns.get("p"), n, 0, len(props))
        ):
            return False
        self.states = states
        self.shas = list(states)
        self.properties = props
        self.parent, self.depth, self.p, self.tags = columns["parent"], columns["depth"], columns["p"], tags
        sources, src = columns.get("sources"), columns.get("src")
        if type(sources) is list and not set(map(type, sources)) - {str} and _ints(src, n, -1, len(sources)):
            self.sources, self.src = sources, src
        fingerprint = columns.get("segments")
        self.segments = fingerprint if type(fingerprint) is str and fingerprint else None
        self._raw = raw
        self._base = end + len(_METAS_START)
        self.lazy = True
        return True

    def _parse_any(self, text: str) -> None:
        """Any other shape of the file: plain JSON, this layout or the first (full metadata per state)."""
        try:
            data = json.loads(text)
        except ValueError:
            return
        if type(data) is not dict or type(data.get("states")) is not dict:
            return
        if data.get("format") == _INDEX_FORMAT:
            metas = data.get("metas")
        elif data.get("format") == FORMAT_VERSION:  # the first layout
            metas = list(data["states"].values())
        else:
            return
        if type(metas) is not list:
            return
        for (sha, entry), meta in zip(data["states"].items(), metas, strict=False):
            if type(entry) is dict and _describes(meta, sha, entry.get("rev")):
                self.decoded[sha] = meta

    def matches(self, listing: dict[str, str]) -> bool:
        """Whether the index holds exactly these states at these revisions."""
        if len(listing) != len(self.states):
            return False
        get = listing.get
        return all(get(sha) == entry.get("rev") for sha, entry in self.states.items())

    def lists(self, names: list[str]) -> bool:
        """Whether the index holds exactly the states and revisions that these ``meta/`` file names do."""
        if len(names) != len(self.states):
            return False
        return set(names) == {f"{sha}.{entry.get('rev')}.json" for sha, entry in self.states.items()}

    def __len__(self) -> int:
        return len(self.shas) if self.lazy else len(self.decoded)

    def __contains__(self, sha: object) -> bool:
        return sha in (self.states if self.lazy else self.decoded)

    def _position(self, sha: str) -> int:
        if self._place is None:
            self._place = {s: i for i, s in enumerate(self.shas)}
        return self._place[sha]

    def source(self, sha: str) -> str | None:
        """The recorded source hash of the recipe that made ``sha`` (from the column, else its metadata)."""
        if self.lazy and self.src is not None and sha not in self.decoded:
            k = self.src[self._position(sha)]
            return None if k < 0 else self.sources[k]
        return recorded_source(self.meta(sha))

    def meta(self, sha: str) -> dict[str, Any]:
        """The full metadata of state ``sha``, decoded once (or read from its record)."""
        meta = self.decoded.get(sha)
        if meta is None:
            entry = self.states[sha]
            meta = self._from_text(sha, entry) or self._from_record(sha, entry.get("rev"))
            self.decoded[sha] = meta
        return meta

    def entry(self, sha: str) -> dict[str, Any]:
        """What browsing reads of a state (``parent``, ``depth``, ``tags``), without decoding it."""
        if not self.lazy or sha in self.decoded:
            return self.meta(sha)
        i = self._position(sha)
        up = self.parent[i]
        if up == _UNINDEXED_PARENT:
            return self.meta(sha)
        return {"parent": None if up < 0 else self.shas[up], "depth": self.depth[i], "tags": self.tags[i]}

    def spliced_rows(self, skip: set[str]) -> tuple[list[_Row], list[str]]:
        """Index rows for the states not in ``skip``, their metadata taken as text from this file.

        Each state's text is checked to start as its own record does (format and hash) and
        to end where the next begins; the hashes whose text or columns do not serve are
        returned apart, for their metadata to be decoded. Order: depth, then place here.
        """
        if not self.lazy or self.src is None:
            return [], [sha for sha in self.shas if sha not in skip]
        text = self._decoded_text()
        base, n = self._base, len(self.shas)
        starts: list[Any] = [entry.get("at") for entry in self.states.values()]
        rows: list[_Row] = []
        rest: list[str] = []
        shas, parent, depth, props, p, tags, sources, src = (
            self.shas, self.parent, self.depth, self.properties, self.p, self.tags, self.sources, self.src
        )
        for i, sha in enumerate(shas):
            if sha in skip:
                continue
            at = starts[i]
            following = len(text) - 1 - base if i == n - 1 else starts[i + 1]  # after "]" or ","
            end = base + following - 1 if type(following) is int else -1
            up = parent[i]
            if (
                type(at) is not int
                or up == _UNINDEXED_PARENT
                or not text.startswith(f'{{"format":{FORMAT_VERSION},"sha":"{sha}"', base + at)
                or text[end - 1 : end + 1] not in ("},", "}]")
            ):
                rest.append(sha)
                continue
            k = src[i]
            rows.append(
                (
                    (depth[i], 0, i),
                    sha,
                    self.states[sha].get("rev"),
                    depth[i],
                    None if up < 0 else shas[up],
                    props[p[i]],
                    tags[i],
                    None if k < 0 else sources[k],
                    text[base + at : end],
                )
            )
        return rows, rest

    def all_meta(self) -> dict[str, dict[str, Any]]:
        """Every state's full metadata, by hash (the undecoded ones decoded in one pass)."""
        if not self.lazy:
            return dict(self.decoded)
        decoded = self.decoded
        if len(decoded) < len(self.shas):
            try:
                metas, _ = _DECODER.raw_decode(self._decoded_text(), self._base - 1)
            except ValueError:
                metas = []
            for (sha, entry), meta in zip(self.states.items(), metas if type(metas) is list else [], strict=False):
                if sha not in decoded and _describes(meta, sha, entry.get("rev")):
                    decoded[sha] = meta
        return {sha: self.meta(sha) for sha in self.shas}

    def _from_text(self, sha: str, entry: dict[str, Any]) -> dict[str, Any] | None:
        at = entry.get("at")
        if not (self._raw or self._text) or type(at) is not int or at < 0:
            return None
        try:
            text = self._decoded_text()
            meta, end = _DECODER.raw_decode(text, self._base + at)
        except ValueError:  # UnicodeDecodeError included
            return None
        if text[end : end + 1] not in (",", "]") or not _describes(meta, sha, entry.get("rev")):
            return None
        return meta

    def _decoded_text(self) -> str:
        """The whole index as text (decoded on first use; ASCII, so offsets in bytes hold)."""
        if not self._text:
            self._text = self._raw.decode()
            self._raw = b""
        return self._text

    def _from_record(self, sha: str, rev: Any) -> dict[str, Any]:
        try:
            return self.records.read_meta(sha, str(rev))
        except FileNotFoundError:
            newest = self.records.committed().get(sha)
            if newest is None:
                msg = f"state {sha[:12]} was removed from the store after the experiment was opened"
                raise StateNotFoundError(msg) from None
            return self.records.read_meta(sha, newest)


class StoredMetas:
    """The committed states' metadata for one run, decoded from the index only where needed.

    A fully cached rerun asks only which states exist, their tags and the
    recorded source hashes of their recipes, which the index's columns hold;
    a state's full metadata is decoded when a run needs it (to compute or
    evaluate the state, or to rewrite the index).
    """

    def __init__(self, index: SlimIndex) -> None:
        self.index = index
        self.added: dict[str, dict[str, Any]] = {}

    def __contains__(self, sha: object) -> bool:
        return sha in self.added or sha in self.index

    def get(self, sha: str, default: Any = None) -> Any:
        meta = self.added.get(sha)
        if meta is not None:
            return meta
        return self.index.meta(sha) if sha in self.index else default

    def __getitem__(self, sha: str) -> dict[str, Any]:
        meta = self.get(sha)
        if meta is None:
            raise KeyError(sha)
        return meta  # type: ignore[no-any-return]

    def __setitem__(self, sha: str, meta: dict[str, Any]) -> None:
        self.added[sha] = meta

    def tags(self, sha: str) -> list[str]:
        meta = self.added.get(sha)
        return list((meta if meta is not None else self.index.entry(sha)).get("tags") or [])

    def source(self, sha: str) -> str | None:
        """The recorded source hash of the recipe that made ``sha`` (None if none, or not stored)."""
        meta = self.added.get(sha)
        if meta is not None:
            return recorded_source(meta)
        return self.index.source(sha) if sha in self.index else None

    def values(self) -> Iterable[dict[str, Any]]:
        """Every state's full metadata (all decoded)."""
        metas = self.index.all_meta()
        metas.update(self.added)
        return metas.values()

    def index_bytes(self, written: dict[str, tuple[str, str]], segments: Segments | None = None) -> bytes:
        """The new index: states whose metadata did not change are copied from the old one as text.

        Adding a few states to a large experiment then neither decodes nor encodes the
        metadata of the others. Changed states (added, or given a new revision by this
        run) are written from their metadata, as :func:`index_bytes` does.
        """
        index = self.index
        if not index.lazy:
            return index_bytes(self.values(), written, segments)
        changed = set(self.added)
        changed.update(sha for sha, meta in index.decoded.items() if meta.get("rev") != index.states[sha].get("rev"))
        with paused_gc():
            rows, rest = index.spliced_rows(changed)
            for sha in rest + sorted(changed):  # sorted: the same index whatever the set's order
                meta = self.get(sha)
                level = meta.get("depth", 0)
                order = (level, 0, index._position(sha)) if sha in index else (level, 1, meta.get("created", 0))
                rows.append(_meta_row(meta, written, order))
            return _index_text(rows, segments)
