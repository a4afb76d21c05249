"""gc beside a running experiment: shared by tests/reliability/test_rel_gc.py and benchmarks/gc_safety.py.

One process runs an experiment of ``n`` states (a 1.6 MB array each, so every state writes a
blob before its commit record); another loops ``dg.Experiment(path).gc()`` the whole time.
Afterwards every state must be committed with all its blobs (``verify``), restore to the
values its recipe implies (checked by restoring each in a fresh process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_SCRIPT = os.path.join(HERE, "gc_stress_run.py")

_GC_LOOP = """
import json, os, sys, time
import dagger as dg
path, stop = sys.argv[1], sys.argv[2]
raw = os.environ.get("DAGGER_STORAGE_OPTIONS")
options = {"storage_options": json.loads(raw)} if raw else {}
passes = removed = 0
while not os.path.exists(stop):
    try:
        report = dg.Experiment(path, **options).gc()
    except Exception as exc:  # an experiment.json not written yet, a file renamed meanwhile
        time.sleep(0.005)
        continue
    passes += 1
    removed += report.removed_count
print("GC", passes, removed, flush=True)
"""


def _env(storage_options: dict[str, Any] | None) -> dict[str, str]:
    env = dict(os.environ)
    if storage_options:
        env["DAGGER_STORAGE_OPTIONS"] = json.dumps(storage_options)
    src = os.environ.get("DAGGER_TEST_SRC") or os.path.join(os.path.dirname(os.path.dirname(HERE)), "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["DAGGER_PROGRESS"] = "0"
    return env


def trial(
    directory: str, scheduler: str, n: int, timeout: float = 600, storage_options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``n`` states with ``scheduler`` while gc loops in another process; audit the folder.

    ``directory`` may be a local path or an fsspec URL (``s3://...``, with ``storage_options``).
    Returns ``{"states": committed, "lost": states missing or damaged, "gc_passes", "gc_removed", "problems"}``.
    """
    import dagger as dg

    stop = os.path.join(tempfile.gettempdir(), f"dagger-gc-stress-stop-{os.getpid()}-{time.time_ns()}")
    env = _env(storage_options)
    env["DAGGER_GC_STRESS_PLANT"] = "1"
    looper = subprocess.Popen(
        [sys.executable, "-c", _GC_LOOP, directory, stop], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        run = subprocess.run(
            [sys.executable, RUN_SCRIPT, directory, scheduler, str(n)],
            env=env, capture_output=True, text=True, timeout=timeout,
        )
    finally:
        open(stop, "w").close()
        out, _ = looper.communicate(timeout=120)
        os.remove(stop)
    passes, removed = (int(x) for x in out.split()[1:3]) if out.startswith("GC") else (0, 0)
    problems: list[str] = []
    if "RUN-DONE" not in run.stdout:
        problems.append(f"the run failed: {run.stderr[-2000:]}")
    exp = dg.Experiment(directory, storage_options=storage_options or {})
    report = exp.verify()
    damaged = {p.state for p in report.problems if p.state}
    problems.extend(str(p) for p in report.problems)
    checked = subprocess.run(
        [sys.executable, RUN_SCRIPT, directory, "check", str(n)], env=env, capture_output=True, text=True, timeout=timeout
    )
    line = next((x for x in checked.stdout.splitlines() if x.startswith("CHECKED")), None)
    if line is None:
        problems.append(f"the check failed: {checked.stderr[-2000:]}")
        return {"states": 0, "lost": n, "gc_passes": passes, "gc_removed": removed, "problems": problems}
    fields = line.split()
    stored = int(fields[1])
    damaged.update(fields[2:])
    problems.extend(x for x in checked.stdout.splitlines() if x.startswith("DAMAGED"))
    lost = len(damaged) + max(0, n - stored)
    return {"states": stored, "lost": lost, "gc_passes": passes, "gc_removed": removed, "problems": problems}
