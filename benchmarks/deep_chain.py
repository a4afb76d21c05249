"""Read paths on long chains: seconds per command at 400, 1,500 and 10,000 states deep.

Builds each chain cheaply (commit records written directly, as ``tests/chaindefs.py``
does: browsing reads metadata only), then times, in fresh processes, every
``dagger`` command that reads a whole lineage or the whole tree, and in this
process the Python read paths. Prints one JSON line per depth. With
``--src DIR`` it times another copy of dagger (``/work/main/src`` for a
before/after comparison); ``--limit S`` stops a command after S seconds
(reported as ``">S"``).

    python benchmarks/deep_chain.py                       # 400, 1500, 10000
    python benchmarks/deep_chain.py --depths 400 1500 --src ../main/src --limit 120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

_PY_PATHS = """
import json, sys, time
import dagger as dg
directory, leaf = sys.argv[1], sys.argv[2]
out = {}
t = time.perf_counter(); graph = dg.Experiment.restore(directory).graph; out["open"] = time.perf_counter() - t
t = time.perf_counter(); n = len(graph.node(leaf).lineage()); out["lineage"] = time.perf_counter() - t
t = time.perf_counter()
try:
    graph.to_text(); out["to_text"] = time.perf_counter() - t
except RecursionError:
    out["to_text"] = "RecursionError"
t = time.perf_counter(); graph.nodes.to_records(); out["to_records"] = time.perf_counter() - t
print(json.dumps(out))
"""


def timed(cmd: list[str], env: dict[str, str], limit: float) -> float | str:
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=limit, text=True)
    except subprocess.TimeoutExpired:
        return f">{limit:.0f}"
    took = time.perf_counter() - start
    if done.returncode not in (0, 1):
        return f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return round(took, 2)


def main() -> None:
    from chaindefs import chain_sha, make_chain

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[400, 1500, 10_000])
    parser.add_argument("--src", default=os.path.join(HERE, "..", "src"), help="the dagger source folder to time")
    parser.add_argument("--limit", type=float, default=300.0, help="seconds before a command is stopped")
    args = parser.parse_args()
    src = os.path.abspath(args.src)
    env = {**os.environ, "PYTHONPATH": src}
    for n in args.depths:
        directory = tempfile.mkdtemp(prefix="deep-chain-")
        try:
            make_chain(os.path.join(directory, "exp"), n)
            exp = os.path.join(directory, "exp")
            leaf, middle = chain_sha(n - 1), chain_sha(n // 2)
            figures: dict[str, object] = {"depth": n, "src": src}
            run_py = subprocess.run(
                [sys.executable, "-c", _PY_PATHS, exp, leaf],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.limit,
            )
            if run_py.returncode == 0:
                figures.update(
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in json.loads(run_py.stdout).items()}
                )
            else:
                figures["python"] = run_py.stderr.strip().splitlines()[-1:]
            dagger = [sys.executable, "-m", "dagger.cli"]
            for name, extra in (
                ("show", ["show", exp]),
                ("results", ["results", exp]),
                ("results_csv", ["results", exp, "--csv", "-"]),
                ("ls", ["ls", exp]),
                ("inspect_leaf", ["inspect", exp, leaf[:10]]),
                ("diff_leaf_middle", ["diff", exp, leaf[:10], middle[:10]]),
            ):
                figures[name] = timed(dagger + extra, env, args.limit)
            print(json.dumps(figures), flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
