"""``scheduler="processes"`` after the parent has run torch on several threads.

GNU OpenMP's thread pool (torch's on Linux) does not survive a fork: a forked worker
hung forever at its first parallel torch operation. Each test runs a real script in a
fresh interpreter, with a timeout, so a hang fails the test instead of the suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from dagger._workers import FreshInterpreterPool, WorkerDiedError

pytest.importorskip("torch")

# The paper's style: classes in __main__ and no ``if __name__ == "__main__"`` guard, so a
# worker that imported the script would run the whole experiment again (and print BANNER).
SCRIPT = textwrap.dedent(
    """
    import sys

    import torch

    import dagger as dg

    print("BANNER", flush=True)


    class State(dg.ExperimentState):
        PROPERTIES = ["name", "seed"]
        NONHASHED_ATTRIBUTES = ["model"]

        def initialize_state(self, **kwargs):
            torch.manual_seed(self.seed)
            self.model = torch.nn.Linear(256, 256)


    class Train(dg.Recipe):
        PROPERTIES = ["steps", "threads"]

        def run(self, state):
            assert type(state) is State, f"run got {type(state)!r}, not this script's State"
            torch.set_num_threads(self.threads)  # a recipe may ask for its own thread count
            x = torch.randn(512, 256)
            optimizer = torch.optim.SGD(state.model.parameters(), lr=0.01)
            for _ in range(self.steps):
                optimizer.zero_grad()
                (state.model(x) @ torch.randn(256, 256)).relu().sum().backward()
                optimizer.step()
            return state


    @dg.Function
    def norm(state):
        return {"norm": state.model.weight.detach().norm().item()}


    torch.set_num_threads(2)
    big = torch.randn(1500, 1500)
    print("parent", bool((big @ big).sin().sum() != 0), torch.get_num_threads(), flush=True)

    exp = dg.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(name="mlp", seed=0)
    for steps in (1, 2, 3):
        with exp.tag(f"steps:{steps}"):
            for threads in (1, 2):
                norm(Train(steps=steps, threads=threads)(root))
    report = exp.run(scheduler="processes", num_workers=2)
    print(f"computed={len(report.computed)} failed={len(report.failures)}", flush=True)
    restored = exp.graph.nodes.filter("steps:3")[0].restore()
    assert type(restored) is State, type(restored)
    print("DONE", flush=True)
    """
)


@pytest.mark.parametrize("how", ["script", "stdin"])
def test_processes_after_parent_used_torch_threads(tmp_path, how):
    """``script``: a file run as ``python study.py``; ``stdin``: ``__main__`` without a file, as in a notebook."""
    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    command = [sys.executable, str(script)] if how == "script" else [sys.executable, "-"]
    # Its own session, so that on a timeout its forked workers are killed with it.
    proc = subprocess.Popen(
        [*command, str(tmp_path / "runs")],
        stdin=subprocess.PIPE if how == "stdin" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(SCRIPT if how == "stdin" else None, timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        pytest.fail(f"exp.run(scheduler='processes') hung after torch ran on 2 threads; output: {stdout!r}")
    assert proc.returncode == 0, stderr
    assert "parent True 2" in stdout
    assert "computed=7 failed=0" in stdout, stdout
    assert stdout.count("BANNER") == 1, "a worker ran the user's script again"
    assert "DONE" in stdout


def _boom(x):
    raise ValueError(f"bad {x}")


def test_fresh_pool_runs_calls_and_reports_errors():
    with FreshInterpreterPool(2) as pool:
        futures = [pool.submit(pow, i, 2) for i in range(6)]
        assert [f.result(timeout=120) for f in futures] == [i * i for i in range(6)]
        with pytest.raises(ValueError, match="bad 3"):
            pool.submit(_boom, 3).result(timeout=120)
        # Each worker is a separate process, not this one.
        pids = {pool.submit(os.getpid).result(timeout=120) for _ in range(8)}
        assert os.getpid() not in pids


def test_fresh_pool_survives_a_worker_that_exits():
    with FreshInterpreterPool(1) as pool:
        with pytest.raises(WorkerDiedError, match="status 3"):
            pool.submit(os._exit, 3).result(timeout=120)
        assert pool.submit(pow, 3, 3).result(timeout=120) == 27  # a new worker took over
