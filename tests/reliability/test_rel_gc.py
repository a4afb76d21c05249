"""gc looping beside a running experiment loses no state (issue 18, item 1).

One process runs 150 states (a 1.6 MB array each: a blob written before each commit record,
a third of them blobs already on the store, uncommitted, that the run reuses); another loops
``dg.Experiment(path).gc()`` the whole time. Each trial then verifies the folder and restores
every state in a fresh process. ``$DAGGER_GC_STRESS_TRIALS`` sets the trials per scheduler
(default 2); ``benchmarks/gc_safety.py`` runs 20 and more for docs/reliability.md.
"""

from __future__ import annotations

import os

import gc_stress
import pytest

TRIALS = int(os.environ.get("DAGGER_GC_STRESS_TRIALS", "2"))
STATES = int(os.environ.get("DAGGER_GC_STRESS_STATES", "150"))

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("scheduler", ["threads", "processes", "cluster"])
def test_gc_in_a_loop_loses_no_state(tmp_path, scheduler):
    if scheduler == "cluster":
        pytest.importorskip("distributed")
    for i in range(TRIALS):
        result = gc_stress.trial(str(tmp_path / f"exp{i}"), scheduler, STATES)
        assert result["states"] == STATES and result["lost"] == 0, result["problems"][:5]
        assert result["gc_passes"] > 0
        assert result["gc_removed"] > 0  # gc did delete meanwhile: the planted garbage, never a state's blob


def test_gc_in_a_loop_loses_no_state_on_an_object_store(s3_location):
    url, options = s3_location
    result = gc_stress.trial(url, "threads", 60, storage_options=options)
    assert result["states"] == 60 and result["lost"] == 0, result["problems"][:5]
    assert result["gc_passes"] > 0
