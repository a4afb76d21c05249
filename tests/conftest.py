"""Shared fixtures: experiment folders and the paper's example definitions."""

from __future__ import annotations

import os
import signal
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)

# A test run started in the background (`make test &`, some CI runners) inherits SIGINT as ignored,
# and so would every process the tests start: the Ctrl-C tests' interrupts would never arrive.
# A handler (unlike "ignored") is not inherited across exec, so children get Python's own Ctrl-C.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def exp_dir(tmp_path):
    """A fresh, empty experiment folder."""
    return str(tmp_path / "exp")


@pytest.fixture(params=["files", "segments"])
def layout(request, monkeypatch):
    """Run the test once with commit records in ``meta/`` files (``DAGGER_SEGMENTS=0``) and once in segments.

    The variable reaches every process the test starts (forked, spawned or run as a script).
    """
    monkeypatch.setenv("DAGGER_SEGMENTS", "0" if request.param == "files" else "1")
    return request.param


@pytest.fixture
def files_layout(monkeypatch):
    """For tests of the ``meta/`` file layout itself (layout 2, as older experiments have it):
    commit records go to ``meta/`` files in this test and every process it starts."""
    monkeypatch.setenv("DAGGER_SEGMENTS", "0")


pytest_plugins = ["s3server"]
