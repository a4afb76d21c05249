"""Experiment: where a tree of states is defined, run, stored and restored."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from dagger import environment, hashing, sourcehash
from dagger.errors import (
    DaggerWarning,
    DefinitionError,
    MissingPropertyError,
    NotAnExperimentError,
    RunFailedError,
    StateClassMismatchError,
    UnhashableError,
)
from dagger.execution import (
    CODE_CHANGED,
    FAILED_BEFORE,
    FORCED_BY_POLICY,
    NEVER_STORED,
    Runtime,
    TaskSpec,
    check_storable,
    close_records,
    failure_key,
    flush_records,
    forget_recent,
    jsonable,
    keep_written,
    process_records,
    resolve_scheduler,
    state_task,
    take_written,
)
from dagger.promise import ExperimentStatePromise
from dagger.recipe import Function, Recipe
from dagger.report import RunReport
from dagger.state import ExperimentState
from dagger.store import Store, open_store
from dagger.store.gctune import long_lived_build
from dagger.store.index import StoredMetas
from dagger.store.layout import STORE_FORMAT
from dagger.store.records import Records


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
        packages: Iterable[str] = (),
        on_code_change: str = "warn",
        signing_key: bytes | str | None = None,
    ) -> None:
        if state_class is not None and not (isinstance(state_class, type) and issubclass(state_class, ExperimentState)):
            raise DefinitionError(f"state_class must be a subclass of dagger.ExperimentState, got {state_class!r}")
        self.storage_options = dict(storage_options or {})
        self.store = open_store(directory, fsync=fsync, **self.storage_options)
        self.directory = self.store.url
        # With a key (or $DAGGER_SIGNING_KEY), pickles are signed and only signed ones are unpickled.
        self.records = Records(self.store, blob_threshold, verify_blobs, signing_key=signing_key)
        self.records.keep_written = True  # it writes the index from them (re-tagged states)
        self.runtime = Runtime(
            location=self.store.url,
            storage_options=self.storage_options,
            blob_threshold=blob_threshold,
            verify_blobs=verify_blobs,
            fsync=fsync,
            seed=seed,
            locking=locking,
            store=directory if isinstance(directory, Store) else None,
            signing_key=None if signing_key is None else self.records.signing_key,
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
        #: Distributions whose versions the environment record lists (besides dagger, dask, numpy, torch).
        self.packages = tuple(packages)
        #: What run() does with cached states whose recipe code changed: "warn", "rerun" or "error".
        self.on_code_change = sourcehash.check_policy(on_code_change)
        self._sources = sourcehash.SourceHashes()
        self._recipe_info: dict[type, tuple[str, str, Any, str | None]] = {}
        self._env_pending: environment.PendingCapture | None = None
        self._env_metas: list[dict[str, Any]] = []

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
        if self._root is not None and self._root.init_kwargs is not None:  # (not one taken from the store)
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
            sha = hashing.root_hash(path, props, cls.VERSION)
        except UnhashableError as exc:
            raise hashing.name_path(exc, cls.__name__) from None
        check_storable(props, cls.__name__)
        if self._root is not None and self._root._sha == sha:
            # The root was taken from the store (state.to_promise()): now it is defined in full.
            self._root.init_kwargs = kwargs
            self._root.properties = props
            return self._root
        if self.info is not None and self.info.get("root") not in (None, sha):
            stored_version = self.info.get("state_version", 0)
            if stored_version != jsonable(cls.VERSION) and self.info.get("root_properties") == jsonable(props):
                raise DefinitionError(
                    f"{self.directory} holds the tree of {cls.__name__}.VERSION = {stored_version!r}; VERSION "
                    f"{cls.VERSION!r} gives the root a new hash, and a folder holds one tree. Use a new folder "
                    f"for the new tree, or set VERSION back to {stored_version!r} to extend the stored one."
                )
            raise DefinitionError(
                f"{self.directory} already holds a tree whose root has other properties "
                f"({self.info.get('root_properties')}); a folder holds one tree. Use a new folder for root "
                f"properties {jsonable(props)}."
            )
        if self.info is None:
            self.info = {
                "format": STORE_FORMAT,
                "state_class": path,
                "root": sha,
                "root_properties": jsonable(props),
                "state_version": jsonable(cls.VERSION),
                "blob_hash": self.records.blob_hash,
                "created": time.time(),
                "environment": environment.capture(self.packages),
            }
            self.info = self._claim_folder(self.info, props)
        promise = ExperimentStatePromise(self, sha, None, None, None, None, list(self._tags), kwargs, props)
        self._root = promise
        self._promises[sha] = promise
        return promise

    def _claim_folder(self, info: dict[str, Any], props: dict[str, Any]) -> dict[str, Any]:
        """Create ``experiment.json`` unless another writer did first; refuse a folder claimed for another tree."""
        stored = self.records.create_experiment(info)
        if stored is not info:
            assert self.state_class is not None
            _check_state_class(stored, self.state_class, self.directory)
            if stored.get("root") != info["root"]:
                raise DefinitionError(
                    f"{self.directory} was claimed meanwhile for a tree whose root has other properties "
                    f"({stored.get('root_properties')}); a folder holds one tree. Use a new folder for root "
                    f"properties {jsonable(props)}."
                )
        return stored

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

    def _promise_of(self, sha: str) -> ExperimentStatePromise:
        """A promise for a stored state (and its stored ancestors), to grow the tree from it."""
        existing = self._promises.get(sha)
        if existing is not None:
            return existing
        graph = self.graph
        if graph is None:
            raise DefinitionError(f"{self.directory} holds no experiment yet: nothing to grow from {sha[:12]}")
        meta = graph.node(sha)._meta()
        parent_sha = meta.get("parent")
        parent = None if parent_sha is None else self._promise_of(parent_sha)
        recipe = meta.get("recipe") or {}
        if parent is None:
            if self._root is not None:
                raise DefinitionError(
                    f"state {sha[:12]} is a root, but this experiment already defines root {self._root._sha[:12]}"
                )
            props = dict(meta.get("properties") or {})
            promise = ExperimentStatePromise(self, sha, None, None, None, None, list(meta.get("tags") or []), None, props)
            self._root = promise
        else:
            promise = ExperimentStatePromise(
                self, sha, parent, None, dict(recipe.get("properties") or {}), recipe.get("sha"),
                list(meta.get("tags") or []),
            )  # fmt: skip
        self._promises[sha] = promise
        return promise

    @property
    def root(self) -> Any:
        """The root: the stored root state (slim) once the store holds it, else the root promise
        defined with :meth:`spawn_new_tree`, else None."""
        graph = self.graph
        if graph is not None and graph.root is not None:
            return graph.root
        return self._root

    @property
    def leaves(self) -> dict[str, ExperimentStatePromise]:
        """The states defined in this session that no other defined state grows from, by hash.

        Empty before anything is defined (the reference implementation's ``exp.leaves``);
        for the stored tree's leaves, see ``exp.graph.leaves()``.
        """
        parents = {p.parent._sha for p in self._promises.values() if p.parent is not None}
        return {sha: p for sha, p in self._promises.items() if sha not in parents}

    @property
    def experiment_arguments(self) -> dict[str, Any] | None:
        """What :meth:`spawn_new_tree` was given in this session (PROPERTIES and the other keyword
        arguments for ``initialize_state``); for a restored experiment, the root's PROPERTIES as
        stored (JSON form); None before any root."""
        if self._root is not None:
            return dict(self._root.init_kwargs if self._root.init_kwargs is not None else self._root.properties)
        if self.info is not None:
            return dict(self.info.get("root_properties") or {})
        return None

    def _add_function(self, promise: ExperimentStatePromise, fn: Function) -> None:
        for other in promise.functions:
            if other.name != fn.name:
                continue
            if other is fn or other.fn is fn.fn:
                return
            raise DefinitionError(  # one results key: one result would be lost
                f"two different Functions named {fn.name!r} are applied to state {promise._sha[:10]}: their "
                "results are stored under their name, so one would overwrite the other. Name them apart: "
                'dg.Function(fn, name="...")'
            )
        promise.functions.append(fn)

    # ---- running ---------------------------------------------------------------------

    def run(
        self,
        scheduler: Any = "single-threaded",
        *,
        num_workers: int | None = None,
        progress: Any = None,
        targets: Iterable[ExperimentStatePromise] | None = None,
        raise_on_failure: bool = True,
    ) -> RunReport:
        """Compute every defined state not yet in the store, and run every Function.

        ``scheduler`` is ``"single-threaded"`` (default), ``"threads"``,
        ``"processes"``, a ``dask.distributed.Client`` or a scheduler address.
        Every state is one Dask task keyed by its hash; the default runs them
        with Dask's synchronous scheduler, in this thread.
        Returns a :class:`RunReport`. If any state fails, every other branch
        still finishes and is saved, then :class:`RunFailedError` lists the
        failures; running again computes only what is missing.

        ``progress``: None (default) shows a one-line display only when stderr
        is a terminal; True or False forces it on or off; a text stream draws
        on that stream. Ctrl-C stops scheduling new states; finished states
        stay saved (nothing is half-written) and a new run resumes.
        """
        from dagger.progress import Progress

        if scheduler == "processes" and self.store.url.startswith("memory://"):
            raise DefinitionError(
                f"{self.directory} is a memory:// store: it lives in this process only, so the worker processes "
                "of scheduler='processes' could not see what the others store. Use scheduler='threads' (or "
                "'single-threaded'), or a folder on disk or an object store (s3://...)."
            )
        start = time.time()
        forget_recent(self.runtime)
        keep_written(self.runtime)
        if self._root is not None and self.info is not None:  # still our folder? (a writer that lost a race)
            self._claim_folder(self.info, self._root.properties)
        # Decoded only where needed: a cached state's existence, tags and recipe source come from
        # the index's columns.
        stored = StoredMetas(self.records.load_index(on_corrupt=self._warn_corrupt))
        selected = self._select(targets)
        if not self._promises:
            self._warn_nothing_defined(stored)
        forced = self._prepare_run(selected, stored)
        try:
            graph, tag_updates = self._build_graph(selected, stored, forced)
            self._record_environment()
        except BaseException:
            if self._env_pending is not None:
                self._env_pending.cancel()
                self._env_pending = None
            raise
        for meta in tag_updates:
            self.records.write_meta(meta, old_rev=meta.get("rev"))
        records: list[dict[str, Any]] = []
        if graph:
            get, client = resolve_scheduler(scheduler, num_workers)
            keys = list(graph)
            n_cached = sum(1 for p in selected if p._sha not in graph)
            try:
                with Progress.for_run(progress, len(keys) + n_cached, scheduler) as bar:
                    bar.counts["cached"] = n_cached
                    records = bar.collect(get, graph, keys)
                flush_records(self.runtime)  # records queued in an object-store batch are committed now
            except KeyboardInterrupt:
                flush_records(self.runtime)  # the states computed so far are whole: keep them
                self._interrupted()
                raise
            finally:
                if client is not None:
                    client.close()
        cached_only = [p for p in selected if p._sha not in graph]
        report = RunReport.build(records, cached_only, stored, start, time.time())
        for rec in records:
            if "meta" in rec:
                stored[rec["sha"]] = rec.pop("meta")
        # This process's segments are sealed and closed first (a process that runs many experiments keeps no
        # file open for each), so that the index below keeps the segments' fingerprint as they stay.
        close_records(self.runtime)
        self.records.close()
        if graph or tag_updates:
            # (the Records this process's tasks wrote with knows their records: the index's check reads none back)
            self.records.write_index(stored, take_written(self.runtime), peer=process_records(self.runtime))
        self._graph = None
        self.last_report = report
        if report.failures and raise_on_failure:
            raise RunFailedError(report.failure_message(), report.failures, report)
        return report

    def _build_graph(
        self, selected: list[ExperimentStatePromise], stored: StoredMetas, forced: dict[str, str]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The Dask graph of the states to compute or evaluate, and the cached states whose tags changed."""
        graph: dict[str, Any] = {}
        plan: dict[str, str] = {}
        tag_updates: list[dict[str, Any]] = []
        with long_lived_build():  # thousands of specs and tasks that all stay alive until the run ends
            for promise in selected:
                sha = promise._sha
                known = sha in stored
                if not known or sha in forced:
                    plan[sha] = "compute"
                elif promise.functions:
                    plan[sha] = "evaluate"
                else:
                    if promise.tags and set(promise.tags) != set(stored.tags(sha)):
                        updated = stored[sha]
                        tag_updates.append(updated)
                        updated["tags"] = list(promise.tags)
                    continue
                if plan[sha] == "compute" and promise.parent is not None and promise.recipe is None:
                    raise DefinitionError(
                        f"state {sha[:12]} was taken from the store (state.to_promise()) but must be computed again "
                        "and its recipe object is not known here: define it with its recipe instead"
                    )
                meta: dict[str, Any] | None = stored.get(sha) if known else None
                spec = self._spec(promise, compute=plan[sha] == "compute", stored_meta=meta)
                if spec.compute:
                    self._explain(spec, meta, forced.get(sha))
                parent = promise.parent._sha if promise.parent is not None else None
                depends = parent is not None and plan.get(parent) == "compute"
                graph[sha] = state_task(self.runtime, spec, parent if depends else None)
        return graph, tag_updates

    def _interrupted(self) -> None:
        """Ctrl-C during run(): refresh the index from the commit records and say how to resume.

        Every write is atomic and a state's commit record is written last, so
        an interrupted state is simply absent; the ones finished are kept.
        """
        import sys

        try:
            done = len(self.records.load_index(on_corrupt=self._warn_corrupt))  # counted, not decoded
        except Exception:  # noqa: BLE001 - the interrupt is what must surface
            done = -1
        self._graph = None
        saved = (
            f"{done} state(s) are saved in {self.directory}" if done >= 0 else f"saved states are in {self.directory}"
        )
        sys.stderr.write(
            f"\ndagger: run interrupted; {saved}, nothing half-written. "
            "Run exp.run() again to resume: finished states are served from the store.\n"
        )
        sys.stderr.flush()

    def _warn_nothing_defined(self, stored: StoredMetas) -> None:
        """Say why a run with no definitions does nothing, and how to grow a stored tree."""
        n = len(stored.index)
        held = f"its {n} stored states are not re-run" if n else "nothing runs"
        warnings.warn(
            f"Experiment.run() on {self.directory}: no states are defined in this session, so {held}. "
            "An experiment runs what its script defines: to extend a stored tree, define the whole tree "
            "again (exp.spawn_new_tree(...) with the same properties, then the recipes, old and new) and "
            "call run(); the stored states are cache hits and only the new ones are computed.",
            DaggerWarning,
            stacklevel=3,
        )

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
        retagged = False
        if compute:
            meta = self._base_meta(promise)
        else:
            meta = dict(stored_meta or {})
            tags = list(promise.tags) if promise.tags else meta.get("tags", [])
            retagged = tags != meta.get("tags", [])
            meta["tags"] = tags
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
            retagged=retagged,
        )

    def _recipe_class_info(self, cls: type[Recipe]) -> tuple[str, str, Any, str | None]:
        """A recipe class's name, import path, VERSION and source hash (found once per class and run)."""
        info = self._recipe_info.get(cls)
        if info is None:
            info = self._recipe_info[cls] = (
                cls.__name__,
                hashing.object_path(cls),
                jsonable(cls.VERSION),
                self._sources(cls),
            )
        return info

    def _base_meta(self, promise: ExperimentStatePromise) -> dict[str, Any]:
        recipe = promise.recipe
        meta: dict[str, Any] = {
            "format": hashing.FORMAT_VERSION,
            "sha": promise._sha,
            "parent": promise.parent._sha if promise.parent is not None else None,
            "depth": promise.depth,
            "state_class": self._state_class_path,
            "tags": list(promise.tags),
            "properties": jsonable(promise.properties),
            "created": time.time(),
        }
        if recipe is not None:
            name, path, version, source = self._recipe_class_info(type(recipe))
            meta["recipe"] = {
                "name": name,
                "class": path,
                "properties": jsonable(promise.recipe_properties or {}),
                "version": version,
                "sha": promise.recipe_sha,
            }
            if source is not None:
                meta["recipe"]["source"] = source
        if self._env_pending is None:  # the first state this run computes: ask git, in the background
            self._env_pending = environment.start_capture(self.packages)
        self._env_metas.append(meta)  # given the environment's differences once they are known
        return meta

    # ---- reproducibility (see dagger.sourcehash, dagger.environment, dagger.reproduce) ----

    def _prepare_run(self, selected: list[ExperimentStatePromise], stored: StoredMetas) -> dict[str, str]:
        """Check recipe code against the cache (per the policy); return ``{sha: reason}`` to recompute."""
        self._sources = sourcehash.SourceHashes()
        self._recipe_info = {}
        self._state_class_path = hashing.object_path(self.state_class)
        self._env_pending = None
        self._env_metas = []
        self._failed: set[str] | None = None
        changed = sourcehash.find_changes(selected, stored.source, self._sources)
        sourcehash.check(self.on_code_change, changed)
        forced: dict[str, str] = {}
        if self.on_code_change == "rerun":
            for promise in selected:  # parents always come before their children
                if promise._sha not in stored:
                    continue
                if promise._sha in changed:
                    forced[promise._sha] = CODE_CHANGED
                elif promise.parent is not None and promise.parent._sha in forced:
                    forced[promise._sha] = FORCED_BY_POLICY
        return forced

    def _explain(self, spec: TaskSpec, stored_meta: dict[str, Any] | None, forced: str | None) -> None:
        """Say why ``spec``'s state is computed, on the task (for the report) and in its metadata."""
        if forced is not None and stored_meta is not None:
            spec.reason = forced
            spec.replace_rev = stored_meta.get("rev")
            old = (stored_meta.get("recipe") or {}).get("source") or "?"
            new = (spec.meta.get("recipe") or {}).get("source") or "?"
            detail = (
                f"source {old[:12]} -> {new[:12]}"
                if forced == CODE_CHANGED
                else f"on_code_change='rerun' recomputes the subtree of a changed recipe (parent {str(spec.parent)[:12]})"
            )
        else:
            if self._failed is None:
                self._failed = {k.rsplit("/", 1)[-1].split(".")[0] for k in self.store.list("failed")}
            spec.reason = FAILED_BEFORE if spec.sha in self._failed else NEVER_STORED
            detail = ""
            if spec.reason == FAILED_BEFORE:
                try:
                    detail = str(json.loads(self.store.get(failure_key(spec.sha))).get("error") or "")
                except (OSError, ValueError):
                    detail = ""
        spec.meta["explain"] = f"{spec.reason}: {detail}" if detail else spec.reason

    def _record_environment(self) -> None:
        """Give the states this run computes how its environment differs from the experiment's.

        Captured once per run, started with the first state to compute (see _base_meta) so
        that git runs while the other tasks are built.
        """
        pending, metas = self._env_pending, self._env_metas
        self._env_pending, self._env_metas = None, []
        if pending is None:
            return
        base = (self.info or {}).get("environment")
        diff = environment.differences(base, pending.result())
        if diff:
            for meta in metas:
                meta["environment"] = diff

    def reproduce(self, sha_or_prefix: str, rtol: float = 0.0, atol: float = 0.0) -> Any:
        """Recompute a stored state from its parent in memory and compare it with the stored one.

        Returns a :class:`~dagger.reproduce.ReproduceReport` (``.ok``, ``.differences``, printable).
        The store is never written to. ``rtol``/``atol`` allow numeric differences, as in
        ``numpy.allclose``; by default every buffer must be identical.
        """
        from dagger.reproduce import reproduce

        return reproduce(self, sha_or_prefix, rtol=rtol, atol=atol)

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
        """The stored tree as a :class:`~dagger.graph.StaticExperimentTree` (slim states).

        None while the store holds no experiment at all (before the first
        :meth:`spawn_new_tree`), as in the reference implementation.
        """
        if self._graph is None:
            if self.info is None:
                self.info = self.records.read_experiment()
                if self.info is None:
                    return None
            from dagger.graph import StaticExperimentTree

            index = self.records.load_index(on_corrupt=self._warn_corrupt)
            self._graph = StaticExperimentTree(index, self.records, self.state_class, self.info)
            self._graph.experiment = self
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

    # ---- maintenance -------------------------------------------------------------------

    def gc(self, unreachable: bool = False, dry_run: bool = False) -> Any:
        """Remove unreferenced blobs, temp files, stale locks, old metadata revisions (and, with
        ``unreachable=True``, states not reachable from the root). Returns a printable GcReport."""
        from dagger.store.maintenance import gc

        report = gc(self.records, unreachable=unreachable, dry_run=dry_run)
        self._graph = None
        return report

    def verify(self, repair: bool = False) -> Any:
        """Re-hash every blob and check every record; returns a VerifyReport (``.ok``, printable).

        ``repair=True`` also removes what is damaged (blobs that fail their hash, unreadable
        records, the records and pickle of each state whose pickle or blobs are damaged), so
        that the next :meth:`run` recomputes those states.
        """
        from dagger.store.maintenance import verify

        report = verify(self.records, repair=repair)
        if report.repaired:
            self._graph = None
        return report

    def __repr__(self) -> str:
        return f"Experiment({self.directory!r}, states defined={len(self._promises)})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # An Experiment travels as a reference to its folder, reopened where it is unpickled: a
        # recipe that keeps ``experiment_object`` (the reference tutorial's pattern) then runs
        # under "processes" and on a cluster. Promises defined here do not travel with it.
        return (_reopen, (self.directory, self.state_class, self.storage_options))


def _reopen(directory: str, state_class: type[ExperimentState] | None, storage_options: dict[str, Any]) -> Experiment:
    """An unpickled Experiment: the same folder, opened again (see ``Experiment.__reduce__``)."""
    return Experiment(directory, state_class=state_class, storage_options=storage_options or None)


def _check_state_class(info: dict[str, Any], state_class: type, directory: str) -> None:
    recorded = str(info.get("state_class", ""))
    given = hashing.object_path(state_class)
    if recorded == given:
        return
    rec_mod, _, rec_name = recorded.rpartition(".")
    if (
        "__main__" in (state_class.__module__, rec_mod.split(".")[0])
        and rec_name == state_class.__qualname__.rpartition(".")[2]
    ):
        return  # the same class, defined in a script's __main__ on one side
    raise StateClassMismatchError(
        f"{directory} was created with state class {recorded!r}, not {given!r}. Pass the original class "
        "(or state_class=None to browse slim states without it)."
    )
