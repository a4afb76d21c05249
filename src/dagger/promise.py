"""ExperimentStatePromise: a symbolic, not-yet-computed state of the tree."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dagger.experiment import Experiment
    from dagger.recipe import Function, Recipe
    from dagger.state import ExperimentState


class ExperimentStatePromise:
    """What ``spawn_new_tree`` and a recipe call return: a future ExperimentState.

    Its hash is known at once (from its parent's hash and its recipe), so
    defining a tree costs no computation. Apply recipes to it to grow the
    tree; call :meth:`get` to compute it (and whatever it needs) and load it.
    The root's PROPERTIES read as attributes (``promise.seed``) where the name
    is not one of the promise's own; ``promise.properties`` holds them all.
    """

    __slots__ = ("_experiment", "_sha", "parent", "recipe", "recipe_properties", "recipe_sha", "tags", "functions", "init_kwargs", "properties", "depth")

    def __init__(
        self,
        experiment: Experiment,
        sha: str,
        parent: ExperimentStatePromise | None,
        recipe: Recipe | None,
        recipe_properties: dict[str, Any] | None,
        recipe_sha: str | None,
        tags: list[str],
        init_kwargs: dict[str, Any] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> None:
        self._experiment = experiment
        self._sha = sha
        self.parent = parent
        self.recipe = recipe
        self.recipe_properties = recipe_properties
        self.recipe_sha = recipe_sha
        self.tags = tags
        self.functions: list[Function] = []
        self.init_kwargs = init_kwargs
        self.properties: dict[str, Any] = properties if properties is not None else (parent.properties if parent else {})
        self.depth: int = 0 if parent is None else parent.depth + 1

    def sha(self) -> str:
        """The hash the state will have."""
        return self._sha

    @property
    def experiment_object(self) -> Experiment:
        """The :class:`~dagger.Experiment` this promise belongs to (the reference implementation's name)."""
        return self._experiment

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the root's PROPERTIES (``promise.seed``) are known
        # before anything runs; everything else needs the computed state. The promise's own
        # attributes (parent, recipe, tags, properties, depth, ...) come first: a root property
        # named like one of them is always at ``promise.properties[name]``.
        if not (name.startswith("__") and name.endswith("__")):  # (Python's own protocol names never are)
            try:
                props = object.__getattribute__(self, "properties")
            except AttributeError:
                props = {}
            if name in props:
                return props[name]
        raise AttributeError(
            f"{type(self).__name__} has no attribute {name!r}: a promise is a state not computed yet and knows "
            "only its hash, recipe, tags and the root's PROPERTIES. Call .get() for the computed state."
        )

    def get(self, map_location: Any = None) -> ExperimentState:
        """Compute this state if it is not stored yet, and return it fully loaded."""
        self._experiment.run(targets=[self], progress=False)
        return self._experiment.graph.node(self._sha).restore(map_location=map_location)

    def __repr__(self) -> str:
        name = type(self.recipe).__name__ if self.recipe is not None else "root"
        tags = f" [{', '.join(self.tags)}]" if self.tags else ""
        return f"<ExperimentStatePromise {self._sha[:10]} {name}{tags}>"
