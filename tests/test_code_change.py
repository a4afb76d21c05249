"""Code-change detection: source hashes, the on_code_change policy, and why states were computed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
import records_io

import dagger as dg
from dagger.execution import failure_key
from dagger.sourcehash import source_hash

MODULE = '''
import numpy as np
import dagger as dg


class S(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.x = np.zeros(3)


def scale(x):
    return inner(x) * 2.0


def inner(x):
    return x + 1.0


def unrelated():
    return "not called by any recipe"


class Step(dg.Recipe):
    """Adds k, through a helper."""

    PROPERTIES = ["k"]

    def run(self, state):
        state.x = scale(state.x) + self.k
        return state


class Other(dg.Recipe):
    PROPERTIES = ["m"]

    def run(self, state):
        state.x = state.x - self.m
        return state
'''

# the same code, reformatted, re-commented and re-documented
REFORMATTED = '''
import numpy as np
import dagger as dg
class S(dg.ExperimentState):
    PROPERTIES = ["name"]
    def initialize_state(self, **kwargs):
        self.x = np.zeros(3)   # a comment
def scale(x):
    """Now with a docstring."""
    return (inner(x)
            * 2.0)
def inner(x):


    return x + 1.0
def unrelated():
    return "not called by any recipe"
class Step(dg.Recipe):
    """A different docstring."""
    PROPERTIES = [
        "k",
    ]
    def run(self, state):
        # comments do not count
        state.x = scale(state.x) + self.k  # nor here
        return state
class Other(dg.Recipe):
    PROPERTIES = ["m"]
    def run(self, state):
        state.x = state.x - self.m
        return state
'''


def load(tmp_path, text, variant):
    """Import ``text`` as module ``recmod`` from its own file (a fresh module object)."""
    folder = tmp_path / variant
    folder.mkdir()
    path = folder / "recmod.py"
    path.write_text(textwrap.dedent(text))
    spec = importlib.util.spec_from_file_location("recmod", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_formatting_comments_and_docstrings_are_no_change(tmp_path):
    a = load(tmp_path, MODULE, "a")
    b = load(tmp_path, REFORMATTED, "b")
    assert source_hash(a.Step) == source_hash(b.Step)
    assert source_hash(a.Other) == source_hash(b.Other)


@pytest.mark.parametrize(
    "old, new, changes_step",
    [
        ("state.x = scale(state.x) + self.k", "state.x = scale(state.x) - self.k", True),  # own body
        ("return inner(x) * 2.0", "return inner(x) * 3.0", True),  # a same-module helper it calls
        ("return x + 1.0", "return x + 2.0", True),  # a helper of the helper
        ('return "not called by any recipe"', 'return "edited"', False),  # a function it never calls
        ("self.x = np.zeros(3)", "self.x = np.ones(3)", False),  # the state class is not the recipe
    ],
)
def test_which_edits_change_a_recipe(tmp_path, old, new, changes_step):
    assert old in MODULE
    a = load(tmp_path, MODULE, "a")
    b = load(tmp_path, MODULE.replace(old, new), "b")
    assert (source_hash(a.Step) != source_hash(b.Step)) is changes_step
    assert source_hash(a.Other) == source_hash(b.Other)


def test_new_method_or_class_attribute_is_a_change(tmp_path):
    a = load(tmp_path, MODULE, "a")
    b = load(tmp_path, MODULE.replace('    PROPERTIES = ["m"]\n', '    PROPERTIES = ["m"]\n    SEED = False\n'), "b")
    c = load(
        tmp_path,
        MODULE.replace(
            "class Other(dg.Recipe):\n", "class Other(dg.Recipe):\n    def extra(self):\n        return 1\n"
        ),
        "c",
    )
    assert source_hash(a.Other) != source_hash(b.Other)
    assert source_hash(a.Other) != source_hash(c.Other)


# ---- end to end: run, edit the recipe file, run again in a fresh process ---------------------

SCRIPT = """
import json, sys, warnings
sys.path.insert(0, sys.argv[1])
import dagger as dg
from recmod import S, Step, Other

out = {"warnings": [], "states": []}
exp = dg.Experiment(sys.argv[2], state_class=S, on_code_change=sys.argv[3])
root = exp.spawn_new_tree(name="a")
Other(m=1)(Step(k=1)(root))
Other(m=2)(Step(k=3)(Step(k=2)(root)))
Other(m=3)(root)
try:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = exp.run()
    out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, dg.DaggerWarning)]
    out["states"] = [
        {"sha": s.sha, "recipe": s.recipe, "status": s.status, "reason": s.reason} for s in report.states
    ]
except dg.RecipeChangedError as exc:
    out["error"] = str(exc)
    out["changed"] = exc.changed
print(json.dumps(out))
"""


def run_script(tmp_path, policy):
    script = tmp_path / "script.py"
    if not script.exists():
        script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "code"), str(tmp_path / "exp"), policy],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_code(tmp_path, text):
    (tmp_path / "code").mkdir(exist_ok=True)
    (tmp_path / "code" / "recmod.py").write_text(textwrap.dedent(text))


def by_reason(out):
    counts = {}
    for s in out["states"]:
        key = (s["recipe"], s["status"], s["reason"])
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
def test_edited_recipe_is_reported_and_handled_by_policy(tmp_path):
    write_code(tmp_path, MODULE)
    first = run_script(tmp_path, "warn")
    assert by_reason(first) == {
        ("root", "computed", "never stored"): 1,
        ("Step", "computed", "never stored"): 3,
        ("Other", "computed", "never stored"): 3,
    }
    assert first["warnings"] == []

    write_code(tmp_path, REFORMATTED)  # whitespace, comments, docstrings: no change
    again = run_script(tmp_path, "error")
    assert "error" not in again and again["warnings"] == []
    assert {s["status"] for s in again["states"]} == {"cached"}

    write_code(tmp_path, MODULE.replace("+ self.k", "+ 10 * self.k"))  # the body of Step changes
    warned = run_script(tmp_path, "warn")
    assert {s["status"] for s in warned["states"]} == {"cached"}  # reused...
    assert len(warned["warnings"]) == 1 and "Step (3 states)" in warned["warnings"][0]  # ...but never silently
    assert "Other" not in warned["warnings"][0]

    d = str(tmp_path / "exp")
    before = {sha: records_io.revs(d, sha) for sha in records_io.every_sha(d)}
    assert len(before) == 7
    stopped = run_script(tmp_path, "error")
    assert stopped["changed"] == {"Step": 3}
    assert "Step (3 states)" in stopped["error"]
    assert {sha: records_io.revs(d, sha) for sha in records_io.every_sha(d)} == before  # nothing was computed

    rerun = run_script(tmp_path, "rerun")
    assert by_reason(rerun) == {
        ("root", "cached", None): 1,
        ("Step", "computed", "recipe code changed"): 3,
        ("Other", "computed", "forced by policy"): 2,  # below a changed Step
        ("Other", "cached", None): 1,  # Other(m=3) hangs off the root: untouched
    }
    # The new commit records replaced the old ones: the 5 states computed again have a newer revision, the
    # others none (in meta/ files, the replaced files are gone at once; in segments, at compaction).
    after = {sha: records_io.revs(d, sha) for sha in records_io.every_sha(d)}
    assert set(after) == set(before)
    assert sum(after[sha][-1] > before[sha][-1] for sha in after) == 5
    assert sum(after[sha] == before[sha] for sha in after) == 2
    if os.path.isdir(tmp_path / "exp" / "meta"):  # the files layout: one file per state
        assert len(os.listdir(tmp_path / "exp" / "meta")) == 7

    exp = dg.Experiment.restore(str(tmp_path / "exp"))
    sys.path.insert(0, str(tmp_path / "code"))
    try:
        step1 = next(s for s in exp.graph.nodes if (s.recipe or {}).get("properties") == {"k": 1})
        assert step1.metadata["explain"].startswith("recipe code changed")
        assert step1.restore().x.tolist() == [12.0, 12.0, 12.0]  # (0 + 1) * 2 + 10 * 1: the new code ran
        leaf = step1.children[0]
        assert leaf.metadata["explain"].startswith("forced by policy")
        assert leaf.restore().x.tolist() == [11.0, 11.0, 11.0]  # recomputed from the new parent
    finally:
        sys.path.remove(str(tmp_path / "code"))
        sys.modules.pop("recmod", None)

    settled = run_script(tmp_path, "warn")  # the recorded source is now the current one
    assert settled["warnings"] == [] and {s["status"] for s in settled["states"]} == {"cached"}


# ---- why a state was computed --------------------------------------------------------------


class FState(dg.ExperimentState):
    PROPERTIES = ["name"]


BROKEN = {"on": True}


class Flaky(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        if BROKEN["on"]:
            raise ValueError("broken on purpose")
        state.k = self.k
        return state


class Versioned(dg.Recipe):
    PROPERTIES = ["k"]
    VERSION = 0

    def run(self, state):
        state.v = type(self).VERSION
        return state


def test_previous_failure_is_recorded_and_explained(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=FState)
    root = exp.spawn_new_tree(name="a")
    bad = Flaky(k=1)(root)
    BROKEN["on"] = True
    with pytest.raises(dg.RunFailedError):
        exp.run()
    record = json.loads(open(os.path.join(exp_dir, failure_key(bad.sha()))).read())
    assert record["error"] == "ValueError: broken on purpose"

    BROKEN["on"] = False
    try:
        report = exp.run()
    finally:
        BROKEN["on"] = True
    reasons = {s.sha: (s.status, s.reason) for s in report.states}
    assert reasons[bad.sha()] == ("computed", "previous attempt failed")
    assert reasons[root.sha()] == ("cached", None)
    meta = dg.Experiment.restore(exp_dir).graph.node(bad.sha()).metadata
    assert meta["explain"] == "previous attempt failed: ValueError: broken on purpose"
    assert not os.path.exists(os.path.join(exp_dir, failure_key(bad.sha())))  # removed on success


def test_never_stored_and_version_bump(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=FState)
    root = exp.spawn_new_tree(name="a")
    first = Versioned(k=1)(root)
    report = exp.run()
    assert {s.sha: s.reason for s in report.states} == {root.sha(): "never stored", first.sha(): "never stored"}
    assert dg.Experiment.restore(exp_dir).graph.node(root.sha()).metadata["explain"] == "never stored"
    source = dg.Experiment.restore(exp_dir).graph.node(first.sha()).metadata["recipe"]["source"]
    assert source == source_hash(Versioned)

    Versioned.VERSION = 1  # the explicit way to force recomputation: a new identity
    try:
        exp2 = dg.Experiment(exp_dir, state_class=FState)
        bumped = Versioned(k=1)(exp2.spawn_new_tree(name="a"))
        report = exp2.run()
    finally:
        Versioned.VERSION = 0
    assert bumped.sha() != first.sha()
    assert {s.sha: (s.status, s.reason) for s in report.states}[bumped.sha()] == ("computed", "never stored")


def test_unknown_policy_is_a_definition_error(exp_dir):
    with pytest.raises(dg.DefinitionError, match="on_code_change"):
        dg.Experiment(exp_dir, state_class=FState, on_code_change="sometimes")


DECORATED = """
import functools
import dagger as dg


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


class Base(dg.Recipe):
    def helper(self):
        return 1


class Fancy(Base):
    PROPERTIES = ["k"]

    @staticmethod
    def factor():
        return 2

    @property
    def offset(self):
        return 3

    @logged
    def run(self, state):
        state.v = self.factor() + self.offset + self.helper()
        return state
"""


@pytest.mark.parametrize("old, new", [("return 2", "return 4"), ("return 3", "return 5"), ("return 1", "return 0")])
def test_static_methods_properties_decorated_and_inherited_methods_count(tmp_path, old, new):
    a = load(tmp_path, DECORATED, "a")
    b = load(tmp_path, DECORATED.replace(old, new), "b")
    same = load(tmp_path, DECORATED.replace("    @property", "    # a comment\n    @property"), "c")
    assert source_hash(a.Fancy) != source_hash(b.Fancy)
    assert source_hash(a.Fancy) == source_hash(same.Fancy)


def test_recipes_without_source_fall_back_to_bytecode():
    def make(body):
        namespace = {"dg": dg}
        code = f"class NoSource(dg.Recipe):\n    def run(self, state):\n        {body}\n        return state\n"
        exec(compile(code, "<no file>", "exec"), namespace)
        return namespace["NoSource"]

    assert source_hash(make("state.v = 1")) == source_hash(make("state.v = 1"))
    assert source_hash(make("state.v = 1")) != source_hash(make("state.v = 2"))


SLOT_MODULE = """
import numpy as np
import dagger as dg


class S(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.x = np.zeros(3)


class Step(dg.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.x = state.x + self.k
        return state
"""

SLOT_RUN = """
import sys
sys.path.insert(0, sys.argv[1])
import dagger as dg
from slotmod import S, Step

exp = dg.Experiment(sys.argv[2], state_class=S)
child = Step(k=2)(exp.spawn_new_tree(name="a"))  # applying a recipe copies it: copyreg adds __slotnames__
exp.run()
print(child.sha())
"""

SLOT_REPRODUCE = """
import sys
sys.path.insert(0, sys.argv[1])
import dagger as dg

report = dg.Experiment.restore(sys.argv[2]).reproduce(sys.argv[3])  # rebuilt from metadata: never copied
print(report.ok, report.code_changed)
"""


def test_reproduce_in_a_fresh_process_does_not_report_a_code_change(tmp_path):
    """Python adds ``__slotnames__`` to a class once an instance is copied; that is not a code change."""
    (tmp_path / "slotmod.py").write_text(SLOT_MODULE)
    (tmp_path / "run.py").write_text(SLOT_RUN)
    (tmp_path / "again.py").write_text(SLOT_REPRODUCE)
    exp_dir = str(tmp_path / "exp")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    ran = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(tmp_path), exp_dir], capture_output=True, text=True, env=env
    )
    assert ran.returncode == 0, ran.stderr
    sha = ran.stdout.split()[-1]
    again = subprocess.run(
        [sys.executable, str(tmp_path / "again.py"), str(tmp_path), exp_dir, sha],
        capture_output=True,
        text=True,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == ["True", "False"]


def test_source_hash_ignores_slotnames_and_keeps_recorded_hashes():
    import copy

    class Fresh(dg.Recipe):
        PROPERTIES = ["k"]

        def run(self, state):
            return state

    before = source_hash(Fresh)
    assert "__slotnames__" not in vars(Fresh)
    copy.copy(Fresh(k=1))
    assert "__slotnames__" in vars(Fresh)  # what made the hash move
    assert source_hash(Fresh) == before
