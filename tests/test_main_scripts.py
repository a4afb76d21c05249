"""Classes defined in the script being run (``__main__``), as users write them.

Each test writes a real script, runs it in a fresh interpreter, edits it and runs it
again, or runs several copies at once: the states one process stored are the parents
another process extends, and the script's own ``State`` must be what comes back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import dagger as dg

SCRIPT = textwrap.dedent(
    '''
    import sys

    import numpy as np

    import dagger as dg


    class State(dg.ExperimentState):
        PROPERTIES = ["dataset_name", "seed"]
        NONHASHED_ATTRIBUTES = ["weights"]

        def initialize_state(self, **kwargs):
            self.weights = np.arange(8, dtype=np.float64) + self.seed


    class Scale(dg.Recipe):
        PROPERTIES = ["factor"]

        def run(self, state):
            assert type(state) is State, f"run got {type(state)!r}, not this script's State"
            state.weights = state.weights * self.factor
            return state


    @dg.Function
    def total(state):
        return {"total": float(state.weights.sum())}


    def main(directory, scheduler, factors):
        exp = dg.Experiment(directory, state_class=State)
        root = exp.spawn_new_tree(dataset_name="toy", seed=3)
        for factor in factors:
            with exp.tag(f"factor:{factor}"):
                child = Scale(factor=factor)(root)
                total(child)
                total(Scale(factor=2.0)(child))
        if scheduler == "cluster":
            import distributed

            with distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
            ) as cluster, distributed.Client(cluster) as client:
                report = exp.run(scheduler=client)
        else:
            report = exp.run(scheduler=scheduler)
        print(f"computed={len(report.computed)} cached={len(report.cached)}")
        restored = exp.graph.nodes.filter(f"factor:{factors[-1]}")[0].restore()
        assert type(restored) is State, type(restored)


    if __name__ == "__main__":
        main(sys.argv[1], sys.argv[2], [float(f) for f in sys.argv[3].split(",")])
    '''
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=300, cwd=os.path.dirname(script)
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "study.py"
    path.write_text(SCRIPT)
    return str(path)


def _totals(directory: str) -> dict[str, float]:
    """Each branch's first state's total, by its tag (``factor:3.0``)."""
    graph = dg.Experiment.restore(directory).graph
    return {",".join(n.tags): n.results["total"]["total"] for n in graph.nodes_at_distance(1)}


@pytest.mark.parametrize("scheduler", ["single-threaded", "threads", "processes", "cluster"])
def test_a_script_grows_its_stored_tree(script, tmp_path, scheduler):
    directory = str(tmp_path / "runs")
    assert "computed=5 cached=0" in _ok(_run(script, directory, scheduler, "1.0,0.5"))
    # The user adds a branch and runs the script again: the new states' parent (the root)
    # was stored by the first process.
    out = _ok(_run(script, directory, scheduler, "1.0,0.5,3.0"))
    assert "computed=2 cached=5" in out
    totals = _totals(directory)
    base = float(sum(range(8)) + 8 * 3)
    assert totals["factor:3.0"] == base * 3.0
    assert totals["factor:0.5"] == base * 0.5
    grandchild = dg.Experiment.restore(directory).graph.nodes.filter("factor:3.0")
    assert sorted(n.results["total"]["total"] for n in grandchild) == [base * 3.0, base * 6.0]


def test_an_edited_method_of_a_main_class_is_the_one_that_runs(script, tmp_path):
    """The state stored by the first run comes back as the *edited* script's class."""
    directory = str(tmp_path / "runs")
    _ok(_run(script, directory, "single-threaded", "1.0"))
    with open(script) as f:
        text = f.read()
    edited = text.replace(
        '        assert type(state) is State, f"run got {type(state)!r}, not this script\'s State"\n',
        '        assert type(state) is State, f"run got {type(state)!r}, not this script\'s State"\n'
        '        assert state.marker() == "edited", state.marker()\n',
    ).replace(
        '    NONHASHED_ATTRIBUTES = ["weights"]\n',
        '    NONHASHED_ATTRIBUTES = ["weights"]\n\n    def marker(self):\n        return "edited"\n',
    )
    assert edited != text
    with open(script, "w") as f:
        f.write(edited)
    assert "computed=2 cached=3" in _ok(_run(script, directory, "single-threaded", "1.0,4.0"))


def test_four_copies_of_a_script_run_at_once(script, tmp_path):
    directory = str(tmp_path / "runs")
    _ok(_run(script, directory, "single-threaded", "1.0"))
    # Four copies at once, each adding branches whose parents others may store first.
    procs = [
        subprocess.Popen(
            [sys.executable, script, directory, "threads", f"1.0,{2 + i}.0,7.0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(script),
        )
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    totals = _totals(directory)
    base = float(sum(range(8)) + 8 * 3)
    for factor in (1.0, 2.0, 3.0, 4.0, 5.0, 7.0):
        assert totals[f"factor:{factor}"] == base * factor
    assert len(dg.Experiment.restore(directory).graph) == 1 + 2 * 6


GLOBALS_SCRIPT = textwrap.dedent(
    """
    import sys

    import numpy as np

    import dagger as dg

    TABLE = np.arange(1_000_000, dtype=np.float64)  # 8 MB, loaded at the top of the script


    class State(dg.ExperimentState):
        PROPERTIES = ["seed"]

        def initialize_state(self, **kwargs):
            self.offset = float(TABLE[self.seed])


    class Step(dg.Recipe):
        PROPERTIES = ["k"]

        def run(self, state):
            state.offset += TABLE[self.k]
            return state


    exp = dg.Experiment(sys.argv[1], state_class=State)
    s = exp.spawn_new_tree(seed=1)
    for k in range(12):
        s = Step(k=k)(s)
    exp.run()
    print(exp.graph.leaves()[0].restore().offset)
    """
)


def test_a_large_global_of_a_main_class_is_stored_once(tmp_path):
    """A ``__main__`` class travels with the globals its methods name; 13 states store them once."""
    script = tmp_path / "tabled.py"
    script.write_text(GLOBALS_SCRIPT)
    directory = tmp_path / "runs"
    assert _ok(_run(str(script), str(directory))).strip() == str(float(1 + sum(range(12))))
    stored = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    assert stored < 2 * 8_000_000, f"{stored} bytes stored for 13 states sharing one 8 MB global"
    # A second run of the script (another process, another copy of the class) still restores.
    assert _ok(_run(str(script), str(directory))).strip() == str(float(1 + sum(range(12))))
