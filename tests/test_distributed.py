"""Running experiments on a real Dask distributed cluster (2 worker processes).

Workers import this module by name (``tests/`` is on their ``sys.path``), so
the state and recipe classes below travel by reference, as a user's package would.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import dagger as dg
from dagger.errors import RunFailedError

distributed = pytest.importorskip("distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_SIZE = 250_000  # float64: 2 MB per state, far above what a status record may weigh


class BigState(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["model"]

    def initialize_state(self, **kwargs):
        self.model = np.arange(MODEL_SIZE, dtype=np.float64)
        self.history = []


class Shift(dg.Recipe):
    PROPERTIES = ["by"]

    def run(self, state):
        state.model += self.by
        state.history.append(("shift", self.by, os.getpid()))
        return state


class Scale(dg.Recipe):
    PROPERTIES = ["factor"]

    def run(self, state):
        state.model *= self.factor
        state.history.append(("scale", self.factor, os.getpid()))
        return state


class Broken(dg.Recipe):
    PROPERTIES = ["why"]

    def run(self, state):
        raise ValueError(f"broken on purpose: {self.why}")


class DieOnce(dg.Recipe):
    """Kills its own worker process the first time it runs (a marker file remembers)."""

    PROPERTIES = ["marker", "by"]

    def run(self, state):
        if not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        state.model += self.by
        return state


class DieWhileSaving:
    """An attribute whose pickling kills the worker on first attempt: death in the middle of a save."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        if not os.path.exists(self.marker):
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            os._exit(3)
        return (DieWhileSaving, (self.marker,))


class SaveKiller(dg.Recipe):
    PROPERTIES = ["marker"]

    def run(self, state):
        state.model -= 1.0  # a new model: its blob is written before the killer is pickled
        state.trap = DieWhileSaving(self.marker)
        return state


class AlwaysDie(dg.Recipe):
    PROPERTIES = ["code"]

    def run(self, state):
        os._exit(self.code)


@dg.Function
def checksum(state):
    return {"sum": float(state.model.sum()), "first": float(state.model[0])}


class ResultSizes(distributed.diagnostics.plugin.SchedulerPlugin):
    """Records, on the scheduler, the size of every task result it is told about."""

    name = "dagger-result-sizes"

    def __init__(self):
        self.sizes = {}

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "memory":
            ts = self.scheduler.tasks.get(key)
            if ts is not None:
                self.sizes[key] = ts.nbytes


def _sizes(dask_scheduler):
    return dict(dask_scheduler.plugins[ResultSizes.name].sizes)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
    )
    c = distributed.Client(cluster)
    c.run(_add_path, HERE)  # spawned workers also inherit sys.path, this makes it certain
    c.register_plugin(ResultSizes())
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _set_allowed_failures(n, dask_scheduler):
    old = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = n
    return old


def _add_path(path):
    if path not in sys.path:
        sys.path.insert(0, path)


def fan_out(exp, branches=((1.0, 2.0), (2.0, 3.0), (5.0, 0.5))):
    """A root, one branch per (shift, factor): shift then scale, with a checksum on each leaf."""
    root = exp.spawn_new_tree(name="fan")
    leaves = {}
    for by, factor in branches:
        with exp.tag(f"by:{by}"):
            s = Shift(by=by)(root)
            s = Scale(factor=factor)(s)
            checksum(s)
            leaves[(by, factor)] = s
    return root, leaves


def expected(by, factor):
    return (np.arange(MODEL_SIZE, dtype=np.float64) + by) * factor


def check_store(location, leaves, storage_options=None):
    """Restore every stored state and compare the leaves with their exact expected models."""
    exp = dg.Experiment.restore(location, state_class=BigState, storage_options=storage_options)
    nodes = list(exp.graph.nodes)
    for node in nodes:
        node.restore()  # every committed state loads: nothing half-written
        node.deflate()
    for (by, factor), promise in leaves.items():
        state = exp.graph.node(promise.sha()).restore()
        np.testing.assert_array_equal(state.model, expected(by, factor))
        assert [h[:2] for h in state.history] == [("shift", by), ("scale", factor)]
        assert state.results["checksum"]["sum"] == pytest.approx(float(expected(by, factor).sum()))
        state.deflate()
    return exp


def worker_addresses(client):
    return set(client.scheduler_info()["workers"])


def test_fan_out_on_client_shared_directory(client, exp_dir):
    exp = dg.Experiment(exp_dir, state_class=BigState)
    root, leaves = fan_out(exp)
    stream = io.StringIO()
    report = exp.run(scheduler=client, progress=stream)

    assert len(report.computed) == 7 and not report.failures
    assert {s.worker for s in report.computed} <= worker_addresses(client)
    # the tasks ran in the worker processes, not in this one
    state = dg.Experiment.restore(exp_dir, state_class=BigState).graph.node(next(iter(leaves.values())).sha()).restore()
    assert all(pid != os.getpid() for _, _, pid in state.history)
    check_store(exp_dir, leaves)

    # nothing large went through the scheduler: every result is a small status record
    sizes = client.run_on_scheduler(_sizes)
    ours = {s.sha: sizes[s.sha] for s in report.states if s.sha in sizes}
    assert len(ours) == 7
    assert max(ours.values()) < 64 * 1024 < MODEL_SIZE * 8

    # progress on a distributed run: the final line has every count
    last = stream.getvalue().splitlines()[-1]
    assert "7/7 done" in last and "7 computed" in last and "0 running" in last and "0 failed" in last

    # a second run is served from the store; only the Functions run again, on the workers
    again = exp.run(scheduler=client, progress=False)
    assert len(again.computed) == 0 and len(again.cached) == 7
    assert {s.worker for s in again.states if s.worker} <= worker_addresses(client)


def test_fan_out_on_scheduler_address(client, exp_dir):
    address = client.scheduler.address
    assert address.startswith("tcp://")
    exp = dg.Experiment(exp_dir, state_class=BigState)
    _, leaves = fan_out(exp, branches=((7.0, 2.0), (8.0, 3.0)))
    report = exp.run(scheduler=address, progress=False)
    assert len(report.computed) == 5
    assert {s.worker for s in report.computed} <= worker_addresses(client)
    check_store(exp_dir, leaves)
    assert client.status == "running"  # the run's own client is closed, the user's one is not


@pytest.mark.slow
def test_fan_out_on_s3(client, s3_location):
    url, options = s3_location
    exp = dg.Experiment(url, state_class=BigState, storage_options=options)
    _, leaves = fan_out(exp, branches=((1.0, 2.0), (2.0, 3.0)))
    report = exp.run(scheduler=client, progress=False)
    assert len(report.computed) == 5 and not report.failures
    assert {s.worker for s in report.computed} <= worker_addresses(client)
    check_store(url, leaves, storage_options=options)
    sizes = client.run_on_scheduler(_sizes)
    assert max(sizes[s.sha] for s in report.states) < 64 * 1024


def test_failing_branch_is_isolated(client, exp_dir):
    exp = dg.Experiment(exp_dir, state_class=BigState)
    root, leaves = fan_out(exp, branches=((1.0, 2.0), (2.0, 3.0)))
    with exp.tag("doomed"):
        bad = Broken(why="test")(root)
        below = Shift(by=9.0)(bad)
    with pytest.raises(RunFailedError) as err:
        exp.run(scheduler=client, progress=False)
    message = str(err.value)
    assert "Broken" in message and "broken on purpose: test" in message and "doomed" in message
    report = err.value.report
    failed = [s for s in report.states if s.status == "failed"]
    assert [s.sha for s in failed] == [bad.sha()]
    assert "ValueError: broken on purpose" in failed[0].traceback
    assert failed[0].worker in worker_addresses(client)
    skipped = report.skipped
    assert [s.sha for s in skipped] == [below.sha()] and skipped[0].cause == bad.sha()
    assert len(report.computed) == 5  # every other branch finished and was saved
    stored = check_store(exp_dir, leaves)
    assert bad.sha() not in {n.sha() for n in stored.graph.nodes}


@pytest.mark.slow
def test_worker_killed_mid_recipe_and_mid_save(client, exp_dir, tmp_path):
    exp = dg.Experiment(exp_dir, state_class=BigState)
    root, leaves = fan_out(exp, branches=((1.0, 2.0),))
    killed = DieOnce(marker=str(tmp_path / "die-once"), by=4.0)(root)
    after = Scale(factor=2.0)(killed)
    saved = SaveKiller(marker=str(tmp_path / "die-saving"))(root)
    report = exp.run(scheduler=client, progress=False)

    # Both deaths happened, and both states were then computed on a (new or other) worker.
    # A worker can also die after its state is committed but before Dask has its result
    # (the other worker's death takes results held in memory with it): Dask then runs the
    # task again, which finds the state in the store, so it is reported cached, not lost.
    assert (tmp_path / "die-once").exists() and (tmp_path / "die-saving").exists()
    finished = {s.sha: s.status for s in report.states}
    for promise in (killed, after, saved):
        assert finished[promise.sha()] in ("computed", "cached")
    assert saved.sha() in {s.sha for s in report.computed}  # its first save never completed
    assert not report.failures
    exp2 = check_store(exp_dir, leaves)
    state = exp2.graph.node(after.sha()).restore()
    np.testing.assert_array_equal(state.model, (np.arange(MODEL_SIZE, dtype=np.float64) + 4.0) * 2.0)
    state = exp2.graph.node(saved.sha()).restore()
    np.testing.assert_array_equal(state.model, np.arange(MODEL_SIZE, dtype=np.float64) - 1.0)
    assert isinstance(state.trap, DieWhileSaving)
    # the cluster is back to two workers
    client.wait_for_workers(2, timeout=30)


@pytest.mark.slow
def test_worker_killed_every_time_is_reported_failed(client, exp_dir):
    exp = dg.Experiment(exp_dir, state_class=BigState)
    root = exp.spawn_new_tree(name="fan")
    innocent = Shift(by=3.0)(root)
    exp.run(scheduler=client, progress=False)
    with exp.tag("doomed"):
        doomed = AlwaysDie(code=5)(root)
        below = Shift(by=1.0)(doomed)
    # a task is given up after its worker died twice (Dask's default is four times)
    old = client.run_on_scheduler(_set_allowed_failures, 1)
    try:
        with pytest.raises(RunFailedError) as err:
            exp.run(scheduler=client, progress=False)
    finally:
        client.run_on_scheduler(_set_allowed_failures, old)
    report = err.value.report
    by_sha = {s.sha: s for s in report.states}
    assert by_sha[doomed.sha()].status == "failed"
    assert by_sha[doomed.sha()].recipe == "AlwaysDie" and by_sha[doomed.sha()].tags == ["doomed"]
    assert "KilledWorker" in by_sha[doomed.sha()].error
    assert by_sha[below.sha()].status == "skipped" and by_sha[below.sha()].cause == doomed.sha()
    assert "AlwaysDie" in str(err.value)
    stored = dg.Experiment.restore(exp_dir, state_class=BigState)
    assert {n.sha() for n in stored.graph.nodes} == {root.sha(), innocent.sha()}
    for node in stored.graph.nodes:
        node.restore()
    client.wait_for_workers(2, timeout=30)


class Gate(dg.Recipe):
    """Step ``i`` of a chain; step 2 waits for a ``release`` file before finishing."""

    PROPERTIES = ["i", "markers"]

    def run(self, state):
        with open(os.path.join(self.markers, f"started-{self.i}"), "w"):
            pass
        if self.i == 2:
            release = os.path.join(self.markers, "release")
            for _ in range(2400):
                if os.path.exists(release):
                    break
                time.sleep(0.05)
        state.model += self.i
        return state


def gate_chain(folder, markers):
    exp = dg.Experiment(folder, state_class=BigState)
    s = exp.spawn_new_tree(name="gate")
    chain = [s]
    for i in range(4):
        s = Gate(i=i, markers=markers)(s)
        chain.append(s)
    return exp, chain


INTERRUPTED_CLIENT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {here!r})
    import distributed
    from test_distributed import gate_chain
    client = distributed.Client({address!r})
    exp, chain = gate_chain({folder!r}, {markers!r})
    try:
        exp.run(scheduler=client, progress=False)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    # keep the client connected, so that only run()'s own cancel can release the run's tasks
    while not os.path.exists(os.path.join({markers!r}, "quit")):
        time.sleep(0.05)
    client.close()
    """
)


def _known(keys, dask_scheduler):
    return [k for k in keys if k in dask_scheduler.tasks]


def _wait_for(predicate, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_cancels_the_run_on_the_cluster(client, exp_dir, tmp_path):
    markers = str(tmp_path / "markers")
    os.makedirs(markers)
    _, chain = gate_chain(str(tmp_path / "scratch"), markers)
    keys = [p.sha() for p in chain]
    code = INTERRUPTED_CLIENT.format(here=HERE, address=client.scheduler.address, folder=exp_dir, markers=markers)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: os.path.exists(os.path.join(markers, "started-2")) or proc.poll() is not None, "step 2")
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGINT)
        # run() returned by cancelling its tasks: the scheduler forgets every one of them
        # while that client is still connected
        _wait_for(lambda: not client.run_on_scheduler(_known, keys), "the run's tasks to be released")
        assert proc.poll() is None
    finally:
        open(os.path.join(markers, "release"), "w").close()
        open(os.path.join(markers, "quit"), "w").close()
        out, err = proc.communicate(timeout=60)
    assert out.decode().split() == ["interrupted"], err.decode()
    assert "run interrupted" in err.decode()
    # the step that was running is allowed to finish (atomically); the next one never started
    exp = dg.Experiment(exp_dir, state_class=BigState)
    _wait_for(lambda: chain[3].sha() in exp.records.committed(), "the running step to commit")
    assert not os.path.exists(os.path.join(markers, "started-3"))
    exp, chain = gate_chain(exp_dir, markers)
    report = exp.run(scheduler=client, progress=False)
    assert [s.sha for s in report.computed] == [chain[4].sha()]
    state = dg.Experiment.restore(exp_dir, state_class=BigState).graph.node(chain[4].sha()).restore()
    np.testing.assert_array_equal(state.model, np.arange(MODEL_SIZE, dtype=np.float64) + 6.0)


def test_progress_counts_running_states_on_the_cluster(client, exp_dir, tmp_path):
    markers = str(tmp_path / "markers")
    os.makedirs(markers)
    exp, chain = gate_chain(exp_dir, markers)
    stream = io.StringIO()
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(report=exp.run(scheduler=client, progress=stream)))
    runner.start()
    try:
        # while step 2 waits on a worker, the display (refreshed from the scheduler) shows it running
        _wait_for(lambda: "3/5 done | 3 computed | 0 cached | 1 running | 0 failed" in stream.getvalue(), "a frame")
    finally:
        open(os.path.join(markers, "release"), "w").close()
        runner.join(timeout=60)
    assert len(outcome["report"].computed) == 5
    assert stream.getvalue().splitlines()[-1].startswith("dagger: 5/5 done | 5 computed | 0 cached | 0 running")


def test_state_tasks_are_marked_as_data_producers_with_their_dependencies_intact():
    """Children read their parent from the store, so the scheduler may place them on any idle worker."""
    import operator

    import dask

    from dagger.progress import _as_data_producers

    graph = {"a": (operator.add, 1, 2), "b": (operator.mul, "a", 10), "c": (operator.add, "a", "b")}
    marked = _as_data_producers(graph)
    assert list(marked) == list(graph)
    assert all(task.data_producer for task in marked.values())
    assert {k: set(t.dependencies) for k, t in marked.items()} == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert dask.get(marked, "c") == dask.get(graph, "c") == 33
