"""Recipe (a state-mutating transition) and Function (a non-mutating, in-graph action)."""

from __future__ import annotations

import copy
import copyreg
import functools
from typing import TYPE_CHECKING, Any, ClassVar

from dagger import hashing
from dagger.errors import DefinitionError, MissingPropertyError, UnhashableError, UnknownPropertyError
from dagger.state import set_attributes

if TYPE_CHECKING:
    from dagger.promise import ExperimentStatePromise


class Recipe:
    """A way to make a child state from a parent state.

    Subclass it, list the PROPERTIES that define it, and write ``run``::

        class TrainRecipe(dg.Recipe):
            PROPERTIES = ["nb_epochs", "lr"]

            def run(self, state):
                train(state.model, epochs=self.nb_epochs, lr=self.lr)
                return state

        child = TrainRecipe(nb_epochs=3, lr=0.1)(root)

    No ``__init__`` is needed: PROPERTIES are keyword arguments. A recipe's
    identity (class, PROPERTIES, ``VERSION``) is read when it is applied to a
    state, so a recipe may also set its properties in its own ``__init__``.
    ``run`` receives its own copy of the parent state and returns the child.
    Bump ``VERSION`` to force recomputation after changing what ``run`` does.
    """

    PROPERTIES: ClassVar[list[str]] = []
    VERSION: ClassVar[Any] = 0
    #: Seed Python's, numpy's and torch's global generators from the state's hash before ``run``.
    #: A class setting; an older spelling, a class attribute ``SEED = False``, is still honoured
    #: unless ``SEED`` is one of the recipe's PROPERTIES (then it is the user's data).
    SEED_GLOBAL_RNGS: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        from dagger.state import check_names

        props = cls.PROPERTIES
        if isinstance(props, str) or not all(isinstance(p, str) for p in props):
            raise DefinitionError(
                f"{cls.__qualname__}.PROPERTIES must be a list of attribute names, e.g. "
                f'PROPERTIES = ["lr"]; got {props!r}'
            )
        check_names(cls.__qualname__, "PROPERTIES", list(props), RESERVED_RECIPE_NAMES)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RESERVED_RECIPE_NAMES:
            raise DefinitionError(
                f"cannot set {type(self).__name__}.{name}: {name!r} is reserved by dagger's Recipe API "
                "(see 'Reserved names' in docs/guide.md). Store it under another name."
            )
        object.__setattr__(self, name, value)

    def __init__(self, **properties: Any) -> None:
        unknown = sorted(set(properties) - set(self.PROPERTIES))
        if unknown:
            raise UnknownPropertyError(
                f"{type(self).__name__} got unknown propert{'y' if len(unknown) == 1 else 'ies'} "
                f"{', '.join(map(repr, unknown))}; its PROPERTIES are {list(self.PROPERTIES)}. "
                "Add the name to PROPERTIES or remove the argument."
            )
        for name, value in properties.items():
            setattr(self, name, value)

    def __setstate__(self, state: Any) -> None:
        """Unpickling (on a worker) or ``copy.copy``: set attributes one by one (see :func:`own_copy`)."""
        slots = None
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ values), as pickle makes it
            state, slots = state
        if state:
            set_attributes(self, state.items())
        for name, value in (slots or {}).items():
            setattr(self, name, value)

    def run(self, state: Any) -> Any:
        """Mutate ``state`` (your own copy of the parent) and return it as the child."""
        raise NotImplementedError(f"{type(self).__name__} must define run(self, state) and return the new state")

    def properties(self) -> dict[str, Any]:
        """The values of this recipe's PROPERTIES, checking that each is set."""
        missing = [p for p in self.PROPERTIES if not hasattr(self, p)]
        if missing:
            example = ", ".join(f"{p}=..." for p in missing)
            raise MissingPropertyError(
                f"{type(self).__name__} has no value for {', '.join(map(repr, missing))}: "
                f"pass {type(self).__name__}({example}) or set it in __init__ before applying the recipe"
            )
        return {p: getattr(self, p) for p in self.PROPERTIES}

    def identity(self) -> tuple[dict[str, Any], str]:
        """This recipe's PROPERTIES and its hash, as of now."""
        props = self.properties()
        cls = type(self)
        try:
            sha = hashing.recipe_hash(hashing.object_path(cls), props, cls.VERSION)
        except UnhashableError as exc:
            raise hashing.name_path(exc, cls.__name__) from None
        return props, sha

    def __call__(self, state: ExperimentStatePromise) -> ExperimentStatePromise:
        from dagger.promise import ExperimentStatePromise

        if not isinstance(state, ExperimentStatePromise):
            raise DefinitionError(
                f"{type(self).__name__} was applied to {type(state).__name__}, not to a state of an experiment: "
                "apply recipes to what Experiment.spawn_new_tree or another recipe returned"
            )
        from dagger.execution import check_storable

        props, sha = self.identity()
        check_storable(props, type(self).__name__)
        return state._experiment._add_child(state, own_copy(self), props, sha)

    def __repr__(self) -> str:
        props = ", ".join(f"{p}={getattr(self, p, '?')!r}" for p in self.PROPERTIES)
        return f"{type(self).__name__}({props})"


#: Attribute names that belong to the Recipe API; every other name can be a recipe PROPERTY.
RESERVED_RECIPE_NAMES = frozenset({"run", "identity", "properties", "PROPERTIES", "VERSION", "SEED_GLOBAL_RNGS"})


def seeds_global_rngs(cls: type[Recipe]) -> bool:
    """Whether dagger seeds the global generators before ``cls.run`` (read from the class, never
    from an instance, so no recipe property can switch it)."""
    if "SEED" not in cls.PROPERTIES:  # the older spelling, where it is not the user's data
        for klass in cls.__mro__:
            if "SEED_GLOBAL_RNGS" in vars(klass):
                break
            if "SEED" in vars(klass):
                return bool(vars(klass)["SEED"])
    return bool(cls.SEED_GLOBAL_RNGS)


def own_copy(obj: Any) -> Any:
    """A shallow copy of ``obj`` (a recipe) whose attributes run as fast as those of an object built normally.

    ``copy.copy`` fills the new object's ``__dict__`` in one ``update``, which
    leaves a plain dict behind it; CPython (3.11) then looks each attribute up
    in that dict, without the per-class layout its attribute caches use for
    objects whose attributes were set one by one (a ``run`` looping over
    ``self.i`` ran 1.5-2.8x slower). Here the copy is made empty with
    ``cls.__new__`` and its attributes are set one by one, in the original's
    order, by :func:`~dagger.state.set_attributes` (which puts a name the class
    defines as a data descriptor into ``__dict__``, as ``copy.copy`` does). Each
    application of a recipe still gets its own object, so mutating one never
    affects another. Objects that customise copying (``__copy__``,
    ``__reduce_ex__``, ``__getstate__``) or use ``__slots__`` are copied with
    ``copy.copy``.
    """
    cls: Any = type(obj)
    if (
        getattr(cls, "__copy__", None) is not None
        or cls.__reduce_ex__ is not object.__reduce_ex__
        or cls.__reduce__ is not object.__reduce__
        or getattr(cls, "__getstate__", object.__getstate__) is not object.__getstate__  # type: ignore[attr-defined]
        or copyreg._slotnames(cls)  # type: ignore[attr-defined]
    ):
        return copy.copy(obj)
    new = cls.__new__(cls)
    set_attributes(new, obj.__dict__.items())
    return new


class Function:
    """A non-mutating action on a state, run in-graph at every ``exp.run()``.

    Wrap a function of one state (``@dg.Function`` or ``dg.Function(fn)``).
    Applied to a state of the tree, it is recorded, and at every run it is
    called with its own copy of the state, whether the state was computed or
    served from the store. What it returns is stored in the state's metadata
    under the function's name (numbers, strings, lists and dicts of them), so
    analysis can tabulate results beside provenance::

        @dg.Function
        def evaluate(state):
            return {"accuracy": accuracy(state.model, state.eval_data)}

    Called on a full ExperimentState (not a promise), it simply runs.
    """

    def __init__(self, fn: Any, name: str | None = None) -> None:
        if not callable(fn):
            raise DefinitionError(f"dg.Function needs a function of one state, got {fn!r}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        functools.update_wrapper(self, fn)

    def __call__(self, state: Any) -> Any:
        from dagger.promise import ExperimentStatePromise

        if isinstance(state, ExperimentStatePromise):
            state._experiment._add_function(state, self)
            return FunctionCall(self, state)
        return self.fn(state)

    def __repr__(self) -> str:
        return f"Function({self.name})"


class FunctionCall:
    """A Function applied to a state of the tree; ``.get()`` is its latest result."""

    def __init__(self, function: Function, promise: ExperimentStatePromise) -> None:
        self.function = function
        self.promise = promise

    def get(self) -> Any:
        """Run what is needed and return the function's result for this state."""
        self.promise._experiment.run(targets=[self.promise], progress=False)
        return self.promise._experiment.graph.node(self.promise.sha()).results.get(self.function.name)

    def __repr__(self) -> str:
        return f"<{self.function.name}({self.promise.sha()[:10]})>"
