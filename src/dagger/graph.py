"""The stored tree for analysis: slim states, tag filters, tables and pictures.

Everything here reads JSON metadata only; nothing is unpickled until a
state's :meth:`~dagger.state.ExperimentState.restore` is called.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, overload

from dagger.errors import CorruptRecordError, DaggerWarning, InvalidHashError, StateNotFoundError
from dagger.state import ExperimentState

if TYPE_CHECKING:
    from dagger.store.records import Records, SlimIndex

_HEX = re.compile(r"[0-9a-f]{1,64}")


class NodeSet(Sequence[ExperimentState]):
    """An ordered set of states; filter it by tags and combine sets with ``|`` and ``&``.

    >>> pruned = exp.graph.nodes.filter("pruned")
    >>> pruned & exp.graph.nodes.filter("lr:0.1", "!lr:0.01")
    """

    def __init__(self, nodes: Iterable[ExperimentState]) -> None:
        seen: dict[str, ExperimentState] = {}
        for n in nodes:
            seen.setdefault(n.sha(), n)
        self._nodes = list(seen.values())
        self._tags: dict[str, list[int]] | None = None

    @classmethod
    def _distinct(cls, nodes: list[ExperimentState]) -> NodeSet:
        """A set of nodes already known to be distinct (no de-duplication pass)."""
        out = cls.__new__(cls)
        out._nodes = nodes
        out._tags = None
        return out

    def _tag_index(self) -> dict[str, list[int]]:
        """Each tag and the positions of the states carrying it (built once per set)."""
        if self._tags is None:
            index: dict[str, list[int]] = {}
            for i, n in enumerate(self._nodes):
                for t in _browse(n).get("tags") or ():
                    index.setdefault(t, []).append(i)
            self._tags = index
        return self._tags

    @overload
    def __getitem__(self, i: int) -> ExperimentState: ...

    @overload
    def __getitem__(self, i: slice) -> NodeSet: ...

    def __getitem__(self, i: int | slice) -> ExperimentState | NodeSet:
        if isinstance(i, slice):
            return NodeSet(self._nodes[i])
        return self._nodes[i]

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[ExperimentState]:
        return iter(self._nodes)

    def __contains__(self, item: object) -> bool:
        return isinstance(item, ExperimentState) and any(n is item or n.sha() == item.sha() for n in self._nodes)

    def __or__(self, other: object) -> NodeSet:
        if not isinstance(other, NodeSet):
            return NotImplemented
        return NodeSet([*self._nodes, *other._nodes])

    def __and__(self, other: object) -> NodeSet:
        if not isinstance(other, NodeSet):
            return NotImplemented
        keep = {n.sha() for n in other._nodes}
        return NodeSet._distinct([n for n in self._nodes if n.sha() in keep])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeSet):
            return NotImplemented
        return [n.sha() for n in self] == [n.sha() for n in other]

    __hash__ = None  # type: ignore[assignment]

    def filter(self, *patterns: str, any: bool = False) -> NodeSet:  # noqa: A002 - mirrors the CLI flag
        """States whose tags match the patterns (fnmatch; a leading ``!`` negates).

        A pattern matches a state when one of its tags matches it; ``!pat``
        matches when none does. All patterns must match, or any one of them
        with ``any=True``.
        """
        if not patterns:
            return NodeSet(self._nodes)
        matchers = [_matcher(p) for p in patterns]
        # Match each distinct tag once, then combine the positions of the states carrying them.
        index = self._tag_index()
        chosen: set[int] | None = None
        for rx, neg in matchers:
            where: set[int] = set()
            for tag, positions in index.items():
                if rx(tag):
                    where.update(positions)
            if neg:
                where = set(range(len(self._nodes))).difference(where)
            chosen = where if chosen is None else (chosen | where if any else chosen & where)
        nodes = self._nodes
        return NodeSet._distinct([nodes[i] for i in sorted(chosen or ())])

    @property
    def iterator(self) -> Iterator[ExperimentState]:
        """Each state in turn, fully loaded while the loop body runs and deflated after.

        ``for state in exp.graph.nodes.iterator: ...`` (the reference implementation's
        name) keeps one full state in memory at a time; see ``ExperimentState.lazy_load``.
        """
        for node in self._nodes:
            with node.lazy_load():
                yield node

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per state: hash, recipe, its properties along the lineage, tags, results.

        A state whose lineage is broken (see :meth:`StaticExperimentTree.problems`) is left
        out, with a warning that names it.
        """
        rows: list[dict[str, Any]] = []
        broken: list[str] = []
        for n in self._nodes:
            tree = n.__dict__.get("_dg_tree")
            why = tree.problems().get(n.sha()) if isinstance(tree, StaticExperimentTree) else None
            if why is not None:
                broken.append(f"{n.sha()[:12]} ({why})")
                continue
            rows.append(state_row(n))
        if broken:
            listed = "; ".join(broken[:3]) + (f"; and {len(broken) - 3} more" if len(broken) > 3 else "")
            warnings.warn(
                f"left {len(broken)} state(s) out of the table, their lineage is broken: {listed}. "
                "Run `dagger verify` for details",
                DaggerWarning,
                stacklevel=2,
            )
        return rows

    def to_dataframe(self) -> Any:
        """The states as a pandas DataFrame (needs the ``pandas`` extra)."""
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe() needs pandas: pip install 'dagger-experiments[pandas]'") from None
        return pd.DataFrame(self.to_records())

    def __repr__(self) -> str:
        inner = ", ".join(repr(n) for n in self._nodes[:5])
        more = f", ... {len(self._nodes) - 5} more" if len(self._nodes) > 5 else ""
        return f"NodeSet([{inner}{more}])"


def _browse(node: ExperimentState) -> dict[str, Any]:
    """A state's browsing fields (tags, parent, depth): its metadata, or for a slim node whose
    metadata is not decoded yet, its index entry (so filtering never decodes it)."""
    d = node.__dict__
    meta = d.get("_dg_meta")
    if meta is None:
        tree = d.get("_dg_tree")
        if isinstance(tree, StaticExperimentTree):
            return tree._entry(d["_dg_sha"])
        return node._meta()
    return meta


def _position(item: tuple[str, dict[str, Any]]) -> tuple[Any, Any]:
    entry = item[1]
    return (entry.get("depth", 0), entry.get("created", 0))


def _matcher(pattern: str) -> tuple[Any, bool]:
    if not isinstance(pattern, str):
        raise TypeError(f"tag patterns are strings, got {pattern!r}")
    neg = pattern.startswith("!")
    rx = re.compile(fnmatch.translate(pattern[1:] if neg else pattern)).match
    return rx, neg


#: How many applications of one recipe along a lineage get their own columns in tables
#: (``R.x``, ``R#2.x``, ... ``R#4.x``); later ones show as ``R#last.x``, with ``R#applied``
#: counting them. Bounded so that a table of a long chain is linear in its size.
REPEATS_SHOWN = 4
#: How deep the indentation of text trees goes before a deeper state starts again at the margin.
INDENT_LEVELS = 40


def state_row(node: ExperimentState) -> dict[str, Any]:
    """A flat record of one state for tables: identity, lineage's recipe properties, results."""
    meta = node._meta()
    row: dict[str, Any] = {"sha": node.sha(), "short": node.sha()[:10], "depth": meta.get("depth", 0)}
    recipe = meta.get("recipe") or {}
    row["recipe"] = recipe.get("name", "root")
    row["tags"] = ", ".join(meta.get("tags", []))
    for key, value in (meta.get("properties") or {}).items():
        row[key] = value
    row.update(_lineage_columns(node)[0])
    for fn, result in (meta.get("results") or {}).items():
        if isinstance(result, dict):
            for key, value in result.items():
                row[f"{fn}.{key}" if key in row else key] = value
        else:
            row[fn] = result
    run = meta.get("run") or {}
    if run:
        row["duration_s"] = run.get("duration")
    return row


_Columns = tuple[dict[str, Any], dict[str, int]]  # columns of the recipes along a lineage, applications per name


def _lineage_columns(node: ExperimentState) -> _Columns:
    """The recipe properties along ``node``'s lineage as table columns, and how often each recipe applies.

    Each state's columns are its parent's plus its own recipe's, remembered by the tree, so
    tabulating every state of a chain of n states costs n steps, not n squared. A state whose
    lineage is broken (a cycle, a dangling parent) raises CorruptRecordError naming it.
    """
    tree = node.__dict__.get("_dg_tree")
    cache: dict[str, _Columns] = tree._columns if isinstance(tree, StaticExperimentTree) else {}
    if isinstance(tree, StaticExperimentTree) and node.sha() in tree.problems():
        raise tree._broken(node.sha())
    chain: list[ExperimentState] = []
    current: ExperimentState | None = node
    base: _Columns = ({}, {})
    while current is not None:
        known = cache.get(current.sha())
        if known is not None:
            base = known
            break
        chain.append(current)
        current = current.parent
    for step in reversed(chain):
        recipe = step._meta().get("recipe")
        if recipe is not None:
            columns, counts = dict(base[0]), dict(base[1])
            name = recipe.get("name", "?")
            k = counts[name] = counts.get(name, 0) + 1
            if k <= REPEATS_SHOWN:
                column = name if k == 1 else f"{name}#{k}"  # a recipe applied again
            else:
                column = f"{name}#last"
                for old in [c for c in columns if c.startswith(column + ".")]:
                    del columns[old]
                columns[f"{name}#applied"] = k
            for key, value in (recipe.get("properties") or {}).items():
                columns[f"{column}.{key}"] = value
            base = (columns, counts)
        cache[step.sha()] = base
    return base


class StaticExperimentTree:
    """The stored experiment as a tree of slim states."""

    def __init__(
        self,
        metas: dict[str, dict[str, Any]] | SlimIndex,
        records: Records,
        state_class: type[ExperimentState] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        from dagger.store.gctune import paused_gc
        from dagger.store.index import SlimIndex

        self.records = records
        self.info = info or {}
        #: The Experiment this tree was read by (set by ``Experiment.graph``), for ``state.experiment_object``.
        self.experiment: Any = None
        self.state_class = state_class
        # Each slim node's full metadata is decoded from the index on first use (see _meta_of).
        index = metas if isinstance(metas, SlimIndex) else SlimIndex.of(metas, records)
        self._index = index
        cls = state_class or ExperimentState
        nodes: dict[str, ExperimentState] = {}
        children: dict[str, list[str]] = {}
        tags: dict[str, list[int]] = {}  # the tag index of self.nodes, built in the same pass
        parents: dict[str, Any] = {}
        with paused_gc():
            self._build(index, cls, nodes, children, tags, parents)
        self._nodes = nodes
        self._children = children
        self._parents = parents  # every state's recorded parent (None for a root)
        self._problems: dict[str, str] | None = None
        self._columns: dict[str, _Columns] = {}  # each state's lineage columns, for tables (see state_row)
        self.nodes = NodeSet._distinct(list(nodes.values()))  # one node per hash already
        self.nodes._tags = tags

    def _build(
        self,
        index: SlimIndex,
        cls: type[ExperimentState],
        nodes: dict[str, ExperimentState],
        children: dict[str, list[str]],
        tags: dict[str, list[int]],
        parents: dict[str, Any],
    ) -> None:
        """Make one slim node per state, in tree order, with the children lists, the tag index and parents."""
        new = cls.__new__
        if index.lazy:
            # An up-to-date index: states already in tree order, browsing fields in columns.
            shas = index.shas
            table = [p if isinstance(p, dict) else None for p in index.properties]
            decoded = index.decoded
            for position, (sha, up, p, labels) in enumerate(zip(shas, index.parent, index.p, index.tags, strict=True)):
                for tag in labels:
                    tags.setdefault(tag, []).append(position)
                node = new(cls)
                d = node.__dict__
                props = table[p]
                if props:
                    d.update(props)
                d["_dg_sha"] = sha
                d["_dg_meta"] = decoded.get(sha)  # None until first used
                d["_dg_tree"] = self
                d["_dg_loaded"] = False
                nodes[sha] = node
                if up >= 0:
                    children.setdefault(shas[up], []).append(sha)
                    parents[sha] = shas[up]
                elif up != -1:  # a parent that is not indexed: read it from the metadata
                    parent = parents[sha] = index.meta(sha).get("parent")
                    if parent is not None:
                        children.setdefault(parent, []).append(sha)
                else:
                    parents[sha] = None
        else:
            ordered = sorted(index.decoded.items(), key=_position)
            for position, (sha, meta) in enumerate(ordered):
                for tag in meta.get("tags") or ():
                    tags.setdefault(tag, []).append(position)
                node = new(cls)
                d = node.__dict__
                props = meta.get("properties")
                if isinstance(props, dict):
                    d.update(props)
                d["_dg_sha"] = sha
                d["_dg_meta"] = meta
                d["_dg_tree"] = self
                d["_dg_loaded"] = False
                nodes[sha] = node
                parent = parents[sha] = meta.get("parent")
                if parent is not None:
                    children.setdefault(parent, []).append(sha)

    def problems(self) -> dict[str, str]:
        """The states whose chain of parents never reaches a root, each with the reason in words.

        A record edited so that a state's parent is its own child, or itself (a cycle), or
        names a parent that is not stored (dangling), breaks that state and every state below
        it: their lineage cannot be told. Browsing shows them apart, ``lineage()`` refuses them
        with :class:`~dagger.errors.CorruptRecordError`, and ``dagger verify`` reports them.
        Computed once, in time linear in the number of states.
        """
        if self._problems is None:
            from dagger.store.validate import parent_problems

            self._problems = parent_problems(self._parents)
        return self._problems

    def _broken(self, sha: str) -> CorruptRecordError:
        """The error for browsing the lineage of a broken state (see :meth:`problems`)."""
        return CorruptRecordError(
            f"state {sha[:12]} has no lineage: {self.problems()[sha]}. A commit record was edited, or a parent's "
            "records deleted: run `dagger verify` to list every such state; `dagger gc --unreachable` removes "
            "states that do not lead back to the root"
        )

    def _meta_of(self, sha: str) -> dict[str, Any]:
        """The full metadata of one of this tree's states, decoded from the index on first use."""
        return self._index.meta(sha)

    def _entry(self, sha: str) -> dict[str, Any]:
        """What browsing reads of a state (parent, depth, tags), without decoding its metadata."""
        return self._index.entry(sha)

    def _decode_all(self) -> None:
        """Decode every node's metadata in one pass (before work that reads them all)."""
        metas = self._index.all_meta()
        for sha, node in self._nodes.items():
            node.__dict__["_dg_meta"] = metas[sha]

    @property
    def root(self) -> ExperimentState | None:
        """The root state (None for an empty experiment)."""
        sha = self.info.get("root")
        if sha in self._nodes:
            return self._nodes[sha]
        roots = [n for n in self._nodes.values() if _browse(n).get("parent") is None]
        return roots[0] if roots else None

    def node(self, sha: str) -> ExperimentState:
        """The state with this hash, or with this unique hash prefix (at least 4 hex digits)."""
        found = self._nodes.get(sha)
        if found is not None:
            return found
        return self._nodes[self.resolve(sha)]

    def resolve(self, text: str) -> str:
        """The full hash for a hash or unique prefix; a clear error for anything else."""
        if not isinstance(text, str) or not _HEX.fullmatch(text):
            raise InvalidHashError(
                f"{text!r} is not a state hash: give the hex digits shown by `dagger show` (4 or more)"
            )
        if text in self._nodes:
            return text
        if len(text) < 4:
            raise InvalidHashError(f"hash prefix {text!r} is too short: give at least 4 hex digits")
        matches = [s for s in self._nodes if s.startswith(text)]
        if not matches:
            raise StateNotFoundError(f"no state's hash starts with {text!r} in this experiment")
        if len(matches) > 1:
            listed = ", ".join(m[:12] for m in matches[:5])
            raise InvalidHashError(f"hash prefix {text!r} is ambiguous: it matches {listed}; give more digits")
        return matches[0]

    @property
    def node_map(self) -> dict[str, ExperimentState]:
        """Every state by its hash, in tree order (the reference implementation's name)."""
        return dict(self._nodes)

    @property
    def edge_map(self) -> dict[str, list[str]]:
        """Each state's hash and the hashes of its children (empty for a leaf), in tree order."""
        return {sha: list(self._children.get(sha, ())) for sha in self._nodes}

    def children_of(self, sha: str) -> list[ExperimentState]:
        return [self._nodes[c] for c in self._children.get(sha, [])]

    def nodes_at_distance(self, distance: int) -> NodeSet:
        """States ``distance`` recipes away from the root (0 is the root)."""
        return NodeSet(n for n in self._nodes.values() if _browse(n).get("depth", 0) == distance)

    def leaves(self) -> NodeSet:
        return NodeSet(n for n in self._nodes.values() if not self._children.get(n.sha()))

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[ExperimentState]:
        return iter(self._nodes.values())

    def to_text(self, result: str | None = None) -> str:
        """The tree as indented text: recipe, properties, short hash, tags and results per state."""
        lines: list[str] = []
        self._decode_all()
        shown: set[str] = set()
        # Depth first without recursion (a chain may be 10,000 states deep): (node, prefix, last, top, level).
        # Indentation stops growing at INDENT_LEVELS: deeper states start again at the left margin,
        # after a line that says so, so the text of a long chain grows linearly, not quadratically.
        roots = [n for n in self._nodes.values() if self._parents.get(n.sha()) is None]
        stack = [(n, "", True, True, 0) for n in reversed(roots)]
        while stack:
            node, prefix, last, top, level = stack.pop()
            shown.add(node.sha())
            if level >= INDENT_LEVELS:
                depth = _browse(node).get("depth", "?")
                lines.append(f"{prefix}{'└── ' if last else '├── '}… continued below at depth {depth}")
                prefix, top, level = "", True, 0
            branch = "" if top else ("└── " if last else "├── ")
            lines.append(prefix + branch + _text_label(node, result))
            kids = self.children_of(node.sha())
            child_prefix = prefix + ("" if top else ("    " if last else "│   "))
            stack.extend(
                (kid, child_prefix, i == len(kids) - 1, False, level + 1) for i, kid in reversed(list(enumerate(kids)))
            )
        broken = [n for n in self._nodes.values() if n.sha() not in shown]
        if broken:  # never dropped silently: listed apart, with the reason
            lines.append(f"broken lineage ({len(broken)} states not under a root; run `dagger verify`):")
            problems = self.problems()
            lines.extend(f"  {_text_label(n, result)}  ({problems.get(n.sha(), '?')})" for n in broken)
        return "\n".join(lines)

    # ---- pictures -------------------------------------------------------------------

    def to_dot(self, result: str | None = None, highlight: Iterable[ExperimentState] = ()) -> str:
        """The tree as Graphviz DOT source (a string: needs neither Graphviz nor its Python package).

        An export for Graphviz users; dagger draws its pictures itself (:meth:`draw`).
        """
        from dagger.drawing import node_specs, to_dot

        self._decode_all()
        return to_dot(node_specs(self._nodes.values(), result, highlight))

    def to_graphviz(self, result: str | None = None, highlight: Iterable[ExperimentState] = ()) -> Any:
        """The tree as a ``graphviz.Digraph``, for export (needs the ``graphviz`` extra; :meth:`draw` does not).

        Each state shows its recipe and properties, short hash, tags and
        recorded results (or only ``result``, e.g. ``"accuracy"``).
        """
        try:
            import graphviz
        except ImportError:
            raise ImportError(
                "to_graphviz() needs the graphviz Python package: pip install 'dagger-experiments[graphviz]' "
                "(to_dot() gives the DOT source without it, and draw() needs no Graphviz at all)"
            ) from None
        from dagger.drawing import EDGE_ATTR, GRAPH_ATTR, NODE_ATTR, dot_items, node_specs

        self._decode_all()
        dot = graphviz.Digraph("experiment", graph_attr=GRAPH_ATTR, node_attr=NODE_ATTR, edge_attr=EDGE_ATTR)
        for item in dot_items(node_specs(self._nodes.values(), result, highlight)):
            if item[0] == "node":
                dot.node(item[1], item[2])
            else:
                dot.edge(item[1], item[2])
        return dot

    def draw(
        self,
        filename: str | os.PathLike[str] | None = None,
        format: str | None = None,  # noqa: A002
        result: str | None = None,
        highlight: Iterable[ExperimentState] = (),
        view: bool = False,
        max_states: int = 500,
    ) -> Any:
        """Draw the tree; no Graphviz needed. With ``filename``, write it and return its path.

        The format is ``format`` or the file's suffix: svg (no dependency), png
        or pdf (the ``plot`` extra, matplotlib). States are coloured by status
        (root, done, failed, a Function failed) and show their recipe, short
        hash, properties, tags and results, or only ``result`` (e.g.
        ``"accuracy"``); ``highlight`` states get a thick border. Trees of more
        than ``max_states`` states are summarised (``+N states`` boxes).
        Without a filename, return a :class:`~dagger.drawing.Drawing`, which
        Jupyter displays inline. ``view=True`` opens the file with the
        platform's viewer, when there is one.
        """
        from dagger.drawing import draw

        self._decode_all()
        return draw(self._nodes.values(), filename, format, result, highlight, view, max_states)

    def explore(self, result: str | None = None, height: int = 640) -> Any:
        """The interactive explorer of this tree (as ``dagger ui``), shown inline in Jupyter.

        Returns a :class:`dagger.ui.Explorer`: its ``_repr_html_`` is the page in
        an iframe, and ``.save("explorer.html")`` writes it as one self-contained file.
        ``result`` keeps only that result in the boxes' labels (e.g. ``"accuracy"``).
        """
        from dagger.ui import explore

        return explore(self, result, height)

    def _repr_svg_(self) -> str:
        """The tree as SVG for Jupyter (dagger's own drawing: no Graphviz)."""
        return self.draw().svg

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        """Jupyter's rich display: the SVG picture and the text tree."""
        return {"text/plain": self.to_text() or repr(self), "image/svg+xml": self._repr_svg_()}

    def __repr__(self) -> str:
        return f"<StaticExperimentTree {len(self._nodes)} states>"


def fmt_value(value: Any) -> str:
    """A value as a label shows it (floats to 4 significant digits); also used by :mod:`dagger.drawing`."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def flat_results(results: dict[str, Any]) -> dict[str, Any]:
    """Scalar results by name: a Function's dict of results is flattened into its keys."""
    flat: dict[str, Any] = {}
    for fn, value in results.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, (int, float, str, bool)):
                    flat[k] = v
        elif isinstance(value, (int, float, str, bool)):
            flat[fn] = value
    return flat


def _text_label(node: ExperimentState, result: str | None) -> str:
    meta = node._meta()
    recipe = meta.get("recipe")
    name = "root" if recipe is None else recipe.get("name", "?")
    props = (meta.get("properties") if recipe is None else recipe.get("properties")) or {}
    parts = [f"{name} {node.sha()[:8]}"]
    if props:
        parts.append(", ".join(f"{k}={fmt_value(v)}" for k, v in props.items()))
    if meta.get("tags"):
        parts.append("[" + ", ".join(meta["tags"]) + "]")
    results = flat_results(meta.get("results") or {})
    if result is not None:
        results = {k: v for k, v in results.items() if k == result}
    if results:
        parts.append(" ".join(f"{k}={fmt_value(v)}" for k, v in results.items()))
    return "  ".join(parts)
