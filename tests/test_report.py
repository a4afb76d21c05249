"""RunReport: per-state facts of a run, a readable table, and the same facts kept in metadata."""

from __future__ import annotations

import os
import socket

import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

import dagger as dg
from dagger.errors import RunFailedError


class Explode(dg.Recipe):
    PROPERTIES = ["message"]

    def run(self, state):
        raise KeyError(self.message)


@dg.Function
def fragile(state):
    raise ZeroDivisionError("fragile function")


def define(exp):
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    leaves = []
    for lr in (0.1, 0.2):
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=3, lr=lr)(root)
            eval_fn(s)
            leaves.append(PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(s))
    return root, leaves


def test_computed_states_have_times_and_workers(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root, leaves = define(exp)
    report = exp.run()
    assert isinstance(report, dg.RunReport) and exp.last_report is report
    assert {s.sha for s in report.states} == {root.sha(), *(p.sha() for p in exp._promises.values())}
    assert len(report.computed) == 5 and not report.cached and not report.failures
    here = f"{socket.gethostname()}:{os.getpid()}"
    for s in report.computed:
        assert report.start <= s.start <= s.end <= report.end
        assert s.duration == pytest.approx(s.end - s.start)
        assert s.worker == here  # single-threaded: this process, main thread
        assert s.error is None and s.traceback is None
    by_sha = {s.sha: s for s in report.states}
    assert by_sha[leaves[0].sha()].recipe == "PruneRecipe" and by_sha[leaves[0].sha()].tags == ["lr:0.1"]
    assert by_sha[root.sha()].recipe == "root"


def test_facts_are_stored_in_metadata(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    report = exp.run(scheduler="processes")
    restored = dg.Experiment.restore(exp_dir, slim=True)
    for s in report.computed:
        run = restored.graph.node(s.sha).metadata["run"]
        assert run == {"start": s.start, "end": s.end, "duration": s.duration, "worker": s.worker}
        assert s.worker.rsplit(":", 1)[-1] != str(os.getpid())  # computed in a worker process

    # how long each state took, from the slim graph alone
    stored = dg.RunReport.from_metadata(restored.graph.nodes)
    assert {r.sha: r.duration for r in stored.states} == {s.sha: s.duration for s in report.computed}
    assert {r.sha: r.worker for r in stored.states} == {s.sha: s.worker for s in report.computed}
    assert [r.start for r in stored.states] == sorted(r.start for r in stored.states)
    rows = {row["sha"]: row for row in restored.graph.nodes.to_records()}
    assert {sha: row["duration_s"] for sha, row in rows.items()} == {s.sha: s.duration for s in report.computed}


def test_cached_run_reports_the_stored_run(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    first = {s.sha: s for s in exp.run().computed}
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    again = exp.run(scheduler="threads")
    assert len(again.cached) == 5 and not again.computed
    for s in again.cached:
        assert s.stored_run == {
            "start": first[s.sha].start,
            "end": first[s.sha].end,
            "duration": first[s.sha].duration,
            "worker": first[s.sha].worker,
        }
    text = str(again)
    assert text.count("cached") >= 6 and "5 states, 0 computed, 5 cached" in text
    assert "(0." in text  # stored durations shown in parentheses


def test_failures_carry_tracebacks_and_print(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    root, leaves = define(exp)
    with exp.tag("bad"):
        bad = Explode(message="no such key")(root)
        below = TrainRecipe(nb_epochs=1, lr=0.5)(bad)
    fragile(leaves[1])
    with pytest.raises(RunFailedError) as err:
        exp.run(scheduler="threads")
    report = err.value.report
    failed = {s.sha: s for s in report.failures}
    assert set(failed) == {bad.sha(), leaves[1].sha()}
    assert failed[bad.sha()].status == "failed" and "KeyError: 'no such key'" in failed[bad.sha()].error
    assert "raise KeyError(self.message)" in failed[bad.sha()].traceback
    assert failed[bad.sha()].worker.startswith(f"{socket.gethostname()}:{os.getpid()}/")
    assert failed[leaves[1].sha()].status == "computed"
    assert "ZeroDivisionError" in failed[leaves[1].sha()].function_errors["fragile"]
    assert [s.sha for s in report.skipped] == [below.sha()] and report.skipped[0].cause == bad.sha()

    table = report.table(tracebacks=True)
    lines = table.splitlines()
    assert lines[0].split() == ["state", "recipe", "status", "started", "time", "worker", "tags"]
    row = next(line for line in lines if line.startswith(bad.sha()[:12]))
    assert "Explode" in row and "failed" in row and "bad" in row and "KeyError" in row
    skipped_row = next(line for line in lines if line.startswith(below.sha()[:12]))
    assert "skipped" in skipped_row and bad.sha()[:12] in skipped_row
    assert "computed*" in table
    assert "raise KeyError(self.message)" in table and "ZeroDivisionError" in table
    assert "raise KeyError" not in str(report)  # the plain table stays one row per state
    assert "1 failed, 1 skipped" in str(report)
    assert "Explode" in str(err.value) and "fragile" in str(err.value)


def test_report_as_records(exp_dir):
    pd = pytest.importorskip("pandas")
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    frame = pd.DataFrame(exp.run().to_records())
    assert len(frame) == 5 and set(frame["status"]) == {"computed"}
    assert {"sha", "recipe", "duration", "start", "end", "worker", "traceback"} <= set(frame.columns)
