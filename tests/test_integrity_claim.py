"""Two writers on one empty folder: the first to create experiment.json wins, the other is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import dagger as dg


class Alpha(dg.ExperimentState):
    PROPERTIES = ["name"]


class Beta(dg.ExperimentState):
    PROPERTIES = ["name"]


class Step(dg.Recipe):
    PROPERTIES = ["seed"]

    def run(self, state):
        return state


def test_second_experiment_object_with_another_state_class_is_refused(exp_dir):
    first = dg.Experiment(exp_dir, state_class=Alpha)
    second = dg.Experiment(exp_dir, state_class=Beta)  # both opened on the empty folder
    Step(seed=1)(first.spawn_new_tree(name="a"))
    first.run(progress=False)
    with pytest.raises(dg.errors.StateClassMismatchError, match="Alpha"):
        second.spawn_new_tree(name="a")
    info = json.load(open(os.path.join(exp_dir, "experiment.json")))
    assert info["state_class"].endswith("Alpha")
    assert len(dg.Experiment.restore(exp_dir).graph) == 2  # one tree, nothing overwritten


def test_an_object_store_checks_after_writing(request):
    """memory:// (fsspec) has no atomic create-if-absent: check, write, read back; the loser is refused."""
    url = f"memory://claim-{request.node.name}-{os.getpid()}"
    first = dg.Experiment(url, state_class=Alpha)
    second = dg.Experiment(url, state_class=Beta)
    Step(seed=1)(first.spawn_new_tree(name="a"))
    with pytest.raises(dg.errors.StateClassMismatchError, match="Alpha"):
        second.spawn_new_tree(name="a")
    first.run(progress=False)
    assert json.loads(first.store.get("experiment.json"))["state_class"].endswith("Alpha")


def test_other_root_in_a_claimed_folder_is_refused(exp_dir):
    first = dg.Experiment(exp_dir, state_class=Alpha)
    second = dg.Experiment(exp_dir, state_class=Alpha)
    first.spawn_new_tree(name="a")
    with pytest.raises(dg.errors.DefinitionError, match="one tree"):
        second.spawn_new_tree(name="b")


def test_folder_replaced_under_a_defined_tree_is_refused_at_run(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=Alpha)
    Step(seed=1)(exp.spawn_new_tree(name="a"))
    path = os.path.join(exp_dir, "experiment.json")
    info = json.load(open(path))
    info["state_class"] = "somewhere.Else"
    json.dump(info, open(path, "w"))
    with pytest.raises(dg.errors.StateClassMismatchError, match="somewhere.Else"):
        exp.run(progress=False)
    assert not os.path.exists(os.path.join(exp_dir, "meta")) or not os.listdir(os.path.join(exp_dir, "meta"))


_RACER = textwrap.dedent(
    """
    import sys, time
    import dagger as dg

    class {cls}(dg.ExperimentState):
        PROPERTIES = ["name"]

    class Step(dg.Recipe):
        PROPERTIES = ["seed"]
        def run(self, state):
            return state

    directory, start = sys.argv[1], float(sys.argv[2])
    try:
        exp = dg.Experiment(directory, state_class={cls})  # (a racer slow to start is refused here)
        while time.time() < start:
            pass
        Step(seed=1)(exp.spawn_new_tree(name="{name}"))
        exp.run(progress=False)
    except dg.errors.StateClassMismatchError as exc:
        print("REFUSED", exc)
        sys.exit(3)
    print("WON")
    """
)


@pytest.mark.parametrize("trial", range(4))
def test_two_processes_racing_on_an_empty_folder(tmp_path, trial):
    directory = str(tmp_path / "exp")
    scripts = []
    for cls in ("Alpha", "Beta"):
        path = tmp_path / f"racer_{cls}.py"
        path.write_text(_RACER.format(cls=cls, name="same"))
        scripts.append(str(path))
    start = time.time() + 2.0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    procs = [
        subprocess.Popen(
            [sys.executable, s, directory, repr(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for s in scripts
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 3], outs
    winner = "Alpha" if procs[0].returncode == 0 else "Beta"
    loser = "Beta" if winner == "Alpha" else "Alpha"
    info = json.load(open(os.path.join(directory, "experiment.json")))
    assert info["state_class"] == f"__main__.{winner}"
    refused = outs[[0, 1][procs[1].returncode == 3]][0]
    assert winner in refused and loser in refused
    graph = dg.Experiment.restore(directory).graph
    assert len(graph) == 2 and all(n.metadata["state_class"].endswith(winner) for n in graph)
