"""Experiment: where a tree of states is defined, run, stored and restored."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dagger import hashing
from dagger.errors import (
    DaggerWarning,
    DefinitionError,
    MissingPropertyError,
    NotAnExperimentError,
    RunFailedError,
    StateClassMismatchError,
    UnhashableError,
)
from dagger.execution import Runtime, TaskSpec, resolve_scheduler, run_task
from dagger.promise import ExperimentStatePromise
from dagger.recipe import Function, Recipe
from dagger.report import RunReport
from dagger.state import ExperimentState
from dagger.store import Store, open_store
from dagger.store.records import Records, encode_json


class Experiment:
    """An experiment tree stored at ``directory`` (a local path or any fsspec URL).

    ::

        exp = dg.Experiment("runs/prune", state_class=State)
        root = exp.spawn_new_tree(dataset_name="digits", model_name="mlp")
        with exp.tag("lr:0.1"):
            trained = TrainRecipe(nb_epochs=3, lr=0.1)(root)
        exp.run()                       # or run(scheduler="threads" | "processes" | client)

    Defining states is lazy and cheap; :meth:`run` computes what the store
    does not hold yet and serves everything else from it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | Store,
        state_class: type[ExperimentState] | None = None,
        *,
        storage_options: dict[str, Any] | None = None,
        blob_threshold: int = 64 * 1024,
        verify_blobs: bool = True,
        fsync: bool = False,
        seed: bool = True,
        locking: bool = True,
    ) -> None:
        if state_class is not None and not (isinstance(state_class, type) and issubclass(state_class, ExperimentState)):
            raise DefinitionError(f"state_class must be a subclass of dagger.ExperimentState, got {state_class!r}")
        self.storage_options = dict(storage_options or {})
        self.store = open_store(directory, fsync=fsync, **self.storage_options)
        self.directory = self.store.url
        self.records = Records(self.store, blob_threshold, verify_blobs)
        self.runtime = Runtime(
            location=self.store.url,
            storage_options=self.storage_options,
            blob_threshold=blob_threshold,
            verify_blobs=verify_blobs,
            fsync=fsync,
            seed=seed,
            locking=locking,
        )
        self.info = self.records.read_experiment()
        if state_class is not None and self.info is not None:
            _check_state_class(self.info, state_class, self.directory)
        self.state_class = state_class
        self._promises: dict[str, ExperimentStatePromise] = {}
        self._root: ExperimentStatePromise | None = None
        self._tags: list[str] = []
        self._graph: Any = None
        self.last_report: RunReport | None = None

    # ---- defining the tree -------------------------------------------------------

    @contextmanager
    def tag(self, *tags: str) -> Iterator[None]:
        """Label every state defined inside the block; blocks nest. Tags never change identity."""
        for t in tags:
            if not isinstance(t, str) or not t:
                raise DefinitionError(f"tags must be non-empty strings, got {t!r}")
        self._tags.extend(tags)
        try:
            yield
        finally:
            del self._tags[len(self._tags) - len(tags) :]

    def spawn_new_tree(self, **kwargs: Any) -> ExperimentStatePromise:
        """Define the root state from the state class's PROPERTIES (others go to ``initialize_state``)."""
        cls = self.state_class
        if cls is None:
            raise DefinitionError(
                "this Experiment has no state_class: create it with Experiment(directory, state_class=State) "
                "to define a tree"
            )
        if self._root is not None:
            raise DefinitionError(
                "this experiment already has a root (spawn_new_tree was called before). An experiment is one "
                "tree: grow it from the promise the first call returned, or use another Experiment folder."
            )
        missing = [p for p in cls.PROPERTIES if p not in kwargs]
        if missing:
            raise MissingPropertyError(
                f"spawn_new_tree is missing root propert{'y' if len(missing) == 1 else 'ies'} "
                f"{', '.join(map(repr, missing))} of {cls.__name__} (PROPERTIES = {list(cls.PROPERTIES)}): "
                f"pass {', '.join(p + '=...' for p in missing)}"
            )
        props = {p: kwargs[p] for p in cls.PROPERTIES}
        path = hashing.object_path(cls)
        try:
            sha = hashing.root_hash(path, props)
        except UnhashableError as exc:
            raise hashing.name_path(exc, cls.__name__) from None
        if self.info is not None and self.info.get("root") not in (None, sha):
            raise DefinitionError(
                f"{self.directory} already holds a tree whose root has other properties "
                f"({self.info.get('root_properties')}); a folder holds one tree. Use a new folder for root "
                f"properties {_jsonish(props)}."
            )
        if self.info is None:
            self.info = {
                "format": hashing.FORMAT_VERSION,
                "state_class": path,
                "root": sha,
                "root_properties": _jsonish(props),
                "created": time.time(),
            }
            self.records.write_experiment(self.info)
        promise = ExperimentStatePromise(self, sha, None, None, None, None, list(self._tags), kwargs, props)
        self._root = promise
        self._promises[sha] = promise
        return promise

    def _add_child(
        self, parent: ExperimentStatePromise, recipe: Recipe, props: dict[str, Any], recipe_sha: str
    ) -> ExperimentStatePromise:
        if parent._experiment is not self:
            raise DefinitionError("a recipe was applied to a state of another Experiment")
        sha = hashing.child_hash(parent._sha, recipe_sha)
        existing = self._promises.get(sha)
        if existing is not None:  # identical definitions collapse into one state
            existing.tags.extend(t for t in self._tags if t not in existing.tags)
            return existing
        promise = ExperimentStatePromise(self, sha, parent, recipe, props, recipe_sha, list(self._tags))
        self._promises[sha] = promise
        return promise

    def _add_function(self, promise: ExperimentStatePromise, fn: Function) -> None:
        if all(f is not fn for f in promise.functions):
            promise.functions.append(fn)

    # ---- running ---------------------------------------------------------------------

    def run(
        self,
        scheduler: Any = "single-threaded",
        *,
        num_workers: int | None = None,
        progress: bool | None = None,
        targets: Iterable[ExperimentStatePromise] | None = None,
        raise_on_failure: bool = True,
    ) -> RunReport:
        """Compute every defined state not yet in the store, and run every Function.

        ``scheduler`` is ``"single-threaded"`` (default), ``"threads"``,
        ``"processes"``, a ``dask.distributed.Client`` or a scheduler address.
        Returns a :class:`RunReport`. If any state fails, every other branch
        still finishes and is saved, then :class:`RunFailedError` lists the
        failures; running again computes only what is missing.
        """
        from dagger.progress import Progress

        start = time.time()
        stored = self.records.load_all_meta(on_corrupt=self._warn_corrupt)
        selected = self._select(targets)
        graph: dict[str, Any] = {}
        plan: dict[str, str] = {}
        tag_updates: list[dict[str, Any]] = []
        for promise in selected:
            sha = promise._sha
            meta = stored.get(sha)
            if meta is None:
                plan[sha] = "compute"
            elif promise.functions:
                plan[sha] = "evaluate"
            else:
                if promise.tags and set(promise.tags) != set(meta.get("tags", [])):
                    tag_updates.append(meta)
                    meta["tags"] = list(promise.tags)
                continue
            spec = self._spec(promise, compute=meta is None, stored_meta=meta)
            parent = promise.parent
            if parent is not None and plan.get(parent._sha) == "compute":
                graph[sha] = (run_task, self.runtime, spec, parent._sha)
            else:
                graph[sha] = (run_task, self.runtime, spec)
        for meta in tag_updates:
            self.records.write_meta(meta, old_rev=meta.get("rev"))
        records: list[dict[str, Any]] = []
        if graph:
            get, client = resolve_scheduler(scheduler, num_workers)
            keys = list(graph)
            show = Progress.wanted(progress)
            try:
                with Progress(len(keys), enabled=show, scheduler=scheduler) as bar:
                    records = bar.collect(get, graph, keys)
            finally:
                if client is not None:
                    client.close()
        cached_only = [p for p in selected if p._sha not in graph]
        report = RunReport.build(records, cached_only, stored, start, time.time())
        for rec in records:
            if "meta" in rec:
                stored[rec["sha"]] = rec.pop("meta")
        if graph or tag_updates:
            self.records.write_index(stored.values())
        self._graph = None
        self.last_report = report
        if report.failures and raise_on_failure:
            raise RunFailedError(report.failure_message(), report.failures, report)
        return report

    def _select(self, targets: Iterable[ExperimentStatePromise] | None) -> list[ExperimentStatePromise]:
        if targets is None:
            return list(self._promises.values())
        wanted: dict[str, ExperimentStatePromise] = {}
        for target in targets:
            node: ExperimentStatePromise | None = target
            while node is not None and node._sha not in wanted:
                wanted[node._sha] = node
                node = node.parent
        return sorted(wanted.values(), key=lambda p: p.depth)

    def _spec(self, promise: ExperimentStatePromise, compute: bool, stored_meta: dict[str, Any] | None) -> TaskSpec:
        assert self.state_class is not None
        if compute:
            meta = self._base_meta(promise)
        else:
            meta = dict(stored_meta or {})
            meta["tags"] = list(promise.tags) if promise.tags else meta.get("tags", [])
        recipe = promise.recipe
        label = type(recipe).__name__ if recipe is not None else "root"
        return TaskSpec(
            sha=promise._sha,
            parent=promise.parent._sha if promise.parent is not None else None,
            compute=compute,
            state_class=self.state_class,
            recipe=recipe,
            properties=promise.properties if promise.parent is None else {},
            init_kwargs=promise.init_kwargs,
            functions=list(promise.functions),
            meta=meta,
            label=label,
        )

    def _base_meta(self, promise: ExperimentStatePromise) -> dict[str, Any]:
        recipe = promise.recipe
        meta: dict[str, Any] = {
            "format": hashing.FORMAT_VERSION,
            "sha": promise._sha,
            "parent": promise.parent._sha if promise.parent is not None else None,
            "depth": promise.depth,
            "state_class": hashing.object_path(self.state_class),
            "tags": list(promise.tags),
            "properties": _jsonish(promise.properties),
            "created": time.time(),
        }
        if recipe is not None:
            cls = type(recipe)
            meta["recipe"] = {
                "name": cls.__name__,
                "class": hashing.object_path(cls),
                "properties": _jsonish(promise.recipe_properties or {}),
                "version": _jsonish(cls.VERSION),
                "sha": promise.recipe_sha,
            }
        return meta

    def _warn_corrupt(self, sha: str, key: str, exc: Exception) -> None:
        warnings.warn(
            f"skipping state {sha[:12]}: its metadata file {self.directory}/{key} is corrupt ({exc}). "
            "All other states are loaded; run `dagger verify` for details.",
            DaggerWarning,
            stacklevel=3,
        )

    # ---- analysis ----------------------------------------------------------------------

    @property
    def graph(self) -> Any:
        """The stored tree as a :class:`~dagger.graph.StaticExperimentTree` (slim states)."""
        if self._graph is None:
            from dagger.graph import StaticExperimentTree

            metas = self.records.load_all_meta(on_corrupt=self._warn_corrupt)
            self._graph = StaticExperimentTree(metas, self.records, self.state_class, self.info)
        return self._graph

    @classmethod
    def restore(
        cls,
        directory: str | os.PathLike[str] | Store,
        state_class: type[ExperimentState] | None = None,
        slim: bool = True,
        **options: Any,
    ) -> Experiment:
        """Open a stored experiment. Slim (default) reads only JSON metadata and runs no code.

        With ``slim=False`` every state is also restored in full (unpickled).
        """
        exp = cls(directory, state_class=state_class, **options)
        if exp.info is None:
            raise NotAnExperimentError(
                f"{exp.directory} holds no dagger experiment (no experiment.json). Check the path, or create "
                "one with dagger.Experiment(directory, state_class=...)."
            )
        graph = exp.graph
        if not slim:
            for node in graph.nodes:
                node.restore()
        return exp

    def __repr__(self) -> str:
        return f"Experiment({self.directory!r}, states defined={len(self._promises)})"


def _check_state_class(info: dict[str, Any], state_class: type, directory: str) -> None:
    recorded = str(info.get("state_class", ""))
    given = hashing.object_path(state_class)
    if recorded == given:
        return
    rec_mod, _, rec_name = recorded.rpartition(".")
    if "__main__" in (state_class.__module__, rec_mod.split(".")[0]) and rec_name == state_class.__qualname__.rpartition(".")[2]:
        return  # the same class, defined in a script's __main__ on one side
    raise StateClassMismatchError(
        f"{directory} was created with state class {recorded!r}, not {given!r}. Pass the original class "
        "(or state_class=None to browse slim states without it)."
    )


def _jsonish(value: Any) -> Any:
    """Metadata view of a value: JSON where possible, else its repr."""
    from dagger.execution import jsonable

    return jsonable(value)
