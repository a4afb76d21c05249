"""Environment capture: what the experiment and each state record about where they ran."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import dagger as dg
from dagger import environment


class EnvState(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.x = np.zeros(2)


class Bump(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.x = state.x + self.k
        return state


def _git(cwd, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def test_capture_lists_interpreter_platform_packages_and_command_line():
    env = environment.capture(extra_packages=["pytest", "no-such-distribution-xyz"])
    assert env["python"] == platform.python_version()
    assert env["platform"] == platform.platform()
    assert env["argv"] == sys.argv
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["dask"] == metadata.version("dask")
    assert env["packages"]["dagger"] == dg.__version__
    assert env["packages"]["pytest"] == metadata.version("pytest")
    assert env["packages"]["no-such-distribution-xyz"] is None
    json.dumps(env)  # plain JSON


def test_torch_is_listed_only_once_imported():
    code = (
        "import sys; from dagger import environment as e; "
        "listed = 'torch' in e.capture()['packages']; "
        "print(listed, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]  # not listed, and capture did not import it
    import torch

    assert environment.capture()["packages"]["torch"] == torch.__version__


def test_git_commit_and_dirty_flag(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    script = repo / "train.py"
    script.write_text("print('hi')\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "train.py")
    _git(repo, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()

    clean = environment.capture(script=script)["git"]
    assert clean["commit"] == head and clean["dirty"] is False
    (repo / "untracked.txt").write_text("outputs do not make the tree dirty")
    assert environment.capture(script=script)["git"]["dirty"] is False
    script.write_text("print('changed')\n")
    assert environment.capture(script=script)["git"] == {**clean, "dirty": True}


def test_no_git_entry_outside_a_repository(tmp_path):
    outside = tmp_path / "plain"
    outside.mkdir()
    (outside / "x.py").write_text("")
    env = environment.capture(script=outside / "x.py")
    if environment.git_info(tmp_path) is None:  # tmp is normally not inside a repository
        assert "git" not in env
    else:  # pragma: no cover - a tmp folder inside a repository
        assert env["git"]["root"] != str(outside)


def test_differences_keep_only_what_changed():
    base = {"python": "3.11", "packages": {"numpy": "1", "dask": "2"}, "argv": ["a"], "time": "t0"}
    same = {"python": "3.11", "packages": {"numpy": "1", "dask": "2"}, "argv": ["a"], "time": "t1"}
    assert environment.differences(base, same) == {}
    new = {"python": "3.11", "packages": {"numpy": "2", "dask": "2", "torch": "9"}, "argv": ["b"], "time": "t1"}
    assert environment.differences(base, new) == {"packages": {"numpy": "2", "torch": "9"}, "argv": ["b"]}
    assert environment.differences(None, {"python": "3", "time": "t"}) == {"python": "3"}


def test_experiment_records_environment_and_states_record_differences(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=EnvState, packages=["pytest"])
    root = exp.spawn_new_tree(name="a")
    a = Bump(k=1)(root)
    exp.run()
    info = json.loads(open(f"{exp_dir}/experiment.json").read())
    env = info["environment"]
    assert env["packages"]["pytest"] == metadata.version("pytest")
    assert env["python"] == platform.python_version()
    graph = dg.Experiment.restore(exp_dir).graph
    # same process, same environment: no state records a difference
    assert all("environment" not in node.metadata for node in graph.nodes)

    # a later run in a different environment (here: another package version recorded
    # at creation) is recorded on the states it computes, and only the difference
    info["environment"]["packages"]["pytest"] = "0.0-old"
    info["environment"]["argv"] = ["other.py"]
    with open(f"{exp_dir}/experiment.json", "w") as f:
        json.dump(info, f)
    exp2 = dg.Experiment(exp_dir, state_class=EnvState, packages=["pytest"])
    b = Bump(k=2)(Bump(k=1)(exp2.spawn_new_tree(name="a")))
    exp2.run()
    graph = dg.Experiment.restore(exp_dir).graph
    assert "environment" not in graph.node(a.sha()).metadata  # cached, untouched
    assert graph.node(b.sha()).metadata["environment"] == {
        "argv": sys.argv,
        "packages": {"pytest": metadata.version("pytest")},
    }


def test_environment_is_captured_once_per_run(exp_dir, monkeypatch):
    calls = []
    real = environment.start_capture

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(environment, "start_capture", counting)  # capture() starts one too
    exp = dg.Experiment(exp_dir, state_class=EnvState)
    root = exp.spawn_new_tree(name="a")
    for k in range(4):
        Bump(k=k)(root)
    assert len(calls) == 1  # at creation
    exp.run()
    assert len(calls) == 2  # once for the whole run, not per state
    exp.run()  # all cached: nothing to capture
    assert len(calls) == 2


def test_every_state_a_run_computes_records_the_difference(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=EnvState)
    exp.spawn_new_tree(name="a")
    info = json.loads(open(f"{exp_dir}/experiment.json").read())
    info["environment"]["python"] = "2.7.18"  # as if the experiment had been created elsewhere
    with open(f"{exp_dir}/experiment.json", "w") as f:
        json.dump(info, f)
    exp = dg.Experiment(exp_dir, state_class=EnvState)
    root = exp.spawn_new_tree(name="a")
    leaves = [Bump(k=k)(Bump(k=-k)(root)) for k in range(1, 4)]
    report = exp.run()
    assert len(report.computed) == 7
    graph = dg.Experiment.restore(exp_dir).graph
    assert all(node.metadata["environment"] == {"python": platform.python_version()} for node in graph.nodes)
    assert all(graph.node(leaf.sha()).restore().x.tolist() == [0.0, 0.0] for leaf in leaves)


def test_a_run_that_fails_while_building_its_tasks_leaves_no_git_process_behind(exp_dir, monkeypatch):
    started = []
    real = environment._start_git

    def recording(*args):
        proc = real(*args)
        started.append(proc)
        return proc

    monkeypatch.setattr(environment, "_start_git", recording)
    monkeypatch.setattr(environment, "main_script", lambda: __file__)  # inside this repository
    exp = dg.Experiment(exp_dir, state_class=EnvState)
    root = exp.spawn_new_tree(name="a")
    for k in range(3):
        Bump(k=k)(root)
    started.clear()

    def broken(*args):
        raise RuntimeError("cannot explain")

    monkeypatch.setattr(dg.Experiment, "_explain", broken)
    try:
        exp.run()
    except RuntimeError as exc:
        assert "cannot explain" in str(exc)
    else:  # pragma: no cover - the failure is the point
        raise AssertionError("run() did not fail")
    assert started and all(proc is not None and proc.returncode is not None for proc in started)  # ended, reaped
    assert exp._env_pending is None


@pytest.mark.timeout(120)  # a guard: waiting on the held pipe would take 40 s, failing below
@pytest.mark.parametrize("body", ["exec sleep 60", "sleep 40 & echo child $! >> {pids}; wait"])
def test_a_hung_git_is_given_up_and_killed(tmp_path, monkeypatch, body):
    # A git that hangs, as on a stalled network file system; in the second form a wrapper
    # whose own child keeps the output pipe open after the wrapper is killed.
    path, pids = _fake_git(tmp_path, body)
    monkeypatch.setenv("PATH", path)
    monkeypatch.setattr(environment, "GIT_TIMEOUT", 0.3)
    try:
        assert environment.git_info(tmp_path) is None  # and it returns: no wait on the held pipe
        assert "git" not in environment.capture(script=tmp_path)
        started = [line.split() for line in pids.read_text().splitlines()]
        assert len([pid for kind, pid in started if kind == "git"]) == 4  # two queries, two commands each
        for pid in (int(pid) for kind, pid in started if kind == "git"):
            assert not _alive(pid), f"git process {pid} still runs"
        # git_info returned while the wrapper's child still held the pipe: it did not wait for it.
        assert all(_alive(int(pid)) for kind, pid in started if kind == "child")
    finally:
        for line in pids.read_text().splitlines():  # the wrapper's children, left by design of the fake
            try:
                os.kill(int(line.split()[1]), 9)
            except ProcessLookupError:
                pass


def _fake_git(tmp_path: Path, body: str) -> tuple[str, Path]:
    """A PATH whose `git` notes its pid ("git <pid>" lines in the returned file), then runs ``body``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pids = tmp_path / "pids"
    fake = bin_dir / "git"
    fake.write_text(f"#!/bin/sh\necho git $$ >> {pids}\n{body.format(pids=pids)}\n")
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}", pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


INTERRUPTED = """
import _thread, os, sys, threading
from dagger import environment
threading.Timer(0.5, _thread.interrupt_main).start()  # Ctrl-C sent to Python alone, as `kill -INT` does
try:
    environment.git_info(sys.argv[1])
except KeyboardInterrupt:
    print("interrupted")
"""


def test_an_interrupt_while_waiting_for_git_leaves_no_git_process(tmp_path):
    path, pids = _fake_git(tmp_path, "exec sleep 30")
    env = dict(os.environ, PATH=path)
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED, str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.split() == ["interrupted"], out.stderr
    started = [int(line.split()[1]) for line in pids.read_text().splitlines()]
    assert len(started) == 2  # both commands had started, side by side
    for pid in started:
        assert not _alive(pid), f"git process {pid} outlived the interrupted query"


def test_an_interrupt_between_the_two_git_starts_reaps_the_first(monkeypatch):
    real = subprocess.Popen
    started = []

    def second_start_interrupted(*args, **kwargs):
        if started:
            raise KeyboardInterrupt
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(environment.subprocess, "Popen", second_start_interrupted)
    with pytest.raises(KeyboardInterrupt):
        environment.git_info(__file__)
    assert len(started) == 1 and started[0].returncode is not None  # ended and reaped
