"""Two real runners of one script: a state one of them failed and the other stored is not 'failed'.

Issue 18 item 13: ``dagger show`` listed stored states as "failed ... (not stored)". Runner B
plans its run before runner A fails state X (so B sees no failure record); A fails X and
records it; then B computes and stores X. The record of A's failure must not outlive B's commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

from typer.testing import CliRunner

from dagger import cli

DEFS = textwrap.dedent(
    """
    import os
    import time

    import numpy as np
    import dagger as dg


    class State(dg.ExperimentState):
        PROPERTIES = ["name"]

        def initialize_state(self, **kwargs):
            self.model = np.zeros(3)


    class Train(dg.Recipe):
        PROPERTIES = ["seed"]

        def run(self, state):
            if os.environ.get("FAIL_TRAIN"):
                raise RuntimeError("this runner's GPU is gone")
            state.model = state.model + self.seed
            return state


    def wait_for(flag):
        # A dask callback: the run is planned and its graph built; wait until `flag` exists.
        def start(dsk):
            open(flag + ".waiting", "w").close()
            deadline = time.time() + 60
            while not os.path.exists(flag) and time.time() < deadline:
                time.sleep(0.02)

        return start
    """
)

SCRIPT = textwrap.dedent(
    """
    import contextlib
    import json
    import os
    import sys

    from dask.callbacks import Callback

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import dagger as dg
    from defs13 import State, Train, wait_for

    exp = dg.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(name="root")
    x = Train(seed=3)(root)
    flag = os.environ.get("WAIT_FOR")  # runner B plans its run, then waits until runner A has failed X
    with Callback(start=wait_for(flag)) if flag else contextlib.nullcontext():
        report = exp.run(raise_on_failure=False)
    print(json.dumps({"x": x.sha(), "status": {s.sha: s.status for s in report.states}}))
    """
)


def start(tmp_path, exp_dir, **env):
    return subprocess.Popen(
        [sys.executable, str(tmp_path / "script.py"), exp_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1", **env},
    )


def finish(proc):
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_a_state_failed_by_one_runner_and_stored_by_another_is_not_listed_as_failed(tmp_path):
    (tmp_path / "defs13.py").write_text(DEFS)
    (tmp_path / "script.py").write_text(SCRIPT)
    exp_dir = str(tmp_path / "exp")
    flag = str(tmp_path / "a-failed")
    finish(start(tmp_path, exp_dir, FAIL_TRAIN="1"))  # stores the root; X fails (a first failure record)
    os.remove(os.path.join(exp_dir, "failed", os.listdir(os.path.join(exp_dir, "failed"))[0]))
    b = start(tmp_path, exp_dir, WAIT_FOR=flag)  # plans X as never stored, then waits
    deadline = time.time() + 60
    while not os.path.exists(flag + ".waiting") and time.time() < deadline and b.poll() is None:
        time.sleep(0.02)
    a = finish(start(tmp_path, exp_dir, FAIL_TRAIN="1"))  # runner A fails X and records it
    assert a["status"][a["x"]] == "failed"
    assert os.listdir(os.path.join(exp_dir, "failed")) == [a["x"] + ".json"]
    open(flag, "w").close()
    got = finish(b)
    assert got["status"][got["x"]] == "computed"  # runner B stored X after A's failure
    shown = CliRunner().invoke(cli.app, ["show", exp_dir])
    assert shown.exit_code == 0, shown.output
    assert "failed at their last attempt" not in shown.output and "this runner's GPU is gone" not in shown.output
    assert "2 states" in shown.output
    assert not os.listdir(os.path.join(exp_dir, "failed"))  # and the stale record is gone


def test_show_ignores_a_failure_record_left_beside_a_stored_state(tmp_path):
    """A record left by an older dagger, or by a runner without locks, never marks a stored state failed."""
    (tmp_path / "defs13.py").write_text(DEFS)
    (tmp_path / "script.py").write_text(SCRIPT)
    exp_dir = str(tmp_path / "exp")
    done = finish(start(tmp_path, exp_dir))
    os.makedirs(os.path.join(exp_dir, "failed"), exist_ok=True)
    stale = {"sha": done["x"], "label": "Train", "error": "RuntimeError: this runner's GPU is gone", "start": 1.0}
    with open(os.path.join(exp_dir, "failed", done["x"] + ".json"), "w") as f:
        json.dump(stale, f)
    shown = CliRunner().invoke(cli.app, ["show", exp_dir])
    assert shown.exit_code == 0, shown.output
    assert "failed at their last attempt" not in shown.output and "GPU is gone" not in shown.output
