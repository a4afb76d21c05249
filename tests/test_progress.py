"""The progress display: counts on every local scheduler, quiet unless wanted, log-safe."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import textwrap

import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

import dagger as dg
from dagger.progress import Progress

HERE = os.path.dirname(os.path.abspath(__file__))
LINE = re.compile(
    r"dagger: (\d+)/(\d+) done \| (\d+) computed \| (\d+) cached \| (\d+) running \| (\d+) failed"
    r"(?: \| (\d+) skipped)? \| \d\d:\d\d elapsed"
)


class Broken(dg.Recipe):
    PROPERTIES = ["why"]

    def run(self, state):
        raise RuntimeError(self.why)


class Lines(io.StringIO):
    """A log-like stream that remembers each write."""

    def __init__(self):
        super().__init__()
        self.writes = []

    def write(self, text):
        self.writes.append(text)
        return super().write(text)


def define(exp, broken=False):
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    for lr in (0.1, 0.2):
        with exp.tag(f"lr:{lr}"):
            s = TrainRecipe(nb_epochs=2, lr=lr)(root)
            eval_fn(s)
            PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.5)(s)
    if broken:
        bad = Broken(why="no")(root)
        TrainRecipe(nb_epochs=1, lr=0.3)(bad)
    return root


def counts(line):
    m = LINE.fullmatch(line)
    assert m, line
    done, total, computed, cached, running, failed, skipped = (int(g or 0) for g in m.groups())
    return {
        "done": done,
        "total": total,
        "computed": computed,
        "cached": cached,
        "running": running,
        "failed": failed,
        "skipped": skipped,
    }


@pytest.mark.parametrize("scheduler", ["single-threaded", "threads", "processes"])
def test_counts_on_every_local_scheduler(exp_dir, scheduler):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp, broken=True)
    stream = Lines()
    report = exp.run(scheduler=scheduler, progress=stream, raise_on_failure=False)

    # not a terminal: whole lines only, never a carriage return that would garble a log
    assert all(w.endswith("\n") for w in stream.writes)
    assert "\r" not in stream.getvalue() and "\x1b" not in stream.getvalue()
    lines = stream.getvalue().splitlines()
    assert counts(lines[0])["running"] >= 1 and counts(lines[0])["done"] == 0  # drawn when the first state starts
    final = counts(lines[-1])
    assert final == {
        "done": 7,
        "total": 7,
        "computed": len(report.computed),
        "cached": 0,
        "running": 0,
        "failed": 1,
        "skipped": 1,
    }
    assert final["computed"] == 5


def test_single_threaded_progress_counts_one_state_at_a_time(exp_dir, monkeypatch):
    # Each state starts and ends on its own: a batch of ready states handed to Dask at once would
    # show as several "running" on a single thread.
    seen = []
    started = Progress.started

    def watch(self):
        started(self)
        seen.append(self.running)

    monkeypatch.setattr(Progress, "started", watch)
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    exp.run(progress=Lines())
    assert len(seen) == 5 and max(seen) == 1  # root, then two branches of two states each


def test_cached_states_count_as_cached(exp_dir):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    exp.run(progress=False)
    exp = dg.Experiment(exp_dir, state_class=State)
    root = define(exp)
    TrainRecipe(nb_epochs=9, lr=0.5)(root)
    stream = io.StringIO()
    exp.run(progress=stream)
    final = counts(stream.getvalue().splitlines()[-1])
    assert final["total"] == final["done"] == 6
    assert final["computed"] == 1 and final["cached"] == 5 and final["failed"] == 0


def test_quiet_when_not_a_terminal_or_turned_off(exp_dir, capfd):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    exp.run()  # auto: pytest's captured stderr is not a terminal
    exp2 = dg.Experiment(exp_dir + "2", state_class=State)
    define(exp2)
    exp2.run(progress=False)
    err = capfd.readouterr().err
    assert "dagger:" not in err


def test_forced_on_stderr(exp_dir, capsys):
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    exp.run(progress=True)
    err = capsys.readouterr().err
    assert counts(err.splitlines()[-1])["done"] == 5


def _read_all(fd):
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            break
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and drained
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


def test_terminal_stream_redraws_one_line_in_place(exp_dir):
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as term:
            assert term.isatty()
            exp = dg.Experiment(exp_dir, state_class=State)
            define(exp)
            exp.run(scheduler="threads", progress=term)
        out = _read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    assert out.count("\n") == 1 and out.endswith("\n")  # one line, redrawn, ended once
    frames = [f for f in out.replace("\r\n", "\n").split("\r\x1b[2K") if f]
    assert len(frames) >= 2
    assert counts(frames[0].strip())["running"] == 1
    assert counts(frames[-1].strip()) == {
        "done": 5,
        "total": 5,
        "computed": 5,
        "cached": 0,
        "running": 0,
        "failed": 0,
        "skipped": 0,
    }


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {here!r})
    import dagger as dg
    from test_progress import define
    from paperdefs import State
    exp = dg.Experiment({folder!r}, state_class=State)
    define(exp)
    exp.run({args})
    print("ran", flush=True)
    """
)


def _run_on_pty(folder, args="", env=None):
    """Run an experiment in a subprocess whose stderr is a pseudo-terminal; return what it drew."""
    master, slave = pty.openpty()
    code = SCRIPT.format(here=HERE, folder=folder, args=args)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=slave, env={**os.environ, **(env or {})}
    )
    os.close(slave)
    try:
        out, _ = proc.communicate(timeout=120)
        drawn = _read_all(master)
    finally:
        os.close(master)
    assert proc.returncode == 0 and out.decode().splitlines()[-1] == "ran"
    return drawn


@pytest.mark.slow
def test_auto_mode_on_a_terminal(tmp_path):
    drawn = _run_on_pty(str(tmp_path / "auto"))
    assert "\r\x1b[2K" in drawn
    assert counts(drawn.split("\r\x1b[2K")[-1].strip())["done"] == 5
    assert _run_on_pty(str(tmp_path / "off"), "progress=False") == ""
    assert _run_on_pty(str(tmp_path / "env"), env={"DAGGER_PROGRESS": "0"}) == ""


def test_wanted():
    assert Progress.wanted(True) and not Progress.wanted(False)
    assert Progress.wanted(io.StringIO())
    assert Progress.wanted(None) == bool(sys.stderr.isatty())


def test_a_broken_stream_never_fails_the_run(exp_dir):
    stream = io.StringIO()
    stream.close()
    exp = dg.Experiment(exp_dir, state_class=State)
    define(exp)
    report = exp.run(progress=stream)
    assert len(report.computed) == 5


def test_environment_can_turn_auto_mode_off(monkeypatch):
    monkeypatch.setenv("DAGGER_PROGRESS", "off")
    assert not Progress.wanted(None)
    assert Progress.wanted(True)  # an explicit request still wins
