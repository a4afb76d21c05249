"""Paths the CLI and the library are given: read-only folders, files, bytes, and CSV output.

Issue 18 item 14.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from typer.testing import CliRunner

import dagger as dg
from dagger import cli


class State(dg.ExperimentState):
    PROPERTIES = ["name"]

    def initialize_state(self, **kwargs):
        self.weights = np.arange(20_000, dtype=np.float64)  # a blob


class Note(dg.Recipe):
    PROPERTIES = ["lr", "note"]

    def run(self, state):
        state.weights = state.weights * self.lr
        return state


@dg.Function
def evaluate(state):
    return {"acc": -0.5, "label": '=HYPERLINK("http://evil.example","x")', "neg": "-3", "sum": "-2+3"}


def build(directory):
    exp = dg.Experiment(directory, state_class=State)
    root = exp.spawn_new_tree(name="@SUM(1+1)")
    with exp.tag("=cmd|' /C calc'!A0"):
        evaluate(Note(lr=-0.1, note="+1+1")(root))
    exp.run()
    return exp


def invoke(*args):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


# ---- read-only folders ---------------------------------------------------------------------


def snapshot(folder):
    out = {}
    for here, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(here, name)
            st = os.lstat(path)
            out[os.path.relpath(path, folder)] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns)
    return out


def run_without_write_access(args):
    """Run the dagger CLI in a real process that cannot write the (chmod a-w) folder.

    root ignores file modes, so as root the process runs without the capabilities that let it.
    """
    command = [sys.executable, "-m", "dagger.cli", *args]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: cannot take write access away")
        command = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_gc_dry_run_on_a_read_only_folder_writes_nothing(tmp_path):
    folder = str(tmp_path / "exp")
    build(folder)
    junk = os.path.join(folder, "tmp", "leftover")
    with open(junk, "wb") as f:
        f.write(b"half a write")
    old = time.time() - 7200
    os.utime(junk, (old, old))  # a write killed two hours ago: gc would remove it
    for here, dirs, files in os.walk(folder):
        for name in dirs + files + ["."]:
            path = os.path.join(here, name)
            os.chmod(path, os.stat(path).st_mode & ~0o222)
    before = snapshot(folder)
    try:
        probe = run_without_write_access(["--help"])
        assert probe.returncode == 0, probe.stderr
        done = run_without_write_access(["gc", folder, "--dry-run"])
        assert done.returncode == 0, done.stdout + done.stderr
        assert "dry run" in done.stdout and "temporary files" in done.stdout
        assert snapshot(folder) == before
        shown = run_without_write_access(["show", folder])
        assert shown.returncode == 0, shown.stderr
        assert snapshot(folder) == before
    finally:
        for here, dirs, files in os.walk(folder):
            for name in dirs + files + ["."]:
                path = os.path.join(here, name)
                os.chmod(path, os.stat(path).st_mode | 0o200)


# ---- files and bytes given as folders --------------------------------------------------------


def test_a_file_given_as_the_folder_is_one_clear_error(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("not a folder")
    for path in (afile, afile / "exp"):
        with pytest.raises(dg.DaggerError) as info:
            dg.Experiment(str(path), state_class=State)
        text = str(info.value)
        assert "\n" not in text and "is a file" in text and str(afile) in text
        with pytest.raises(dg.DaggerError, match="is a file"):
            dg.Experiment.restore(str(path))
    assert afile.read_text() == "not a folder"
    done = subprocess.run(
        [sys.executable, "-m", "dagger.cli", "show", str(afile)], capture_output=True, text=True, env=os.environ
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "is a file" in done.stderr and "Traceback" not in done.stderr


def test_bytes_paths_work_and_other_types_are_refused(tmp_path):
    folder = os.fsencode(str(tmp_path / "exp"))
    exp = build(folder)
    assert exp.directory == str(tmp_path / "exp")
    again = dg.Experiment.restore(folder)
    assert len(again.graph) == 2
    with pytest.raises(dg.DaggerError, match=r"a path \(str, bytes or pathlib.Path\)"):
        dg.Experiment(42, state_class=State)


# ---- CSV output -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("csv") / "exp")
    build(folder)
    return folder


def read_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def test_csv_cells_never_start_a_formula(stored):
    done = invoke("results", stored, "--csv", "-")
    assert done.exit_code == 0, done.output
    rows = read_csv(done.stdout)
    child = next(r for r in rows if r["recipe"] == "Note")
    assert child["tags"] == "'=cmd|' /C calc'!A0"
    assert child["name"] == "'@SUM(1+1)"
    assert child["Note.note"] == "'+1+1"
    assert child["label"] == '\'=HYPERLINK("http://evil.example","x")'
    assert child["sum"] == "'-2+3"
    # plain numbers stay numbers
    assert child["Note.lr"] == "-0.1" and child["acc"] == "-0.5" and child["neg"] == "-3"
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "@")), value
            assert not value.startswith("-") or float(value) < 0


def test_csv_refuses_to_write_inside_the_experiment_folder(stored, tmp_path):
    index = os.path.join(stored, "index.json")
    with open(index, "rb") as f:
        before = f.read()
    link = tmp_path / "link"
    link.symlink_to(stored)
    for target in (index, os.path.join(stored, "meta", "x.csv"), stored, str(link / "experiment.json")):
        done = invoke("results", stored, "--csv", target)
        assert done.exit_code == 2, done.output
        assert "inside the experiment folder" in done.output
    with open(index, "rb") as f:
        assert f.read() == before
    assert not os.path.exists(os.path.join(stored, "meta", "x.csv"))
    out = tmp_path / "results.csv"
    assert invoke("results", stored, "--csv", out).exit_code == 0
    assert len(read_csv(out.read_text())) == 2
