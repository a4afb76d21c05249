"""Execution on Dask (DESIGN §5): schedulers, failure isolation, resuming."""

from __future__ import annotations

import os

import numpy as np
import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

import dagger as dg
from dagger.execution import jsonable, resolve_scheduler

SCHEDULERS = ["single-threaded", "threads", "processes"]

# Which learning rates make Flaky fail; tests change it between runs ("fixing the cause").
# It travels in the environment, so workers started as fresh interpreters (the processes
# scheduler after torch ran on several threads) see it too, not only forked ones.
BROKEN_ENV = "DAGGER_TEST_BROKEN_LRS"


class BrokenLrs:
    """The set of failing learning rates, kept in os.environ for every kind of worker."""

    def _get(self) -> set[float]:
        return {float(x) for x in os.environ.get(BROKEN_ENV, "").split(",") if x}

    def _set(self, lrs: set[float]) -> None:
        os.environ[BROKEN_ENV] = ",".join(map(repr, sorted(lrs)))

    def __contains__(self, lr: float) -> bool:
        return lr in self._get()

    def add(self, lr: float) -> None:
        self._set(self._get() | {lr})

    def update(self, lrs) -> None:
        self._set(self._get() | set(lrs))

    def clear(self) -> None:
        os.environ.pop(BROKEN_ENV, None)


BROKEN_LRS = BrokenLrs()


class Flaky(dg.Recipe):
    PROPERTIES = ["lr"]

    def run(self, state):
        if self.lr in BROKEN_LRS:
            raise FloatingPointError(f"diverged at lr={self.lr}")
        state.model["w"] += self.lr
        return state


@pytest.fixture
def broken():
    BROKEN_LRS.clear()
    yield BROKEN_LRS
    BROKEN_LRS.clear()


def build(directory):
    """A small Listing-2-shaped tree: 1 root, 3 trained, 3 pruned, each evaluated."""
    exp = dg.Experiment(directory, state_class=State)
    root = exp.spawn_new_tree(dataset_name="digits", model_name="logreg")
    leaves = []
    for lr in (0.01, 0.1, 1.0):
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=5, lr=lr)(root)
            eval_fn(s)
            with exp.tag("pruned"):
                p = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(s)
                eval_fn(p)
                leaves.append(p)
    return exp, leaves


def test_schedulers_give_identical_hashes_and_results(tmp_path):
    outcomes = []
    for scheduler in SCHEDULERS:
        exp, _ = build(str(tmp_path / scheduler))
        report = exp.run(scheduler=scheduler)
        assert len(report.computed) == 7 and report.failures == []
        graph = dg.Experiment.restore(str(tmp_path / scheduler)).graph
        outcomes.append(
            {
                n.sha(): (n.tags, n.results, n.parent.sha() if n.parent else None, n.restore().model["w"].tolist())
                for n in graph.nodes
            }
        )
    assert len(outcomes[0]) == 7
    assert outcomes[0] == outcomes[1] == outcomes[2]


@pytest.mark.parametrize("scheduler", ["single-threaded", "processes"])
def test_failing_recipe_fails_only_its_subtree(exp_dir, broken, scheduler):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    ok, bad = {}, {}
    for lr in (0.1, 0.2, 0.3):
        with exp.tag(f"lr:{lr}"):
            s = Flaky(lr=lr)(root)
            with exp.tag("pruned"):
                child = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(s)
                grandchild = Flaky(lr=lr)(child)  # grandchild would fail too, but never runs
        (bad if lr != 0.2 else ok)[lr] = (s, child, grandchild)
    broken.update({0.1, 0.3})
    with pytest.raises(dg.RunFailedError) as info:
        exp.run(scheduler=scheduler)
    err = info.value
    failed = {f.sha: f for f in err.failures}
    assert set(failed) == {bad[0.1][0].sha(), bad[0.3][0].sha()}
    for lr in (0.1, 0.3):
        f = failed[bad[lr][0].sha()]
        assert f.recipe == "Flaky" and f.tags == [f"lr:{lr}"] and f.status == "failed"
        assert f.error == f"FloatingPointError: diverged at lr={lr}"
        assert "FloatingPointError" in f.traceback
        assert f"lr:{lr}" in str(err) and bad[lr][0].sha()[:12] in str(err)
    assert "2 descendant state(s) were not run" not in str(err)
    assert "4 descendant state(s) were not run" in str(err)
    skipped = {s.sha: s for s in err.report.skipped}
    assert set(skipped) == {p.sha() for lr in (0.1, 0.3) for p in bad[lr][1:]}
    assert skipped[bad[0.1][2].sha()].cause == bad[0.1][0].sha()
    # every other branch finished and was saved
    graph = dg.Experiment.restore(exp_dir).graph
    assert {n.sha() for n in graph.nodes} == {root.sha(), *(p.sha() for p in ok[0.2])}
    assert graph.node(ok[0.2][2].sha()).restore().model["w"].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.4, 0.4, 0.4])

    # fix the cause: the second run computes only what was missing
    broken.clear()
    report = exp.run(scheduler=scheduler)
    assert {r.sha for r in report.computed} == {p.sha() for lr in (0.1, 0.3) for p in bad[lr]}
    assert {r.sha for r in report.cached} == {root.sha(), *(p.sha() for p in ok[0.2])}
    assert len(dg.Experiment.restore(exp_dir).graph) == 10


def test_run_without_raising_returns_the_failures(exp_dir, broken):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    Flaky(lr=0.5)(root)
    broken.add(0.5)
    report = exp.run(raise_on_failure=False)
    assert [f.recipe for f in report.failures] == ["Flaky"]
    assert exp.last_report is report
    assert "1 failed" in report.summary()
    text = str(report)
    assert "Flaky" in text and "failed" in text and "computed" in text
    rows = report.to_records()
    assert {r["status"] for r in rows} == {"computed", "failed"}


def test_targets_compute_only_what_they_need(exp_dir):
    exp, leaves = build(exp_dir)
    state = leaves[1].get()
    assert isinstance(state, State) and state.is_loaded
    assert state.tags == ["lr:0.1", "pruned"]
    assert len(dg.Experiment.restore(exp_dir).graph) == 3  # root, train, prune of one branch
    report = exp.run()
    assert len(report.computed) == 4 and len(report.cached) == 3


def test_tags_added_later_are_recorded_without_recomputing(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    with exp.tag("best"):
        s = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    report = exp.run()
    assert report.computed == []
    assert dg.Experiment.restore(exp_dir).graph.node(s.sha()).tags == ["best"]


def test_distributed_client(exp_dir):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=":0") as client:
        exp, _ = build(exp_dir)
        report = exp.run(scheduler=client)
    assert len(report.computed) == 7
    assert all(r.worker and r.worker.startswith(("inproc://", "tcp://")) for r in report.computed)


def test_progress_line(exp_dir, capsys):
    exp, _ = build(exp_dir)
    exp.run(progress=True)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "7/7" in last and "7 computed" in last and "0 failed" in last


def test_unknown_scheduler():
    with pytest.raises(dg.DefinitionError, match="unknown scheduler 'gpu-magic'"):
        resolve_scheduler("gpu-magic")


def test_jsonable_results():
    torch = pytest.importorskip("torch")
    value = {
        1: np.float32(0.5),
        "arr": np.arange(3),
        "t": torch.tensor(2.0),
        "tt": torch.ones(2),
        "set": {1},
        "obj": object,
        "nested": (None, True, "x"),
    }
    out = jsonable(value)
    assert out["1"] == 0.5 and out["arr"] == [0, 1, 2] and out["t"] == 2.0 and out["tt"] == [1.0, 1.0]
    assert out["set"] == [1] and out["obj"] == repr(object) and out["nested"] == [None, True, "x"]
    deep: list = [0]
    for _ in range(30):
        deep = [deep]
    flat = jsonable(deep)
    for _ in range(21):
        flat = flat[0]
    assert isinstance(flat, str)  # cut off with a repr, never a RecursionError
    assert jsonable(np.array([[1, 2]])) == [[1, 2]] and jsonable(np.float64(2.5)) == 2.5


class _Cycle:
    """Garbage only the cyclic collector frees (a model caught in a reference cycle, say)."""

    def __init__(self):
        self.me = self


# What the recipe below saw: filled in the recipe's process (single-threaded: this one).
GC_SEEN: dict[str, bool] = {}


class CollectOldGarbage(dg.Recipe):
    """A recipe that frees memory the usual way: gc.collect()."""

    PROPERTIES = ["k"]

    def run(self, state):
        import gc

        gc.collect()
        GC_SEEN["old_cycle_freed"] = OLD_CYCLE[0]() is None
        return state


OLD_CYCLE: list = []


def test_garbage_from_before_the_run_stays_collectable_during_it(exp_dir):
    # Users drop a model (often caught in a cycle: a hook, a traceback) and then run; a recipe's
    # gc.collect() must free it, e.g. to give GPU memory back. gc.freeze() at the start of a run
    # would pin such garbage until the run ends.
    import gc
    import weakref

    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(dataset_name="digits", model_name="logreg")
    CollectOldGarbage(k=1)(root)
    cycle = _Cycle()
    gc.collect()  # the cycle is now in the oldest generation, as a long-lived model would be
    OLD_CYCLE[:] = [weakref.ref(cycle)]
    del cycle
    GC_SEEN.clear()
    exp.run()
    assert GC_SEEN == {"old_cycle_freed": True}


def test_what_a_run_builds_goes_to_the_oldest_generation_unscanned():
    # The graph of a large run would otherwise be scanned in each young generation and then
    # trigger a full collection; nothing is pinned (no freeze is left behind).
    import gc

    from dagger.store.records import long_lived_build

    with long_lived_build():
        built = [[i] for i in range(2000)]
        assert not gc.isenabled()
    young = {id(o) for o in gc.get_objects(generation=0)} | {id(o) for o in gc.get_objects(generation=1)}
    assert not any(id(x) in young for x in built)
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_young_garbage_from_before_a_run_is_collected_as_it_starts():
    import gc
    import weakref

    from dagger.store.records import long_lived_build

    gc.collect(0)  # the young generation starts empty: no automatic collection promotes the cycle first
    cycle = _Cycle()
    ref = weakref.ref(cycle)
    del cycle
    with long_lived_build():
        assert ref() is None  # not moved to the oldest generation, out of young collections' reach
    assert gc.isenabled()


def test_a_process_that_freezes_objects_itself_keeps_them_frozen():
    import gc

    from dagger.store.records import long_lived_build

    marker = ["frozen by the process"]
    gc.freeze()
    try:
        with long_lived_build():
            [[i] for i in range(100)]
        # Still frozen: an unfreeze would have handed it (and everything frozen) back to the oldest
        # generation. (The frozen count itself may drop meanwhile: frozen objects can still die.)
        assert gc.get_freeze_count() > 0
        assert not any(o is marker for o in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()
    assert any(o is marker for o in gc.get_objects(generation=2))  # the check above can fail


def test_state_tasks_name_their_spec_and_parent():
    from dagger.execution import Runtime, TaskSpec, run_task, state_task, task_spec

    runtime = Runtime("memory://x")
    spec = TaskSpec(sha="b" * 64, parent="a" * 64, compute=True, state_class=State)
    task = state_task(runtime, spec, "a" * 64)
    assert task_spec(task) == (spec, ["a" * 64])
    assert task_spec(state_task(runtime, spec, None)) == (spec, [])
    # Graphs of plain tuples (an older dask) read the same.
    assert task_spec((run_task, runtime, spec, "a" * 64)) == (spec, ["a" * 64])
    assert task_spec((run_task, runtime, spec)) == (spec, [])


STEPS_RUN: list[str] = []


class Step(dg.Recipe):
    PROPERTIES = ["branch", "step"]

    def run(self, state):
        STEPS_RUN.append(self.branch)
        state.model["w"] += 1.0
        return state


@pytest.mark.parametrize("progress", [False, True])
def test_single_threaded_runs_finish_one_branch_before_the_next(tmp_path, progress):
    # Dask orders a single-threaded run depth-first: an interrupted or failing sweep leaves whole
    # branches done, and the order is the same whether or not a progress line is drawn.
    import io

    exp = dg.Experiment(str(tmp_path / "sweep"), state_class=State)
    root = exp.spawn_new_tree(dataset_name="digits", model_name="logreg")
    for branch in "abc":
        state = root
        for step in range(3):
            state = Step(branch=branch, step=step)(state)
    STEPS_RUN.clear()
    exp.run(progress=io.StringIO() if progress else False)
    assert len(STEPS_RUN) == 9
    runs = [STEPS_RUN[i] for i in range(9) if i == 0 or STEPS_RUN[i] != STEPS_RUN[i - 1]]
    assert sorted(runs) == ["a", "b", "c"], STEPS_RUN  # each branch ran in one stretch


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork (POSIX)")
def test_a_forked_child_names_itself_and_its_temporary_files_by_its_own_pid(tmp_path):
    from dagger.execution import worker_name
    from dagger.store import LocalStore

    store = LocalStore(str(tmp_path))
    parent_tmp = store._tmp_path()
    assert f"{os.getpid():x}-" in parent_tmp and worker_name().endswith(f":{os.getpid()}")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        try:
            os.write(write, f"{worker_name()}|{store._tmp_path()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        name, tmp = f.read().split("|")
    os.waitpid(pid, 0)
    assert name.endswith(f":{pid}")
    assert f"{pid:x}-" in tmp and tmp != parent_tmp
