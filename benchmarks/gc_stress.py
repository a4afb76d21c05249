"""gc beside running experiments, links out of the folder, stray pickles, corrupt blobs: issue 18's figures.

Runs the scenarios of ``tests/test_gc_safety.py`` and ``tests/reliability/test_rel_gc.py`` at
larger counts and prints one JSON line each::

    .venv/bin/python benchmarks/gc_stress.py                  # 20 trials per scheduler, 300 states each
    .venv/bin/python benchmarks/gc_stress.py --trials 50 --schedulers threads,processes

gc stress: one process runs 300 states (a 1.6 MB array each; a third of them find their blob
already on the store, uncommitted, and reuse it) with ``threads``, ``processes`` or a 2-worker
``dask.distributed.LocalCluster`` of worker processes (``cluster``), or ``threads`` on an S3
server (``s3``: moto, 60 states), while another process loops ``dg.Experiment(path).gc()``.
Each trial then verifies the folder and restores every state in a fresh process; a state
missing, damaged or restoring to the wrong values is lost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reliability"))
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("DAGGER_PROGRESS", "0")

import gc_stress  # noqa: E402


def _s3() -> tuple[Any, dict[str, Any], Any]:
    """A moto S3 server on localhost, its storage options, and a function making a fresh bucket URL."""
    import uuid

    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(key, value)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )

    def bucket() -> str:
        name = f"dagger-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        return f"s3://{name}/exp"

    return server, options, bucket


def stress(scheduler: str, trials: int, states: int) -> dict[str, Any]:
    results, times = [], []
    server = options = bucket = None
    if scheduler == "s3":
        server, options, bucket = _s3()
    try:
        for i in range(trials):
            base = tempfile.mkdtemp(prefix="dagger-gc-stress-")
            start = time.perf_counter()
            try:
                if scheduler == "s3":
                    result = gc_stress.trial(bucket(), "threads", states, storage_options=options)
                else:
                    result = gc_stress.trial(os.path.join(base, "exp"), scheduler, states)
            finally:
                shutil.rmtree(base, ignore_errors=True)
            times.append(time.perf_counter() - start)
            results.append(result)
            print(json.dumps({"scheduler": scheduler, "trial": i, **{k: v for k, v in result.items() if k != "problems"}}),
                  file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    row = {
        "scenario": f"gc looping beside a run ({scheduler})",
        "trials": trials,
        "states_expected": trials * states,
        "states_stored": sum(r["states"] for r in results),
        "states_lost": sum(r["lost"] for r in results),
        "gc_passes": sum(r["gc_passes"] for r in results),
        "gc_removed": sum(r["gc_removed"] for r in results),
        "trial_median_s": statistics.median(times),
        "problems": [p for r in results for p in r["problems"]][:5],
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--states", type=int, default=300)
    parser.add_argument("--schedulers", default="threads,processes,cluster,s3")
    args = parser.parse_args()
    rows = []
    for scheduler in args.schedulers.split(","):
        rows.append(stress(scheduler, args.trials, 60 if scheduler == "s3" else args.states))
    return 0 if all(r["states_lost"] == 0 and not r["problems"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
