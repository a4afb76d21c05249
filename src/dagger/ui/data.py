"""What the explorer page shows, as one JSON-ready dict, read from a store without writing to it.

:class:`Source` opens an experiment (a local folder or an fsspec URL) and keeps
its states' metadata. :meth:`Source.version` is cheap (one listing of ``meta/``
and one of ``failed/``) and changes whenever a state is committed, a revision
replaces one (tags, Function results) or a computation fails, so the page can
poll it. :meth:`Source.snapshot` re-reads only the records whose revision
changed. Nothing is unpickled and nothing is written: unlike
``Records.load_index``, a stale ``index.json`` is read around, not rewritten,
so the explorer never races a run that is writing the same experiment.

:func:`build` turns metadata into the page's data: the tree laid out by
:func:`dagger.drawing.layout.layout` (the static drawing's engine), and for each
state what its panel, the table, the filter and the plot need.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from dagger.drawing import node_specs, status_of
from dagger.drawing.layout import layout
from dagger.errors import NotAnExperimentError
from dagger.graph import StaticExperimentTree, flat_results, state_row
from dagger.store.gctune import paused_gc
from dagger.store.index import SlimIndex
from dagger.store.layout import INDEX_KEY

#: The page's data format; bumped when the page would misread older data.
DATA_FORMAT = 1


class Source:
    """A stored experiment, read for the explorer: slim metadata only, never a write."""

    def __init__(
        self, directory: str, storage_options: dict[str, Any] | None = None, result: str | None = None
    ) -> None:
        from dagger.experiment import Experiment

        local = "://" not in directory or directory.startswith("file://")
        path = directory[len("file://") :] if directory.startswith("file://") else directory
        if local and not os.path.isdir(path):
            what = "is a file, not an experiment folder" if os.path.exists(path) else "does not exist"
            raise NotAnExperimentError(f"{directory} {what}")
        self.given = directory  # as the user wrote it: the page shows this
        self.result = result  # the only result the boxes' labels show (None: all)
        self.experiment = Experiment(directory, storage_options=storage_options or {})
        if self.experiment.info is None:
            raise NotAnExperimentError(
                f"{self.experiment.directory} holds no dagger experiment (no experiment.json). Check the path."
            )
        self.records = self.experiment.records
        self.store = self.experiment.store
        self._metas: dict[str, dict[str, Any]] = {}
        self._failed: dict[str, dict[str, Any]] = {}
        self._version: str | None = None
        self._data: dict[str, Any] | None = None
        self._lock = threading.Lock()

    @property
    def directory(self) -> str:
        """The experiment's location as the user gave it (``runs/pruning``, ``s3://bucket/runs``)."""
        return self.given

    def _listings(self) -> tuple[list[str], list[str]]:
        names = self.records._meta_names() + self.records.segments_tag()  # (committed() reads segments itself)
        try:
            failed = sorted(k.rsplit("/", 1)[-1] for k in self.store.list("failed"))
        except OSError:
            failed = []
        return names, failed

    def version(self) -> str:
        """A short tag of what is stored now: it changes when any state's record or failure changes."""
        names, failed = self._listings()
        return _tag(names, failed)

    def snapshot(self) -> tuple[str, dict[str, Any]]:
        """``(version, data)``: the page's data for the experiment as stored now (rebuilt only on change)."""
        with self._lock:
            names, failed = self._listings()
            version = _tag(names, failed)
            if version == self._version and self._data is not None:
                return version, self._data
            self._refresh(names, failed)
            self._data = build(
                self._metas,
                self.records,
                info=self.experiment.info,
                directory=self.directory,
                failed=list(self._failed.values()),
                result=self.result,
            )
            self._data["version"] = version
            self._version = version
            return version, self._data

    def _refresh(self, names: list[str], failed: list[str]) -> None:
        listing = self.records.committed(names)
        if not self._metas:  # the first read: the index holds most records
            try:
                raw: bytes | None = self.store.get(INDEX_KEY)
            except OSError:
                raw = None
            with paused_gc():
                known = SlimIndex.parse(self.records, raw).all_meta()
        else:
            known = self._metas
        out: dict[str, dict[str, Any]] = {}
        for sha, rev in listing.items():
            meta = known.get(sha)
            if meta is None or meta.get("rev") != rev:
                try:
                    meta = self.records.read_meta(sha, rev)
                except FileNotFoundError:  # replaced by a newer revision since the listing
                    meta = self._metas.get(sha)
                    if meta is None:
                        continue
            out[sha] = meta
        self._metas = out
        records: dict[str, dict[str, Any]] = {}
        for name in failed:
            sha = name.rsplit(".", 1)[0]
            old = self._failed.get(sha)
            if old is not None:
                records[sha] = old
                continue
            try:
                rec = json.loads(self.store.get(f"failed/{name}"))
            except (OSError, ValueError):
                continue
            if isinstance(rec, dict):
                records[sha] = rec
        self._failed = records


def _tag(names: Iterable[str], failed: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update("\n".join(sorted(names)).encode())
    h.update(b"\0")
    h.update("\n".join(failed).encode())
    return h.hexdigest()


def _clean(value: Any) -> Any:
    """A value JSON can carry: non-finite floats as strings, unknown objects as text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return str(value)


def build(
    metas: dict[str, dict[str, Any]],
    records: Any,
    info: dict[str, Any] | None = None,
    directory: str = "",
    failed: list[dict[str, Any]] | None = None,
    result: str | None = None,
) -> dict[str, Any]:
    """The explorer's data for these states' metadata (by hash): layout, states, table columns.

    ``result`` keeps only that result in the boxes' labels (as ``dagger draw --result``).
    """
    info = info or {}
    tree = StaticExperimentTree(metas, records, info=info)
    tree._decode_all()
    nodes = list(tree)
    lay = layout(node_specs(nodes, result), max_states=max(len(nodes), 1), max_children=max(len(nodes), 1))
    lay_dict = lay.to_dict()
    states: dict[str, Any] = {}
    columns: dict[str, None] = {}
    for node in nodes:
        sha = node.sha()
        meta = node._meta()
        recipe = meta.get("recipe")
        row = state_row(node)
        for k in row:
            columns.setdefault(k, None)
        blobs = meta.get("blobs") or []
        pickle_bytes = meta.get("pickle_bytes")
        stored = (pickle_bytes if isinstance(pickle_bytes, int) else 0) + sum(int(b[1]) for b in blobs)
        run = meta.get("run") or {}
        states[sha] = {
            "parent": meta.get("parent") if meta.get("parent") in metas else None,
            "depth": meta.get("depth", 0),
            "recipe": "root" if recipe is None else str(recipe.get("name", "?")),
            "recipe_class": None if recipe is None else recipe.get("class"),
            "recipe_version": None if recipe is None else recipe.get("version"),
            "recipe_source": None if recipe is None else recipe.get("source"),
            "props": _clean((meta.get("properties") if recipe is None else recipe.get("properties")) or {}),
            "properties": _clean(meta.get("properties") or {}),
            "tags": [str(t) for t in meta.get("tags") or []],
            "results": _clean(flat_results(meta.get("results") or {})),
            "raw_results": _clean(meta.get("results") or {}),
            "function_errors": _clean(meta.get("function_errors") or {}),
            "status": status_of(meta),
            "created": meta.get("created"),
            "run": _clean(run),
            "environment": _clean(meta.get("environment") or {}),
            "stored_bytes": stored,
            "pickle_bytes": pickle_bytes if isinstance(pickle_bytes, int) else None,
            "blobs": len(blobs),
            "row": _clean(row),
        }
    return {
        "format": DATA_FORMAT,
        "experiment": {
            "directory": directory,
            "root": info.get("root"),
            "state_class": info.get("state_class"),
            "environment": _clean(info.get("environment") or {}),
        },
        "generated": time.time(),
        "layout": lay_dict,
        "states": states,
        "order": [n.sha() for n in nodes],
        "columns": list(columns),
        "failed": _clean(failed or []),
    }


def from_graph(graph: StaticExperimentTree, result: str | None = None) -> dict[str, Any]:
    """The explorer's data for an experiment's graph already in memory (``exp.graph``)."""
    graph._decode_all()
    metas = {n.sha(): n._meta() for n in graph}
    return build(metas, graph.records, info=graph.info, directory=str(graph.records.store.url), result=result)
