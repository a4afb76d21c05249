"""Shared fixtures: experiment folders and the paper's example definitions."""

from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)


@pytest.fixture
def exp_dir(tmp_path):
    """A fresh, empty experiment folder."""
    return str(tmp_path / "exp")

pytest_plugins = ["s3server"]
