"""Reliability figures: the fault scenarios of tests/reliability/ at larger counts.

Runs each scenario many times on real folders in real processes, prints one
JSON line per scenario, and writes the table to ``docs/reliability.md``::

    .venv/bin/python benchmarks/reliability.py            # 50 SIGKILL trials and the rest
    .venv/bin/python benchmarks/reliability.py --trials 100

For every scenario: trials run, states finished after recovery, states lost
(committed before the fault but gone or recomputed after it; must be 0),
corrupt records found by a full audit (every committed state restored and
compared with what its lineage implies, every blob re-hashed, every pickle
loaded; must be 0), and the median time to recover (the run that finishes
the tree after the fault), with the uninterrupted run time as its floor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "reliability"))
os.environ.setdefault("DAGGER_PROGRESS", "0")

import rel_scenarios as sc  # noqa: E402

import dagger as dg  # noqa: E402
from dagger.store.pickling import DEFAULT_THRESHOLD  # noqa: E402


def _row(name: str, trials: list[dict[str, Any]], floor: float) -> dict[str, Any]:
    times = [t["recover_s"] for t in trials]
    row = {
        "scenario": name,
        "trials": len(trials),
        "states_finished": sum(t["finished"] for t in trials),
        "states_expected": sum(t.get("expected", sc.n_states()) for t in trials),
        "states_lost": sum(t["lost"] for t in trials),
        "corrupt_records": sum(t["corrupt"] for t in trials),
        "recover_median_s": statistics.median(times),
        "recover_max_s": max(times),
        "floor_s": floor,
        "problems": [p for t in trials for p in t.get("problems", [])][:5],
    }
    print(json.dumps(row), flush=True)
    return row


def sigkill(base: str, n: int, window: float, floor: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    trials = [sc.kill_trial(os.path.join(base, f"kill{i}"), rng, window) for i in range(n)]
    row = _row("SIGKILL at a random moment", trials, floor)
    row["interrupted"] = sum(t["killed_exit"] == -9 for t in trials)
    row["committed_at_kill_median"] = statistics.median(t["committed_at_kill"] for t in trials)
    return row


def concurrent(base: str, n: int, window: float, floor: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    trials = []
    for i in range(n):
        t = sc.concurrent_kill_trial(os.path.join(base, f"conc{i}"), rng, window, workers=4)
        if t["survivor_exits"] != [0, 0, 0]:
            t["problems"].append(f"a surviving runner exited with {t['survivor_exits']}")
            t["corrupt"] += 1
        trials.append(t)
    return _row("SIGKILL of one of 4 concurrent runners", trials, floor)


#: The writes a disk failure can hit: (label, FaultyStore kind, state shape). A small pickle travels
#: in its state's first commit record; weights kept just under the blob threshold stay in the pickle,
#: which is then too large to carry and gets its own file.
DISK_FAULTS = {
    "blob write": ("blob", {}),
    "pickle file write": ("pickle", {"size": DEFAULT_THRESHOLD // 8 - 1}),
    "commit record write (carrying the pickle)": ("meta", {}),
}


def disk_failure(base: str, n: int, code: str, kind: str, floor: float) -> dict[str, Any]:
    fault, shape = DISK_FAULTS[kind]
    trials = []
    for i in range(n):
        directory = os.path.join(base, f"{code}-{fault}{i}")
        store = sc.FaultyStore(directory, kind=fault, nth=1 + i % 8, code=sc.ERRNOS[code])
        exp = sc.define(store, **shape)
        problems = []
        try:
            exp.run(progress=False)
            problems.append("no error raised")
        except dg.RunFailedError as exc:
            bad = exc.failures[0].sha
            if bad[:12] not in str(exc) or os.strerror(sc.ERRNOS[code]) not in str(exc):
                problems.append(f"unclear error: {exc}")
        store.heal()  # (the recovery below writes to a healthy disk)
        if (
            any(os.path.exists(os.path.join(directory, k)) for k in store.failed_keys)
            or os.listdir(os.path.join(directory, "tmp"))
            or sc.segment_damage(directory)  # a record append cut short and left in its segment
        ):
            problems.append("a partial file was left behind")
        before = sc.committed(directory)
        first = sc.audit(directory)
        report, seconds = sc.recover(directory, **shape)
        after = sc.committed(directory)
        recomputed = {s.sha for s in report.computed}
        lost = [s for s in before if s in recomputed or s not in after]
        final = sc.audit(directory)
        trials.append(
            {
                "finished": len(after),
                "lost": len(lost),
                "corrupt": first["corrupt"] + final["corrupt"] + len(problems),
                "problems": first["problems"] + final["problems"] + problems,
                "recover_s": seconds,
            }
        )
    return _row(f"{code} on the n-th {kind}", trials, floor)


def orphan_lock(base: str, n: int, floor: float) -> dict[str, Any]:
    trials = []
    for i in range(n):
        directory = os.path.join(base, f"lock{i}")
        exp = sc.define(directory)
        victim = sorted(exp._promises)[i % len(exp._promises)]
        sc.orphan_lock(directory, victim)
        t0 = time.perf_counter()
        exp.run(progress=False)
        seconds = time.perf_counter() - t0
        audit = sc.audit(directory)
        trials.append(
            {
                "finished": audit["committed"],
                "lost": sc.n_states() - audit["committed"],
                "corrupt": audit["corrupt"],
                "problems": audit["problems"],
                "recover_s": seconds,
            }
        )
    return _row("lock left by a killed process", trials, floor)


def huge_property(base: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    figures = sc.run_huge(12_500_000, os.path.join(base, "huge"))
    figures["seconds_incl_startup"] = time.perf_counter() - t0
    figures["growth_ratio"] = figures["growth"] / figures["list_bytes"]
    figures.pop("sha", None)
    print(json.dumps({"scenario": "hash a 100 MB list property", **figures}), flush=True)
    return figures


def write_doc(rows: list[dict[str, Any]], huge: dict[str, Any] | None, path: str, window: float) -> None:
    lines = [
        "# Reliability",
        "",
        "dagger's promise: a crash, a full disk, a killed worker or a mangled file never costs finished",
        "results, and opening someone else's experiment folder to browse it never runs their code.",
        "The figures below come from `benchmarks/reliability.py` (the scenarios of `tests/reliability/`,",
        "at larger counts). Each trial runs a real experiment (a root and 4 branches of 4 recipes, every",
        "state with an 800 kB array stored as a blob) in real processes on a real folder, hurts it, audits",
        "every file, and runs again to finish the tree.",
        "",
        "- **states lost**: committed before the fault, but gone or recomputed after it (must be 0);",
        "- **corrupt records**: found by a full audit after the fault and after recovery: every committed",
        "  state restored and compared with what its lineage implies, every blob re-hashed, every state",
        "  pickle (committed or not) loaded; a half-written file under a real key counts (must be 0);",
        "- **recover**: median seconds of the run that finishes the tree after the fault.",
        "",
        f"Kills land at a uniformly random moment in the first {window:.2f} s of a run: 70% of the",
        "fastest of three uninterrupted runs here, so that every kill interrupts a run in progress.",
        "",
        "| scenario | trials | states finished | states lost | corrupt records | recover (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scenario']} | {r['trials']} | {r['states_finished']} / {r['states_expected']} | "
            f"{r['states_lost']} | {r['corrupt_records']} | {r['recover_median_s']:.2f} s |"
        )
    if huge is not None:
        lines += [
            "",
            f"Hashing a recipe property that is a 100 MB list ({huge['list_bytes'] / 1e6:.0f} MB of list, 12.5 million",
            f"ints) grows the process's peak memory by {huge['growth'] / 1e6:.1f} MB "
            f"({huge['growth_ratio']:.3f} of the list): values are streamed into the hash, never copied.",
        ]
    lines += [
        "",
        "## What makes this hold",
        "",
        "- Every file is written to `tmp/` and moved into place with an atomic rename, so no reader ever",
        "  sees half a file under a real key; a disk error mid-write removes the temporary file and fails",
        "  only that state, with an error naming it (`could not save state <hash>: No space left on device`).",
        "- A state exists once its commit record (a whole frame in a segment; `meta/<sha>.<rev>.json` in older",
        "  experiments) exists, and that record is written",
        "  last, after its blobs; a small pickle travels inside it, a larger one is written before it. A kill at",
        "  any instant leaves a complete state or none. Before a newer revision replaces a record that carries",
        "  the pickle, the pickle moves to its own file (never over one already there).",
        "- A state's blobs are checked against the store on every save (never against a cache that `gc` in",
        "  another process could have made stale), and re-hashed on every restore; each state pickle",
        "  carries its own checksum (BLAKE3) in its header, so any changed byte is caught on restore, not only truncation.",
        "- A stored file that is damaged, missing, from a newer dagger, or whose class cannot be imported",
        "  raises one precise error (`CorruptRecordError`, `FormatVersionError`, `CodeNotFoundError`) that",
        "  names the file and says what to do; browsing skips a damaged metadata record with a warning.",
        "- Locks are an optimisation: the kernel drops a dead process's range locks, and a lock file whose owner process is gone is broken at once.",
        "- Leftovers of interrupted writes (temporary files, uncommitted pickles, unreferenced blobs) are",
        "  harmless and removed by `dagger gc`; `dagger verify` re-hashes and checks everything.",
        "- `gc` may run beside running experiments: a writer holds a lease from before its first blob until its",
        "  commit record, gc writes a marker before it reads the leases and lists the records again before it",
        "  deletes, so no blob in use is ever deleted ([storage](storage.md#gc-beside-running-experiments)).",
        "  Nothing writes or deletes through a symbolic link inside the folder.",
        "",
        "## Security",
        "",
        "**Restoring a state from an untrusted folder runs its code**, as loading any pickle does:",
        "`state.restore()`, `with state.lazy_load():`, `Experiment.restore(..., slim=False)`, running an",
        "experiment on that folder (which loads parents and runs Functions), and `dagger reproduce` all",
        "unpickle states. Only do these with experiment folders you trust, as you would with `torch.load`",
        "or `pickle.load`.",
        "",
        "Safe on an untrusted folder, because they read JSON only and never unpickle anything:",
        "",
        "- `dagger.Experiment.restore(folder)` (slim, the default) and everything on its graph: browsing",
        "  states, `.tags`, `.metadata`, `.results`, `.parent`/`.children`, filtering, `to_records()`,",
        "  `to_dataframe()`, `to_text()`, `to_graphviz()` and `draw()`;",
        "- the CLI's `dagger show`, `ls`, `inspect`, `diff`, `results`, `draw` and `plot`;",
        "- `dagger verify` and `dagger gc`, which read the pickles' JSON headers and re-hash blobs, but never",
        "  unpickle.",
        "",
        "No value read from a folder becomes a path outside it: state hashes and blob names from records",
        "are checked to be 64 hex digits before use, and every store key is refused if it would leave the",
        "experiment folder (`..`, absolute paths). `tests/reliability/test_rel_security.py` plants pickles that",
        "would create a file when loaded, runs all of the above, and checks the file never appears; it also",
        "forges records that point a blob at `../../x` and checks nothing outside the folder is touched.",
        "",
        "Reproduce these figures with `.venv/bin/python benchmarks/reliability.py`.",
        "",
    ]
    if _update_in_place(path, lines):
        return
    # Sections other scripts write (between <!-- name:start --> and <!-- name:end -->) are kept, in place.
    kept = _kept_sections(path)
    if kept:
        at = lines.index("## What makes this hold")
        lines[at:at] = [*kept, ""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def _update_in_place(path: str, lines: list[str]) -> bool:
    """Replace only the measured lines of an existing page (the kill window, the table, the hashing
    paragraph), keeping every section written by hand or by other scripts; False if there is no page."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read().splitlines()
    except FileNotFoundError:
        return False
    head = "| scenario | trials | states finished | states lost | corrupt records | recover (median) |"
    if head not in old:
        return False

    hashed = any(line.startswith("Hashing a recipe property") for line in lines)  # (not with --no-huge)

    def measured(page: list[str]) -> tuple[int, int]:
        start = next(i for i, line in enumerate(page) if line.startswith("Kills land at"))
        end = page.index(head) + 2
        while end < len(page) and page[end].startswith("| "):
            end += 1
        if hashed and end + 1 < len(page) and page[end + 1].startswith("Hashing a recipe property"):
            end += 3  # the paragraph's two lines
        return start, end

    start, end = measured(old)
    new_start, new_end = measured(lines)
    old[start:end] = lines[new_start:new_end]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(old) + "\n")
    return True


def _kept_sections(path: str) -> list[str]:
    """The lines of every ``<!-- name:start -->`` ... ``<!-- name:end -->`` section of the current file."""
    try:
        with open(path, encoding="utf-8") as f:
            old = f.read().splitlines()
    except FileNotFoundError:
        return []
    out: list[str] = []
    inside = None
    for line in old:
        if inside is None and line.startswith("<!-- ") and line.endswith(":start -->"):
            inside = line[5:-10]
        if inside is not None:
            out.append(line)
            if line == f"<!-- {inside}:end -->":
                inside = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=50, help="SIGKILL trials (default 50)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--no-huge", action="store_true", help="skip hashing the 100 MB list")
    parser.add_argument("--doc", default=os.path.join(ROOT, "docs", "reliability.md"))
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="dagger-reliability-")
    try:
        window = sc.calibrate(os.path.join(base, "calibrate"))
        floor = window
        print(json.dumps({"uninterrupted_run_s": window}), flush=True)
        rows = [
            sigkill(base, args.trials, window, floor, args.seed),
            concurrent(base, max(10, args.trials // 5), window, floor, args.seed + 1),
        ]
        for code in ("ENOSPC", "EIO"):
            for kind in DISK_FAULTS:
                rows.append(disk_failure(base, 8, code, kind, floor))
        rows.append(orphan_lock(base, 10, floor))
        huge = None if args.no_huge else huge_property(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    os.makedirs(os.path.dirname(args.doc), exist_ok=True)
    write_doc(rows, huge, args.doc, window)
    bad = [r for r in rows if r["states_lost"] or r["corrupt_records"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
