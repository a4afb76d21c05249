"""ExperimentState: one node of the experiment tree."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from dagger.errors import CorruptRecordError, DefinitionError, DeflatedStateError
from dagger.store.pickling import _LargeBytes, wrap_large_bytes

if TYPE_CHECKING:
    from dagger.graph import StaticExperimentTree

# Bookkeeping that lives on a state but is never pickled with it.
_INTERNAL = ("_dg_sha", "_dg_meta", "_dg_tree", "_dg_loaded")

#: Attribute names that belong to the ExperimentState API (the paper's and the reference
#: implementation's), so a state class may not use them for its own data. Every other name is
#: the user's: dagger keeps its bookkeeping under ``_dg_*`` and never replaces a user attribute.
RESERVED_STATE_NAMES = frozenset(
    {
        # the paper's API
        "sha", "tags", "parent", "children", "restore", "deflate", "lazy_load", "initialize_state",
        # dagger's analysis API
        "metadata", "results", "recipe", "lineage", "is_loaded", "rng", "dagger_seed",
        # the reference implementation's names (see docs/migrating.md)
        "experiment_object", "parent_sha", "root", "path", "to_promise", "slim_loaded",
        # class-level declarations
        "PROPERTIES", "NONHASHED_ATTRIBUTES", "VERSION",
    }
)  # fmt: skip


def check_names(owner: str, kind: str, names: list[str], reserved: frozenset[str]) -> None:
    """Refuse attribute names that would clash with dagger's API or its bookkeeping.

    ``owner`` and ``kind`` name the class and the list (``"State.PROPERTIES"``) in the error.
    """
    for name in names:
        if not name.isidentifier():
            raise DefinitionError(
                f"{owner}.{kind} lists {name!r}, which is not a Python identifier: attribute names must be "
                "valid identifiers (letters, digits, underscores). Rename it."
            )
        dunder = name.startswith("__") and name.endswith("__")
        if name in reserved or name.startswith("_dg_") or dunder:
            what = (
                "a Python special name"
                if dunder
                else "dagger's internal bookkeeping" if name.startswith("_") else "part of dagger's API"
            )
            raise DefinitionError(
                f"{owner}.{kind} lists {name!r}, a name reserved by dagger's API "
                f"({owner.rpartition('.')[2]}.{name} is {what}). Rename your attribute, "
                f"e.g. {name.strip('_') or 'x'}_value; see 'Reserved names' in docs/guide.md."
            )


_get = object.__getattribute__
_set = object.__setattr__


def set_attributes(obj: Any, items: Iterable[tuple[str, Any]]) -> None:
    """Set ``obj``'s attributes one by one, in order, without touching ``obj.__dict__``.

    On CPython 3.11 an object whose ``__dict__`` was ever read or updated as a
    dict keeps its attributes in that dict, and each lookup goes through it:
    a recipe looping over ``state.x`` ran about 2x slower than over an object
    built normally. Set one by one on a new object, attributes stay in the
    class's shared layout, which the interpreter's attribute caches read
    directly. A name the class defines as a data descriptor (a property with
    a setter) goes into ``__dict__`` as before, never through the descriptor.
    """
    cls = type(obj)
    for name, value in items:
        if hasattr(getattr(cls, name, None), "__set__"):
            _get(obj, "__dict__")[name] = value
        else:
            _set(obj, name, value)


def _own(obj: Any, name: str, default: Any = None) -> Any:
    """``obj``'s own attribute ``name`` (default if unset), read without ``__getattr__`` or ``obj.__dict__``."""
    try:
        return _get(obj, name)
    except AttributeError:
        return default


class ExperimentState:
    """A state of the experiment: a model and its context at one point of the tree.

    Subclass it and declare::

        class State(dg.ExperimentState):
            PROPERTIES = ["dataset_name", "model_name"]          # define the root; hashed
            NONHASHED_ATTRIBUTES = ["train_data", "model"]       # stored, inherited, never hashed

            def initialize_state(self, **kwargs):
                self.model = get_model(self.model_name)

    PROPERTIES are given to :meth:`Experiment.spawn_new_tree` and identify the
    root. Every attribute a recipe sets is stored with the state; children
    inherit all of them. A state from :meth:`Experiment.restore` starts slim
    (properties and metadata only); :meth:`restore` loads the rest.
    """

    PROPERTIES: ClassVar[list[str]] = []
    NONHASHED_ATTRIBUTES: ClassVar[list[str]] = []
    #: Bump to give every state of the class new hashes (a fresh tree) after changing what
    #: ``initialize_state`` builds. Part of the root's identity only when it is not 0, so
    #: existing trees keep their hashes.
    VERSION: ClassVar[Any] = 0

    def __init__(self, parent_sha: str | None = None, experiment_object: Any = None) -> None:
        """Nothing to set up: dagger builds states itself.

        The signature is the reference implementation's, so that a subclass with its own
        ``__init__`` can call ``super().__init__(parent_sha, experiment_object)``. dagger calls
        a subclass's ``__init__`` (with both as keywords) before it sets the root's PROPERTIES
        and calls ``initialize_state``. Both arguments are accepted for compatibility only:
        the parent and the experiment are known from the tree (``parent_sha``,
        ``experiment_object``).
        """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in ("PROPERTIES", "NONHASHED_ATTRIBUTES"):
            value = getattr(cls, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise DefinitionError(
                    f"{cls.__qualname__}.{name} must be a list of attribute names, e.g. "
                    f'{name} = ["model_name"]; got {value!r}'
                )
            check_names(cls.__qualname__, name, list(value), RESERVED_STATE_NAMES | _PRIVATE)
        both = set(cls.PROPERTIES) & set(cls.NONHASHED_ATTRIBUTES)
        if both:
            raise DefinitionError(
                f"{cls.__qualname__}: {sorted(both)} listed both in PROPERTIES and in NONHASHED_ATTRIBUTES; "
                "a name is either part of the root's identity or not. List each name once."
            )

    def initialize_state(self, **kwargs: Any) -> None:
        """Build the root's content (models, data) from its PROPERTIES. Called once, when the root is built."""

    # ---- identity and bookkeeping ------------------------------------------------

    def sha(self) -> str:
        """The state's hash: its identity in the experiment."""
        sha = _own(self, "_dg_sha")
        if sha is None:
            raise KeyError("_dg_sha")  # as before: a state outside an experiment has no hash
        return sha  # type: ignore[no-any-return]

    @property
    def tags(self) -> list[str]:
        """Labels given to this state with ``exp.tag(...)``; they never change its identity."""
        return list(self._meta().get("tags", []))

    @property
    def metadata(self) -> dict[str, Any]:
        """The state's slim metadata (recipe, properties, tags, results, timings), as stored."""
        return self._meta()

    @property
    def results(self) -> dict[str, Any]:
        """What each Function returned for this state at the last run, by function name."""
        return dict(self._meta().get("results", {}))

    @property
    def recipe(self) -> dict[str, Any] | None:
        """The recipe that made this state (class, name, properties), or None for the root."""
        return self._meta().get("recipe")

    @property
    def dagger_seed(self) -> int:
        """The integer seed dagger derives from this state's hash (see the user guide).

        It is what seeds the global generators before ``run``. (It was ``state.seed`` before
        ``seed`` was given back to users as an ordinary attribute name.)
        """
        return int(self.sha()[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF

    def rng(self) -> Any:
        """A numpy Generator seeded from this state's hash (:attr:`dagger_seed`)."""
        import numpy as np

        return np.random.default_rng(self.dagger_seed)

    @property
    def parent(self) -> ExperimentState | None:
        """The parent state in the experiment tree (slim), or None for the root."""
        parent = self._meta().get("parent")
        if parent is None:
            return None
        tree = self._tree()
        found = tree._nodes.get(parent)
        if found is None:
            raise CorruptRecordError(
                f"state {self.sha()[:12]}: its parent {str(parent)[:12]} is not in the store (a dangling parent). "
                "Its parent's records were deleted or its record edited: run `dagger verify`"
            )
        return found

    @property
    def children(self) -> list[ExperimentState]:
        """The states made from this one (slim)."""
        return list(self._tree().children_of(self.sha()))

    def lineage(self) -> list[ExperimentState]:
        """The path from the root to this state, root first.

        Each state's ``.recipe`` tells how it was made from the one before.
        """
        tree = _own(self, "_dg_tree")
        if tree is not None and self.sha() in tree.problems():  # a cycle or a dangling parent: no root
            raise tree._broken(self.sha())
        path: list[ExperimentState] = []
        node: ExperimentState | None = self
        while node is not None:
            path.append(node)
            node = node.parent
        return path[::-1]

    @property
    def parent_sha(self) -> str | None:
        """The parent's hash, or None for the root (the reference implementation's name)."""
        return self._meta().get("parent")

    @property
    def experiment_object(self) -> Any:
        """The :class:`~dagger.Experiment` this state was browsed from, or None.

        States in ``exp.graph`` know their experiment; a state inside a recipe's ``run``
        (computed in a Dask task, maybe in another process) does not, and gets None.
        """
        tree = _own(self, "_dg_tree")
        return None if tree is None else getattr(tree, "experiment", None)

    @property
    def root(self) -> ExperimentState | None:
        """The root state of this state's tree (slim), or None outside a tree."""
        tree = _own(self, "_dg_tree")
        return None if tree is None else tree.root

    @property
    def path(self) -> str:
        """The file that holds this state's commit record (its pickle is inside it or under ``states/``):
        its ``meta/`` file, or the segment that holds it."""
        from dagger.store.records import FIRST_REV

        tree = self._tree()
        key = tree.records.record_file(self.sha(), self._meta().get("rev") or FIRST_REV)
        return f"{tree.records.store.url.rstrip('/')}/{key}"

    def to_promise(self) -> Any:
        """This stored state as an :class:`~dagger.ExperimentStatePromise` of its experiment.

        Apply recipes to the promise to grow the stored tree from this state, then run::

            child = TrainRecipe(nb_epochs=1)(exp.graph.root.to_promise())
            exp.run()
        """
        exp = self.experiment_object
        if exp is None:
            raise DefinitionError(
                f"state {self.sha()[:12]} is not attached to an Experiment: take it from exp.graph "
                "(Experiment.restore(directory).graph) to grow the tree from it"
            )
        return exp._promise_of(self.sha())

    @property
    def slim_loaded(self) -> bool:
        """Whether only the slim state (properties and metadata) is in memory: ``not is_loaded``."""
        return not self.is_loaded

    @property
    def is_loaded(self) -> bool:
        """Whether the full state (not just slim metadata) is in memory."""
        return bool(_own(self, "_dg_loaded", False))

    def restore(self, map_location: Any = None) -> ExperimentState:
        """Load the full state from the store into this object, and return it.

        This unpickles the stored state, which can run code: restore only
        experiments you trust. ``map_location`` places torch tensors, as in
        ``torch.load`` (by default, tensors saved on a GPU load on the CPU when
        no GPU is present). A state already in memory is returned as it is, unless
        ``map_location`` is given: then it is loaded again from the store onto that
        location (what is stored wins over changes made in memory since).
        """
        if self.is_loaded and map_location is None:
            return self
        full = self._tree().records.load_pickle(self.sha(), map_location=map_location)
        if type(full) is not type(self):
            self.__class__ = type(full)
        self.__dict__.update(full.__dict__)
        self.__dict__["_dg_loaded"] = True
        return self

    def deflate(self) -> ExperimentState:
        """Drop everything but PROPERTIES and metadata from memory; :meth:`restore` brings it back.

        Returns the state itself (truthy, like the reference implementation's ``True``).
        """
        keep = set(self.PROPERTIES) | set(_INTERNAL)
        for name in [k for k in self.__dict__ if k not in keep]:
            del self.__dict__[name]
        self.__dict__["_dg_loaded"] = False
        return self

    @contextmanager
    def lazy_load(self, map_location: Any = None) -> Iterator[ExperimentState]:
        """Restore the full state for the duration of a ``with`` block, then deflate it again."""
        was_loaded = self.is_loaded
        self.restore(map_location=map_location)
        try:
            yield self
        finally:
            if not was_loaded:
                self.deflate()

    # ---- internals -----------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        # (Read and set without self.__dict__, which would slow every attribute of a state in a run.)
        meta = _own(self, "_dg_meta")
        if meta is None:
            tree = _own(self, "_dg_tree")
            if tree is not None:  # a slim node: its metadata is decoded from the index on first use
                meta = tree._meta_of(_get(self, "_dg_sha"))
                _set(self, "_dg_meta", meta)
                return meta
            raise DefinitionError(
                f"this {type(self).__name__} is not part of an experiment yet: create states through "
                "Experiment.spawn_new_tree and recipes, not by calling the class"
            )
        return meta

    def _tree(self) -> StaticExperimentTree:
        tree = _own(self, "_dg_tree")
        if tree is None:
            raise DefinitionError(f"state {self.sha()[:12]} is not attached to an experiment tree")
        return tree

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails.
        if name.startswith("__") or name in _INTERNAL:
            raise AttributeError(name)
        d = self.__dict__
        if "_dg_sha" in d and not d.get("_dg_loaded", False):
            raise DeflatedStateError(
                f"{name!r} is not in memory: state {d['_dg_sha'][:12]} is slim (deflated). "
                "Call state.restore() first, or use `with state.lazy_load():`."
            )
        hint = " (dagger's hash-derived seed is state.dagger_seed)" if name == "seed" else ""
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}{hint}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RESERVED_STATE_NAMES or name.startswith("_dg_") or name in _PRIVATE:
            raise DefinitionError(
                f"cannot set {type(self).__name__}.{name}: {name!r} is reserved by dagger's ExperimentState API "
                "(see 'Reserved names' in docs/guide.md), so the value would be lost or break the state. "
                "Store it under another name."
            )
        object.__setattr__(self, name, value)

    def __getstate__(self) -> dict[str, Any]:
        return {k: wrap_large_bytes(v) for k, v in self.__dict__.items() if k not in _INTERNAL}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # copy.copy() hands back __getstate__'s dict as is: unwrap large bytes it wrapped.
        set_attributes(self, ((k, v.data if type(v) is _LargeBytes else v) for k, v in state.items()))

    def __repr__(self) -> str:
        d = self.__dict__
        sha = d.get("_dg_sha")
        if sha is None:
            return f"<{type(self).__name__} (not in an experiment)>"
        meta = d.get("_dg_meta") or (self._meta() if d.get("_dg_tree") is not None else {})
        recipe = (meta.get("recipe") or {}).get("name", "root")
        tags = ", ".join(meta.get("tags", []))
        slim = "" if d.get("_dg_loaded") else " slim"
        return f"<{type(self).__name__} {sha[:10]} {recipe}{' [' + tags + ']' if tags else ''}{slim}>"


# dagger's private helpers on states (``_meta``, ``_tree``): a user attribute of that name would hide them.
_PRIVATE = frozenset(n for n in vars(ExperimentState) if n.startswith("_") and not n.startswith("__"))
