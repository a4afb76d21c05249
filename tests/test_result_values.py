"""Function results and properties that JSON cannot hold faithfully: clear errors, never lost work.

Issue 18 items 6 and 12: an int of more than 4300 digits, dict keys that collide as strings,
two Functions sharing the name ``<lambda>``, and objects whose only form is a repr holding a
memory address.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import records_io

import dagger as dg

SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import dagger as dg


    class State(dg.ExperimentState):
        PROPERTIES = ["name"]

        def initialize_state(self, **kwargs):
            self.model = np.zeros(3)


    class Train(dg.Recipe):
        PROPERTIES = ["seed"]

        def run(self, state):
            with open(sys.argv[2], "a") as log:  # counts how often the work is done
                log.write("trained\\n")
            state.model = state.model + self.seed
            return state


    class Model:
        def __init__(self, weights):
            self.weights = weights


    @dg.Function
    def huge(state):
        return 10**5000


    @dg.Function
    def keys(state):
        return {1: "int", "1": "str"}


    @dg.Function
    def model(state):
        return Model(state.model)


    @dg.Function
    def accuracy(state):
        return {"acc": float(state.model.sum()), "per_class": {0: 0.5, 1: 0.25}}


    exp = dg.Experiment(sys.argv[1], state_class=State)
    child = Train(seed=2)(exp.spawn_new_tree(name="root"))
    for fn in (huge, keys, model, accuracy):
        fn(child)
    report = exp.run(raise_on_failure=False)
    row = next(s for s in report.states if s.sha == child.sha())
    print(json.dumps({"sha": child.sha(), "status": row.status, "errors": row.function_errors}))
    """
)


def run_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "exp"), str(tmp_path / "work.log")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_unstorable_results_are_function_failures_and_the_state_is_saved(tmp_path):
    first = run_script(tmp_path)
    assert first["status"] == "computed"
    errors = first["errors"]
    assert set(errors) == {"huge", "keys", "model"}
    assert "Function 'huge'" in errors["huge"] and "4300" in errors["huge"]
    assert "Function 'keys'" in errors["keys"] and "1" in errors["keys"] and "distinct string keys" in errors["keys"]
    assert "Function 'model'" in errors["model"] and "__main__.Model" in errors["model"]
    assert "memory address" in errors["model"] and "0x" not in errors["model"]  # the same text every run
    exp = dg.Experiment.restore(str(tmp_path / "exp"))
    node = exp.graph.node(first["sha"])
    assert node.results == {"accuracy": {"acc": 6.0, "per_class": {"0": 0.5, "1": 0.25}}}
    assert node.restore().model.tolist() == [2.0, 2.0, 2.0]  # the recipe's work is stored
    second = run_script(tmp_path)
    assert second["status"] == "cached"  # ... and never redone
    assert (tmp_path / "work.log").read_text().count("trained") == 1
    # a commit record (its meta/ file or segment record), not a failure record
    assert records_io.revs(str(tmp_path / "exp"), first["sha"])
    assert not os.path.exists(tmp_path / "exp" / "failed" / f"{first['sha']}.json")


class State(dg.ExperimentState):
    PROPERTIES = ["name"]


class Train(dg.Recipe):
    PROPERTIES = ["seed"]

    def run(self, state):
        return state


def test_a_property_json_cannot_hold_is_refused_at_definition_naming_it(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(name="root")
    with pytest.raises(dg.DefinitionError, match=r"property 'seed' of Train.*4300"):
        Train(seed=10**5000)(root)
    other = dg.Experiment(exp_dir + "-2", state_class=State)
    with pytest.raises(dg.DefinitionError, match=r"property 'name' of State"):
        other.spawn_new_tree(name=10**5000)


def test_two_lambdas_on_one_state_are_refused(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root = exp.spawn_new_tree(name="root")
    dg.Function(lambda s: 1)(root)
    with pytest.raises(dg.DefinitionError, match=r"two different Functions named '<lambda>'.*name="):
        dg.Function(lambda s: 2)(root)
    first, second = dg.Function(lambda s: 1, name="one"), dg.Function(lambda s: 2, name="two")
    first(root)
    second(root)
    first(root)  # the same Function again: nothing to refuse
    exp.run()
    assert dg.Experiment.restore(exp_dir).graph.root.results == {"<lambda>": 1, "one": 1, "two": 2}
