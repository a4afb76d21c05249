"""Ctrl-C during run(): it stops, nothing is half-written, and a rerun computes only the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import dagger as dg

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = 5


class ChainState(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["model"]

    def initialize_state(self, **kwargs):
        self.model = np.zeros(100_000)


class SlowStep(dg.Recipe):
    """Adds ``i`` to the model. Steps ``>= $CANCEL_SLOW_FROM`` first wait (interruptibly) for a long time."""

    PROPERTIES = ["i", "markers"]

    def run(self, state):
        with open(os.path.join(self.markers, f"started-{self.i}"), "w"):
            pass
        if self.i >= int(os.environ.get("CANCEL_SLOW_FROM", "1000000")):
            for _ in range(1200):  # up to a minute; the test interrupts it long before
                time.sleep(0.05)
        state.model += self.i
        return state


def define(folder, markers):
    exp = dg.Experiment(folder, state_class=ChainState)
    s = exp.spawn_new_tree(name="chain")
    chain = [s]
    for i in range(STEPS):
        s = SlowStep(i=i, markers=markers)(s)
        chain.append(s)
    return exp, chain


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    from test_cancel import define
    exp, chain = define({folder!r}, {markers!r})
    exp.run(scheduler={scheduler!r}, progress=False)
    print("finished without interruption")
    """
)


def _files(folder, sub):
    path = os.path.join(folder, sub)
    return [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs] if os.path.isdir(path) else []


@pytest.mark.parametrize("scheduler", ["single-threaded", "processes"])
def test_ctrl_c_stops_cleanly_and_resumes(tmp_path, scheduler):
    folder, markers = str(tmp_path / "exp"), str(tmp_path / "markers")
    os.makedirs(markers)
    code = SCRIPT.format(here=HERE, folder=folder, markers=markers, scheduler=scheduler)
    # a session of its own, so that the SIGINT goes to its whole process group, as Ctrl-C in a terminal does
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "CANCEL_SLOW_FROM": "2"},
        start_new_session=True,
    )
    try:
        started = os.path.join(markers, "started-2")
        while not os.path.exists(started) and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    err = err.decode()
    assert proc.returncode != 0 and b"finished without interruption" not in out
    assert "KeyboardInterrupt" in err
    assert "run interrupted" in err and "3 state(s) are saved" in err and "again to resume" in err

    # the store is consistent: exactly the states finished before Ctrl-C, each restorable
    exp = dg.Experiment.restore(folder, state_class=ChainState)
    _, chain = define(str(tmp_path / "scratch"), markers)
    done = [p.sha() for p in chain[:3]]
    assert {n.sha() for n in exp.graph.nodes} == set(done)
    for i, sha in enumerate(done):
        np.testing.assert_array_equal(exp.graph.node(sha).restore().model, np.full(100_000, float(sum(range(i)))))
    assert _files(folder, "tmp") == []
    # no lock is left: no lock file, and no process holds a range of the shared lock file
    assert [f for f in _files(folder, "locks") if not f.endswith("states.ranges")] == []
    assert exp.gc(dry_run=True).live_locks == 0
    with open(os.path.join(folder, "index.json")) as f:
        assert set(json.load(f)["states"]) == set(done)

    # running again computes only the rest
    for name in os.listdir(markers):
        os.remove(os.path.join(markers, name))
    exp, chain = define(folder, markers)
    report = exp.run(progress=False)
    assert {s.sha for s in report.computed} == {p.sha() for p in chain[3:]}
    assert {s.sha for s in report.cached} == set(done)
    assert sorted(os.listdir(markers)) == [f"started-{i}" for i in range(2, STEPS)]
    final = dg.Experiment.restore(folder, state_class=ChainState).graph.node(chain[-1].sha()).restore()
    np.testing.assert_array_equal(final.model, np.full(100_000, float(sum(range(STEPS)))))


class Gated(dg.Recipe):
    """Waits for a ``release`` file (for at most a minute), then adds ``i``."""

    PROPERTIES = ["i", "markers"]
    SEED_GLOBAL_RNGS = False  # seeded recipes take turns on the threads scheduler; these two must run together

    def run(self, state):
        with open(os.path.join(self.markers, f"fan-{self.i}"), "w"):
            pass
        for _ in range(1200):
            if os.path.exists(os.path.join(self.markers, "release")):
                break
            time.sleep(0.05)
        state.model += self.i
        return state


def define_fan(folder, markers, width=6):
    exp = dg.Experiment(folder, state_class=ChainState)
    root = exp.spawn_new_tree(name="fan")
    return exp, root, [Gated(i=i, markers=markers)(root) for i in range(width)]


THREADS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    from test_cancel import define_fan
    exp, root, fan = define_fan({folder!r}, {markers!r})
    exp.run(scheduler="threads", num_workers=2, progress=False)
    """
)


def test_ctrl_c_on_threads_lets_running_states_finish_and_starts_no_more(tmp_path):
    folder, markers = str(tmp_path / "exp"), str(tmp_path / "markers")
    os.makedirs(markers)
    code = THREADS_SCRIPT.format(here=HERE, folder=folder, markers=markers)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, start_new_session=True)
    try:
        while len([n for n in os.listdir(markers) if n.startswith("fan-")]) < 2 and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)
        lines = []
        for raw in proc.stderr:  # the main thread stops at once; the two running recipes still wait
            lines.append(raw.decode())
            if "run interrupted" in lines[-1]:
                break
        started = sorted(n for n in os.listdir(markers) if n.startswith("fan-"))
        open(os.path.join(markers, "release"), "w").close()
        rest = proc.stderr.read().decode()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in "".join(lines) + rest
    assert "run interrupted" in lines[-1] and "1 state(s) are saved" in lines[-1]
    assert len(started) == 2  # no state was started after Ctrl-C
    assert sorted(n for n in os.listdir(markers) if n.startswith("fan-")) == started

    # the two running states finished and were committed whole; a rerun computes the other four
    exp, root, fan = define_fan(folder, markers)
    finished = {p.sha() for p in fan if p.sha() in exp.records.committed()}
    assert len(finished) == 2
    report = exp.run(progress=False)
    assert {s.sha for s in report.computed} == {p.sha() for p in fan} - finished
    restored = dg.Experiment.restore(folder, state_class=ChainState)
    for i, p in enumerate(fan):
        np.testing.assert_array_equal(restored.graph.node(p.sha()).restore().model, np.full(100_000, float(i)))
