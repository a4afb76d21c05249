"""Damaged, edited and hostile records (issue 18, items 4, 5, 7, 8 and the signing key): figures.

Each scenario builds a small real experiment (the paper's definitions from
``tests/paperdefs.py``), damages it as a clumsy or hostile user would, and runs
the real ``dagger`` command (fresh processes) or ``restore()`` against it.
Prints one JSON line per scenario. ``--src DIR`` times another copy of dagger
for the commands (``/work/main/src`` for a before/after comparison).

    python benchmarks/integrity.py
    python benchmarks/integrity.py --src ../main/src --only cycles
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.join(HERE, "..", "tests")
sys.path.insert(0, TESTS)

COMMANDS = ["show", "ls", "inspect", "diff", "results", "verify", "gc"]


def dagger(src: str, args: list[str], limit: float = 20.0) -> tuple[str, float, str]:
    """Run one dagger command; (outcome, seconds, last stderr line). Outcome: exit code, or 'hang'."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, TESTS])}
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dagger.cli", *args], env=env, capture_output=True, text=True, timeout=limit
        )
    except subprocess.TimeoutExpired:
        return f"hang>{limit:.0f}s", limit, ""
    tail = (done.stderr.strip().splitlines() or [""])[-1]
    return str(done.returncode), round(time.perf_counter() - start, 2), tail[:160]


def tree(directory: str, **options):
    from paperdefs import PruneRecipe, State, TrainRecipe, eval_fn

    import dagger as dg

    exp = dg.Experiment(directory, state_class=State, **options)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    a = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    b = TrainRecipe(nb_epochs=1, lr=0.2)(root)
    c = PruneRecipe(pruning_technique="random", pruning_fraction=0.2)(a)
    d = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(c)
    eval_fn(d)
    exp.run(progress=False)
    return {"root": root.sha(), "a": a.sha(), "b": b.sha(), "c": c.sha(), "d": d.sha()}


def edit(directory: str, sha: str, **fields) -> None:
    names = sorted(n for n in os.listdir(os.path.join(directory, "meta")) if n.startswith(sha))
    path = os.path.join(directory, "meta", names[-1])
    record = json.load(open(path))
    record.update(fields)
    json.dump(record, open(path, "w"))
    if os.path.exists(os.path.join(directory, "index.json")):
        os.remove(os.path.join(directory, "index.json"))


def args_for(cmd: str, directory: str, sha: dict[str, str]) -> list[str]:
    return {
        "inspect": ["inspect", directory, sha["d"][:10]],
        "diff": ["diff", directory, sha["d"][:10], sha["b"][:10]],
        "gc": ["gc", directory, "--dry-run"],
    }.get(cmd, [cmd, directory])


def cycles(src: str, work: str) -> None:
    for case in ("child", "itself", "dangling"):
        directory = os.path.join(work, f"cycle-{case}")
        sha = tree(directory)
        edit(directory, sha["a"], parent={"child": sha["c"], "itself": sha["a"], "dangling": "f" * 64}[case])
        out = {"scenario": f"parent of A is {case}"}
        for cmd in COMMANDS:
            code, took, _ = dagger(src, args_for(cmd, directory, sha))
            out[cmd] = f"{code} ({took} s)"
        show = subprocess.run(
            [sys.executable, "-m", "dagger.cli", "show", directory],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": src},
            timeout=30,
        )
        out["show_lists"] = f"{sum(s[:10] in show.stdout for s in sha.values())}/5 states"
        print(json.dumps(out), flush=True)


def wrong_types(src: str, work: str) -> None:
    from test_integrity_types import BAD_FIELDS

    base = os.path.join(work, "types-base")
    sha = tree(base)
    fine = total = 0
    slowest = 0.0
    failures = []
    for field, value in BAD_FIELDS:
        directory = os.path.join(work, "types")
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(base, directory)
        edit(directory, sha["c"], **{field: value})
        for cmd in COMMANDS:
            args = args_for(cmd, directory, {**sha, "d": sha["a"]})
            code, took, tail = dagger(src, args)
            total += 1
            slowest = max(slowest, took)
            ok = code in ("0", "1") and "TypeError" not in tail and "DAGGER_DEBUG" not in tail
            if cmd == "verify":
                ok = code == "1"  # it must report the damaged record
            fine += ok
            if not ok:
                failures.append(f"{field}={value!r} {cmd}: {code} {tail}")
    print(
        json.dumps(
            {
                "scenario": "wrong types in a record",
                "fields": len(BAD_FIELDS),
                "commands": total,
                "working": fine,
                "slowest_s": slowest,
                "failures": failures[:3],
            }
        ),
        flush=True,
    )


_RACER = textwrap.dedent(
    """
    import sys, time
    import dagger as dg
    class {cls}(dg.ExperimentState):
        PROPERTIES = ["name"]
    class Step(dg.Recipe):
        PROPERTIES = ["seed"]
        def run(self, state):
            return state
    directory, start = sys.argv[1], float(sys.argv[2])
    try:
        exp = dg.Experiment(directory, state_class={cls})  # (a racer slow to start is refused here)
        while time.time() < start:
            pass
        Step(seed=1)(exp.spawn_new_tree(name="x"))
        exp.run(progress=False)
    except dg.errors.StateClassMismatchError:
        sys.exit(3)
    """
)


def race(src: str, work: str, trials: int) -> None:
    env = {**os.environ, "PYTHONPATH": src}
    scripts = []
    for cls in ("Alpha", "Beta"):
        path = os.path.join(work, f"racer_{cls}.py")
        with open(path, "w") as f:
            f.write(_RACER.format(cls=cls))
        scripts.append(path)
    clean = two_roots = 0
    for trial in range(trials):
        directory = os.path.join(work, f"race-{trial}")
        start = time.time() + 1.5
        procs = [
            subprocess.Popen([sys.executable, s, directory, repr(start)], env=env, stderr=subprocess.DEVNULL)
            for s in scripts
        ]
        codes = sorted(p.wait(timeout=120) for p in procs)
        roots = {
            json.load(open(os.path.join(directory, "meta", n))).get("state_class")
            for n in os.listdir(os.path.join(directory, "meta"))
        }
        clean += codes == [0, 3] and len(roots) == 1
        two_roots += len(roots) > 1
    print(
        json.dumps(
            {
                "scenario": "two state classes racing on an empty folder",
                "trials": trials,
                "one winner, one StateClassMismatchError": clean,
                "trials leaving two roots": two_roots,
            }
        ),
        flush=True,
    )


def binding(src: str, work: str) -> None:
    from damage import edit_carried_pickle, pickle_bytes
    from test_integrity_signing import Trap, plant

    import dagger as dg

    directory = os.path.join(work, "binding")
    sha = tree(directory)
    copied = pickle_bytes(directory, sha["root"])
    edit_carried_pickle(directory, sha["a"], lambda _: copied)
    edit(directory, sha["a"], pickle_bytes=len(copied))
    try:
        dg.Experiment.restore(directory).graph.node(sha["a"]).restore()
        outcome = "restored the root's data as A"
    except dg.errors.CorruptRecordError as exc:
        outcome = type(exc).__name__
    verify = dg.Experiment(directory).verify()
    print(
        json.dumps(
            {
                "scenario": "root's pickle copied into A's record",
                "restore(A)": outcome,
                "verify problems": len(verify.problems),
            }
        ),
        flush=True,
    )

    key = "benchmark-key-0123456789"
    directory = os.path.join(work, "signed")
    sha = tree(directory, signing_key=key)
    marker = os.path.join(work, "PWNED")
    planted = refused = 0
    for forgery in ("unsigned", "other key", "legacy header"):
        payload = pickle.dumps(Trap(marker), protocol=5)
        from dagger.store import signing

        header = {"sha": sha["a"]}
        if forgery == "other key":
            header["hmac"] = signing.signature(b"x" * 32, sha["a"], "[]", payload)
        if forgery == "legacy header":
            header = {}
        plant(directory, sha["a"], payload, header)
        planted += 1
        try:
            dg.Experiment.restore(directory, signing_key=key).graph.node(sha["a"]).restore()
        except dg.errors.UntrustedPickleError:
            refused += 1
    # Cost of signing: save and restore 200 states' pickles with and without a key.
    from paperdefs import State

    from dagger.store import LocalStore
    from dagger.store.records import Records

    timings = {}
    for name, k in (("warm-up", None), ("unsigned", None), ("signed", key), ("unsigned", None), ("signed", key)):
        records = Records(LocalStore(tempfile.mkdtemp(dir=work)), signing_key=k)
        state = State.__new__(State)
        state.__dict__.update({"weights": list(range(2000)), "name": "x"})
        t = time.perf_counter()
        for i in range(200):
            records.save_pickle(f"{i:064x}", state)
        records.forget_recent()
        for i in range(200):
            records.load_pickle(f"{i:064x}")
        timings[name] = round((time.perf_counter() - t) / 200 * 1e3, 3)
    print(
        json.dumps(
            {
                "scenario": "planted pickle, checksum rewritten, signing key set",
                "planted": planted,
                "refused before unpickling": refused,
                "marker files created": int(os.path.exists(marker)),
                "save+load ms per state (unsigned, signed)": [timings["unsigned"], timings["signed"]],
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=os.path.join(HERE, "..", "src"))
    parser.add_argument("--only", choices=["cycles", "types", "race", "binding"], nargs="*")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    src = os.path.abspath(args.src)
    only = set(args.only or ["cycles", "types", "race", "binding"])
    work = tempfile.mkdtemp(prefix="integrity-")
    try:
        if "cycles" in only:
            cycles(src, work)
        if "types" in only:
            wrong_types(src, work)
        if "race" in only:
            race(src, work, args.trials)
        if "binding" in only:
            binding(src, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
