"""Run every benchmark script in this folder and rewrite ``docs/benchmarks.md``.

    python benchmarks/run.py                 # all scripts, then docs/benchmarks.md
    python benchmarks/run.py cold_run define # only these (the page keeps the others' figures)
    python benchmarks/run.py --no-docs       # print the JSON lines only
    python benchmarks/run.py --render        # rewrite the page from its recorded results

Every ``benchmarks/*.py`` script except this one and the ``_``-prefixed
helpers is run in its own process; each prints one JSON line of figures
(the last line of its output). ``DAGGER_BENCH_REPEAT=1`` makes a quick pass;
``DAGGER_BENCH_DIR`` chooses where the experiments are written (by default
``runs/bench`` in the repository; the floor is measured in the same place).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import wait_for_quiet_disk
from _notes import HEAVY_NOTES, MILLION_FINDINGS, MILLION_NOTES, PROFILE_NOTES

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOC = os.path.join(ROOT, "docs", "benchmarks.md")

# The order of the page; scripts not listed here follow, alphabetically.
ORDER = ["cold_run", "instructions", "cached_rerun", "define", "restore", "tag_query", "scaling"]


def scripts() -> list[str]:
    names = [f[:-3] for f in os.listdir(HERE) if f.endswith(".py") and not f.startswith("_") and f != "run.py"]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def run_script(name: str, timeout: float) -> dict[str, Any]:
    start = time.perf_counter()
    env = dict(os.environ, DAGGER_PROGRESS="0")
    try:
        proc = subprocess.run(
            [sys.executable, os.path.join(HERE, f"{name}.py")],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"workload": name, "error": f"timed out after {timeout:.0f} s"}
    elapsed = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"workload": name, "_script": name, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-600:]}"}
    try:
        parsed = [json.loads(ln) for ln in lines]
    except ValueError as exc:
        return {"workload": name, "_script": name, "error": f"unreadable JSON line ({exc})"}
    # One JSON line is the rule; a script that prints one per scenario gets one table each.
    result = parsed[-1] if len(parsed) == 1 else {"workload": name, "_lines": parsed}
    result.setdefault("workload", name)
    result["_script"] = name
    result["_seconds"] = round(elapsed, 1)
    result["_date"] = _now()
    return result


def previous_results() -> dict[str, dict[str, Any]]:
    """The raw results recorded on the current page, by script (kept for scripts not rerun)."""
    try:
        with open(DOC) as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    block = text.split("## Raw results", 1)[-1] if "## Raw results" in text else ""
    for line in block.splitlines():
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except ValueError:
                continue
            name = item.get("_script") or item.get("workload")
            if name:
                item["_script"] = name
                out[name] = item
    return out


# ---- the page ---------------------------------------------------------------------

def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
        freq = psutil.cpu_freq()
        if freq is not None and freq.max:
            info["cpu_mhz_max"] = round(freq.max)
        info["load_average_1m"] = round(psutil.getloadavg()[0], 2)
        bench_dir = os.environ.get("DAGGER_BENCH_DIR") or os.path.join(ROOT, "runs", "bench")
        best = None
        for part in psutil.disk_partitions(all=True):
            if os.path.abspath(bench_dir).startswith(part.mountpoint) and (best is None or len(part.mountpoint) > len(best.mountpoint)):
                best = part
        if best is not None:
            info["bench_filesystem"] = f"{best.fstype} at {best.mountpoint} ({best.device})"
    except ImportError:  # pragma: no cover - psutil is a test dependency
        pass
    try:
        import dask
        import numpy

        info["dask"] = dask.__version__
        info["numpy"] = numpy.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def _f(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}g}"
    return "" if value is None else str(value)


def _ok(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return ""
    return "yes" if value <= target else "**no**"


# (label, key, unit, target, reference, ratio key, ratio label)
Row = tuple[str, str, str, "float | None", str, "str | None", str]

KNOWN: dict[str, list[Row]] = {
    "cold_run": [
        ("chain, per state", "chain_ms_per_state", "ms", 0.25, "1.0-1.4 ms", None, ""),
        ("fan, per state", "fan_ms_per_state", "ms", 0.25, "1.0-1.4 ms", None, ""),
        ("tree, per state", "tree_ms_per_state", "ms", 0.25, "1.0-1.4 ms", None, ""),
        ("slowest shape, per state", "worst_ms_per_state", "ms", 0.25, "1.0-1.4 ms", "ratio_to_atomic_write", "atomic write"),
        ("chain with `locking=False`", "chain_no_locking_ms_per_state", "ms", None, "", None, ""),
        ("chain with `fsync=True`", "chain_fsync_ms_per_state", "ms", None, "", "fsync_ratio_to_atomic_fsync_write", "atomic write + fsync"),
    ],
    "instructions": [
        ("chain, define + run, per state", "chain_instructions_per_state", "instructions", None, "", "chain_ratio_to_dask", "plain Dask"),
        ("fan, define + run, per state", "fan_instructions_per_state", "instructions", None, "", "fan_ratio_to_dask", "plain Dask"),
        ("tree, define + run, per state", "tree_instructions_per_state", "instructions", None, "", "tree_ratio_to_dask", "plain Dask"),
        ("plain Dask, chain, per no-op task", "chain_dask_instructions_per_task", "instructions", None, "", None, ""),
        ("plain Dask, fan, per no-op task", "fan_dask_instructions_per_task", "instructions", None, "", None, ""),
        ("plain Dask, tree, per no-op task", "tree_dask_instructions_per_task", "instructions", None, "", None, ""),
    ],
    "cached_rerun": [
        ("chain, per state", "chain_ms_per_state", "ms", 0.03, "0.18-0.39 ms", None, ""),
        ("fan, per state", "fan_ms_per_state", "ms", 0.03, "0.18-0.39 ms", None, ""),
        ("tree, per state", "tree_ms_per_state", "ms", 0.03, "0.18-0.39 ms", None, ""),
        ("slowest shape, per state", "worst_ms_per_state", "ms", 0.03, "0.18-0.39 ms", "ratio_to_index_read", "reading the index"),
        ("tree, defining again + run, per state", "tree_define_and_run_ms_per_state", "ms", None, "", None, ""),
        ("chain plus one new state, whole run", "chain_add_one_state_ms", "ms", None, "", None, ""),
        ("fan plus one new state, whole run", "fan_add_one_state_ms", "ms", None, "", None, ""),
        ("tree plus one new state, whole run", "tree_add_one_state_ms", "ms", None, "", None, ""),
    ],
    "define": [
        ("4,000-state chain", "chain_4000_s", "s", 0.2, "3.5 s", "ratio_to_atomic_write_per_state", "atomic write (per state)"),
        ("memory, resident growth", "chain_4000_rss_mib", "MiB", 60, "492 MiB", None, ""),
        ("memory, traced peak", "chain_4000_traced_peak_mib", "MiB", 60, "492 MiB", None, ""),
        ("1,000-state chain", "chain_1000_s", "s", None, "", None, ""),
        ("2,000-state chain", "chain_2000_s", "s", None, "", None, ""),
        ("time per state, 4,000 vs 1,000 (1 = linear)", "time_linearity_4000_vs_1000", "x", None, "quadratic", None, ""),
        ("memory per state, 4,000 vs 1,000 (1 = linear)", "memory_linearity_4000_vs_1000", "x", None, "quadratic", None, ""),
    ],
    "restore": [
        ("`Experiment.restore(slim=True)`, 10,000 states", "restore_s", "s", 0.1, "0.31 s", "ratio_to_index_read", "reading the index"),
    ],
    "ui_10k": [
        ("page data from the store (listing, index, layout, table rows)", "data_s", "s", None, "", None, ""),
        ("layout alone (the drawing's engine)", "layout_s", "s", None, "", None, ""),
        ("exported HTML file", "export_bytes", "bytes", None, "", None, ""),
        ("open the exported file in chromium until the tree is drawn", "load_ms", "ms", None, "", None, ""),
        ("filter box: type a tag expression until the screen shows it (median)", "filter_ms", "ms", None, "", None, ""),
        ("filter box, slowest expression", "filter_max_ms", "ms", None, "", None, ""),
        ("pan: one redraw", "pan_ms", "ms", None, "", None, ""),
        ("zoom out: one redraw", "zoom_out_ms", "ms", None, "", None, ""),
        ("served: `GET /api/data` (built already)", "api_data_ms", "ms", None, "", None, ""),
        ("served: `GET /api/version` (the live poll)", "api_version_ms", "ms", None, "", None, ""),
        ("console errors", "console_errors", "", None, "", None, ""),
    ],
    "recipe_overhead": [
        ("`self.i` loop: whole `exp.run()` / direct call (CPU time)", "selfloop_run_ratio", "x", 1.03, "1.5-1.8x", None, ""),
        ("`self.i` loop: the loop alone, in the run / direct", "selfloop_loop_ratio", "x", 1.03, "1.5-1.8x", None, ""),
        ("`state.x` loop: whole `exp.run()` / direct call (CPU time)", "stateloop_run_ratio", "x", 1.03, "", None, ""),
        ("`state.x` loop: the loop alone, in the run / direct", "stateloop_loop_ratio", "x", 1.03, "", None, ""),
        ("`self.i` loop: whole `exp.run()` / direct call (wall time)", "selfloop_run_wall_ratio", "x", None, "", None, ""),
        ("`state.x` loop: whole `exp.run()` / direct call (wall time)", "stateloop_run_wall_ratio", "x", None, "", None, ""),
        ("`self.i` loop, direct call (CPU time)", "selfloop_direct_loop_s", "s", None, "", None, ""),
        ("`state.x` loop on a state, direct call (CPU time)", "stateloop_direct_loop_s", "s", None, "", None, ""),
        ("`state.x` loop on a plain object, direct call (CPU time)", "stateloop_plain_loop_s", "s", None, "", None, ""),
    ],
    "restore_large": [
        ("restore / `np.load` of the same bytes (verified)", "ratio", "x", 1.15, "1.94x (16 cores, 4 GiB)", None, ""),
        ("restore", "restore_s", "s", None, "", None, ""),
        ("`np.load`", "np_load_s", "s", None, "", None, ""),
        ("restore / `np.load`, CPU time of the process", "cpu_ratio", "x", None, "", None, ""),
        ("load average (1 min) at the end", "loadavg_1min", "", None, "", None, ""),
    ],
    "cluster_scaling": [
        ("slowest worker count: dagger / plain Dask", "worst_ratio", "x", 1.1, "1.35x (16 workers)", None, ""),
        ("1 worker: dagger / plain Dask", "w1_ratio", "x", 1.1, "", None, ""),
        ("1 worker: dagger", "w1_dagger_s", "s", None, "", None, ""),
        ("1 worker: plain Dask", "w1_dask_s", "s", None, "", None, ""),
        ("2 workers: dagger / plain Dask", "w2_ratio", "x", 1.1, "", None, ""),
        ("2 workers: dagger", "w2_dagger_s", "s", None, "", None, ""),
        ("2 workers: plain Dask", "w2_dask_s", "s", None, "", None, ""),
        ("first run on a fresh 2-worker cluster: dagger", "w2_first_dagger_s", "s", None, "", None, ""),
        ("first run on a fresh 2-worker cluster: plain Dask", "w2_first_dask_s", "s", None, "", None, ""),
    ],
    "tag_query": [
        ("one tag", "one_tag_ms", "ms", 5.0, "18 ms", None, ""),
        ("fnmatch pattern", "pattern_ms", "ms", 5.0, "18 ms", None, ""),
        ("negation", "negation_ms", "ms", 5.0, "18 ms", None, ""),
        ("`&` and `|` of three filters", "and_or_ms", "ms", 5.0, "18 ms", None, ""),
        ("first query after restore (builds the tag index)", "first_query_ms", "ms", 5.0, "18 ms", None, ""),
        ("slowest", "worst_ms", "ms", 5.0, "18 ms", "ratio_to_index_read", "reading the index"),
    ],
}

TITLES = {
    "cold_run": "Cold run (single-threaded, trivial numpy recipe)",
    "instructions": "Cold run in CPU instructions (valgrind; immune to the machine's load)",
    "cached_rerun": "Fully cached rerun, in a fresh process",
    "define": "Defining a chain of promises",
    "restore": "Restoring the slim graph",
    "tag_query": "Tag queries over 5,000 states",
    "ui_10k": "The explorer (`dagger ui`) on 10,000 states",
    "scaling": "Scaling curve: per-state cost from 100 to 20,000 states",
    "million": "Million states (issue 21)",
    "busy_disk": "Cold runs on a quiet and a busy disk: records in files against segments (issue 21)",
    "recipe_overhead": "What a run adds to a pure-Python recipe (issue 20 item 3)",
    "restore_large": "Restoring a large state against np.load (issue 20 item 1)",
    "cluster_scaling": "Dagger on a LocalCluster against plain Dask, over worker counts (issue 20 item 4)",
    "gpu_tree": "A GPU model tree against a hand-written loop (issue 20 item 2)",
}

FLOOR_KEYS = ("atomic_write_ms", "atomic_fsync_write_ms", "floor_bytes", "seq_write_ms", "seq_read_ms")


def _known_table(result: dict[str, Any], rows: list[Row]) -> list[str]:
    out = ["| figure | value | target | met | reference | ratio to floor |", "|---|---|---|---|---|---|"]
    for label, key, unit, target, reference, ratio_key, ratio_label in rows:
        if key not in result:
            continue
        value = result[key]
        ratio = f"{_f(result[ratio_key])}x {ratio_label}" if ratio_key and ratio_key in result else ""
        tgt = f"<= {_f(target)} {unit}" if target is not None else ""
        out.append(f"| {label} | {_f(value)} {unit} | {tgt} | {_ok(value, target)} | {reference} | {ratio} |")
    return out


def _scaling_table(result: dict[str, Any]) -> list[str]:
    sizes = result.get("sizes", [])
    out = ["| shape | run | " + " | ".join(f"{n:,}" for n in sizes) + " | flatness (largest / 1,000) |"]
    out.append("|---|---|" + "---|" * len(sizes) + "---|")
    for shape in ("chain", "fan", "tree"):
        for kind in ("cold", "cached"):
            cells = [_f(result.get(f"{shape}_{n}_{kind}_ms_per_state")) for n in sizes]
            flat = _f(result.get(f"{shape}_cold_flatness")) if kind == "cold" else ""
            out.append(f"| {shape} | {kind}, ms/state | " + " | ".join(cells) + f" | {flat} |")
    return out


def _million_at(result: dict[str, Any], name: str, sizes: list[int]) -> Any:
    """A formatter of ``<name>_<largest size>_<key>`` values, with the linear 1,000,000 extrapolation marked."""
    n = max(sizes)
    p = f"{name}_{n}_"
    scale = 1_000_000 / n

    def at(key: str, unit: str, linear: bool = True, digits: int = 3) -> str:
        value = result.get(p + key)
        if value is None:
            return ""
        text = f"{_f(value, digits)} {unit} at {n:,}"
        return text + (f" ({_f(value * scale, digits)} {unit} at 1,000,000 if linear)" if linear and n < 1_000_000 else "")

    return n, p, at


def _million_rows(result: dict[str, Any], name: str, sizes: list[int], meta: str) -> list[tuple[str, str, str]]:
    n, p, at = _million_at(result, name, sizes)
    return [
        ("cold tree run / plain Dask, same graph of no-op tasks", "<= 2 x", f"{_f(result.get(p + 'run_over_dask'))} x at {n:,}"),
        ("define, 1,000,000 states", "<= 15 s", at("define_s", "s")),
        ("cold run, 1,000,000 states", "<= 240 s", at("run_s", "s")),
        ("fully cached rerun (run; define apart), 1,000,000", "<= 20 s", at("cached_run_s", "s") + "; define " + at("cached_define_s", "s", False)),
        ("slim restore, 1,000,000", "<= 3 s", at("restore_s", "s")),
        ("tag query (one tag; first query)", "<= 100 ms", f"{_f(result.get(p + 'tag_one_s', 0) * 1e3)} ms; {_f(result.get(p + 'tag_first_s', 0) * 1e3)} ms at {n:,}"),
        ("peak memory, cold run (200,000: <= 600 MiB)", "<= 2 GiB at 1,000,000", at("run_peak_mb", "MiB")),
        ("metadata on disk per trivial state", "<= 400 B", meta),
    ]


def _million_curve(result: dict[str, Any], name: str, sizes: list[int], title: str) -> list[str]:
    out = ["", title, ""]
    out.append("| states | " + " | ".join(f"{k:,}" for k in sizes) + " |")
    out.append("|---|" + "---|" * len(sizes))
    for label, key, factor in (
        ("define, s", "define_s", 1),
        ("cold run, us/state", "run_us_per_state", 1),
        ("plain Dask, us/task", "dask_run_s", None),
        ("cold run / plain Dask", "run_over_dask", 1),
        ("cold run peak, MiB", "run_peak_mb", 1),
        ("plain Dask peak, MiB", "dask_peak_mb", 1),
        ("cached rerun: run, s", "cached_run_s", 1),
        ("cached rerun: define, s", "cached_define_s", 1),
        ("slim restore, s", "restore_s", 1),
        ("tag query, one tag, ms", "tag_one_s", 1e3),
        ("files in the folder", "files", 1),
        ("bytes on disk per state (allocated)", "allocated_bytes_per_state", 1),
        ("metadata bytes per state (meta/ or segments/)", "meta_bytes_per_state", 1),
        ("... once compacted (compressed), bytes per state", "compacted_meta_bytes_per_state", 1),
        ("`gc` (compacts; rewrites the index), s", "compact_s", 1),
        ("slim restore after `gc`, s", "compacted_restore_s", 1),
    ):
        cells = []
        for k in sizes:
            value = result.get(f"{name}_{k}_{key}")
            if value is not None and factor is None:  # per task, in us
                value = value / k * 1e6
            elif value is not None:
                value = value * factor
            cells.append(_f(value))
        if any(cells):  # (rows a store does not have, such as compaction for files, are left out)
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out


def _million_tables(result: dict[str, Any]) -> list[str]:
    """Issue 21's targets before/after, the stores' curves and the segment layer's raw cost."""
    sizes, seg_sizes = result.get("store_sizes") or [], result.get("segment_sizes") or []
    after_sizes = result.get("segstore_sizes") or []
    out = list(MILLION_NOTES)
    if sizes:
        n = max(sizes)
        p = f"store_{n}_"
        seg = max(seg_sizes) if seg_sizes else None
        meta = f"{_f(result.get(p + 'meta_bytes_per_state'))} B in a file of {_f(result.get(p + 'meta_allocated_bytes_per_state'))} B on disk"
        if seg:
            meta += f"; segments, raw: {_f(result.get(f'seg_{seg}_bytes_per_record'))} B"
        rows = _million_rows(result, "store", sizes, meta)
        columns: list[tuple[str, list[str]]] = []

        def after_column(m: int) -> list[str]:
            q = f"segstore_{m}_"
            after_meta = f"{_f(result.get(q + 'meta_bytes_per_state'))} B in segments at {m:,} (no file per state)"
            if result.get(q + "compacted_meta_bytes_per_state") is not None:
                after_meta += (
                    f"; {_f(result.get(q + 'compacted_meta_bytes_per_state'))} B after `dagger gc` "
                    "(compacted, compressed)"
                )
            return [row[2] for row in _million_rows(result, "segstore", [m], after_meta)]

        if after_sizes:
            m = max(set(after_sizes) & set(sizes) or after_sizes)  # the before column's size, where measured
            columns.append(("after: records in segments", after_column(m)))
            if max(after_sizes) > m:  # measured further with segments
                columns.append((f"after, at {max(after_sizes):,}", after_column(max(after_sizes))))
        head = ["figure", "target", "before: one file per state"] + [title for title, _ in columns]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for i, (label, target, before) in enumerate(rows):
            out.append("| " + " | ".join([label, target, before] + [cells[i] for _, cells in columns]) + " |")
        tags = f"tagged `group:<i % {result.get('tags', 100)}>`"
        out += _million_curve(result, "store", sizes, f"Before: one file per state (`DAGGER_SEGMENTS=0`), {result.get('shape', 'tree8')} {tags}:")
        if after_sizes:
            out += _million_curve(
                result, "segstore", after_sizes, "After: commit records in segments (the default layout), same tree:"
            )
    if seg_sizes:
        out += ["", "The segment layer alone (4 writers of N/4 records, one `write` per record, no fsync; compaction fsync'd):", ""]
        out.append("| records | " + " | ".join(f"{k:,}" for k in seg_sizes) + " |")
        out.append("|---|" + "---|" * len(seg_sizes))
        for label, key in (
            ("append, us/record", "append_us_per_record"),
            ("read all (newest per key), s", "read_s"),
            ("compact 4 segments into 1, s", "compact_s"),
            ("read after compaction, s", "read_after_compact_s"),
            ("bytes per record (payload + 104 B frame)", "bytes_per_record"),
            ("... zlib'd compacted segment", "zlib_bytes_per_record"),
            ("append with fsync, us/record (1,000)", "fsync_append_us_per_record"),
            ("peak memory, MiB", "peak_mb"),
        ):
            out.append(f"| {label} | " + " | ".join(_f(result.get(f"seg_{k}_{key}")) for k in seg_sizes) + " |")
        out += ["", f"Payload: a real first commit record of a trivial state, {_f(result.get('record_bytes_with_pickle'))} B "
                f"({_f(result.get('record_bytes_without_pickle'))} B without the pickle it carries)."]
    out += [""] + MILLION_FINDINGS
    if "s3_states" in result:
        n = result["s3_states"]
        out += ["", f"S3 requests, counted at the client on a local S3 server ({n:,}-state tree8; segment batches of "
                f"{result.get('s3_batch', 0):,}):", "", "| run | requests |", "|---|---|"]
        for label, key in (
            ("one file per state, cold run, per state", "s3_store_cold_run_per_state"),
            ("one file per state, fully cached rerun, whole run", "s3_store_cached_run_requests"),
            ("one file per state, slim restore, whole run", "s3_store_restore_requests"),
            ("records in segments, cold run, per state", "s3_segstore_cold_run_per_state"),
            ("records in segments, fully cached rerun, whole run", "s3_segstore_cached_run_requests"),
            ("records in segments, slim restore, whole run", "s3_segstore_restore_requests"),
            ("segment layer alone, writing, per state", "s3_segments_write_per_state"),
            ("segment layer alone, reading all, whole run", "s3_segments_read_requests"),
        ):
            counts = result.get(key)
            if counts is None:
                continue
            out.append(f"| {label} | " + ", ".join(f"{m} {_f(c)}" for m, c in sorted(counts.items())) + " |")
    return out


def _busy_disk_table(result: dict[str, Any]) -> list[str]:
    """busy_disk.py: each layout's cold run on a quiet and on a busy disk, against plain Dask."""
    n = result.get("states", 0)
    out = [
        f"A cold run of {n:,} trivial states ({result.get('shape', 'tree8')}) in a fresh process, median of "
        f"{result.get('rounds')} per cell; the busy disk is the minute after writing 20,000 files of 8 KiB and three "
        f"of 100 MiB, syncing and removing them. Plain Dask on the same graph of no-op tasks: "
        f"{_f(result.get('dask_run_s'))} s. Target: within 2x of it on either disk.",
        "",
        "| commit records | quiet disk, s (us/state) | / plain Dask | busy disk, s (us/state) | / plain Dask "
        "| busy / quiet | creating a file on the busy disk, us (before; after each run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (("files", "one file per state"), ("segments", "in segments")):
        if f"{name}_quiet_run_s" not in result:
            continue
        probes = result.get(f"{name}_busy_probes") or []
        created = ", ".join(f"{_f(p.get('create_us_before'))}; {_f(p.get('create_us_after'))}" for p in probes)
        out.append(
            f"| {label} | {_f(result[f'{name}_quiet_run_s'])} ({_f(result.get(f'{name}_quiet_us_per_state'))}) "
            f"| {_f(result.get(f'{name}_quiet_over_dask'))} x "
            f"| {_f(result[f'{name}_busy_run_s'])} ({_f(result.get(f'{name}_busy_us_per_state'))}) "
            f"| {_f(result.get(f'{name}_busy_over_dask'))} x | {_f(result.get(f'{name}_busy_over_quiet'))} x | {created} |"
        )
    quiet = result.get("quiet_disk") or {}
    out += ["", f"Quiet disk, as found before the first run: creating a file {_f(quiet.get('create_us'))} us, "
            f"appending {_f(quiet.get('append_us'))} us. Runs, s: " + "; ".join(
                f"{name} quiet {result.get(f'{name}_quiet_runs')}, busy {result.get(f'{name}_busy_runs')}"
                for name in ("files", "segments") if f"{name}_quiet_runs" in result)]
    return out


def _generic_table(result: dict[str, Any]) -> list[str]:
    out = ["| figure | value |", "|---|---|"]
    for key, value in result.items():
        if key.startswith("_") or key in ("workload",) or key in FLOOR_KEYS:
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        out.append(f"| {key} | {_f(value)} |")
    return out


def _floor_line(result: dict[str, Any]) -> str:
    parts = []
    if "atomic_write_ms" in result:
        parts.append(f"atomic 1 KiB write {_f(result['atomic_write_ms'])} ms")
    if "atomic_fsync_write_ms" in result:
        parts.append(f"with fsync {_f(result['atomic_fsync_write_ms'])} ms")
    if "seq_write_ms" in result and "floor_bytes" in result:
        n = result["floor_bytes"]
        size = f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
        parts.append(f"sequential write / read of {size}: {_f(result['seq_write_ms'])} / {_f(result['seq_read_ms'])} ms")
    return ("Floor measured in the same run: " + "; ".join(parts) + ".") if parts else ""


# (label, script, key, unit, "<=" or ">=", target, reference)
TargetRow = tuple[str, str, str, str, str, float, str]

SUMMARY: list[TargetRow] = [
    ("cold run, per state (slowest of chain, fan, tree)", "cold_run", "worst_ms_per_state", "ms", "<=", 0.25, "1.0-1.4 ms"),
    ("fully cached rerun in a fresh process, per state", "cached_rerun", "worst_ms_per_state", "ms", "<=", 0.03, "0.18-0.39 ms"),
    ("defining a 4,000-state chain", "define", "chain_4000_s", "s", "<=", 0.2, "3.5 s"),
    ("... its memory (resident growth)", "define", "chain_4000_rss_mib", "MiB", "<=", 60, "492 MiB"),
    ("`Experiment.restore(slim=True)` of 10,000 states", "restore", "restore_s", "s", "<=", 0.1, "0.31 s"),
    ("tag query over 5,000 states (slowest query)", "tag_query", "worst_ms", "ms", "<=", 5.0, "18 ms"),
    ("disk for 6 states sharing 200 MB (x unique bytes)", "disk_usage", "ratio", "x", "<=", 1.1, "6.0x"),
    ("peak memory while 20 children of a 200 MB state run (x data)", "memory", "children_peak_x_model", "x", "<=", 1.5, "3.2x"),
]

# Targets of the store and scale-out issues, and the rest of issue 7's table.
OTHER_TARGETS: list[TargetRow] = [
    ("save 1 GiB / raw write of the same bytes", "store_throughput", "write_ratio", "x", ">=", 0.70, ""),
    ("restore 1 GiB / raw read of the same bytes", "store_throughput", "read_ratio", "x", ">=", 0.70, ""),
    ("8 CPU-bound recipes, `processes` vs single-threaded", "parallel_speed", "speedup_processes", "x", ">=", 1.7, "fails"),
    ("... 2-worker LocalCluster vs single-threaded", "parallel_speed", "speedup_local_cluster", "x", ">=", 1.7, ""),
    ("peak memory, chain of 20 x 200 MB, single-threaded", "memory", "chain_peak_x_model", "x model", "<=", 3, ""),
    ("peak memory, fan-out of 20 x 200 MB, 2 threads", "memory", "fanout_peak_x_model", "x model", "<=", 4, ""),
]

# Issue 20: heavy states (large arrays, GPU models, pure-Python recipes, clusters).
ISSUE20_TARGETS: list[TargetRow] = [
    ("restore a 512 MiB array state / `np.load` (verified)", "restore_large", "ratio", "x", "<=", 1.15, "1.94x"),
    ("GPU tree: `exp.run()` / hand-written loop", "gpu_tree", "run_ratio", "x", "<=", 1.2, ""),
    ("GPU tree: `restore(map_location=\"cuda\")` / `torch.load`", "gpu_tree", "restore_ratio", "x", "<=", 1.2, "1.95x"),
    ("GPU tree: `restore(map_location=\"cpu\")` bit-identical", "gpu_tree", "cpu_bit_identical", "", "==", 1, ""),
    ("pure-Python recipe: `exp.run()` / its `run` called directly", "recipe_overhead", "worst_run_ratio", "x", "<=", 1.03, "1.5-1.8x"),
    ("LocalCluster, slowest of 1-2 workers: dagger / plain Dask", "cluster_scaling", "worst_ratio", "x", "<=", 1.1, "1.35x"),
]


def _target_table(results: list[dict[str, Any]], rows: list[TargetRow]) -> list[str]:
    by_name = {r.get("_script"): r for r in results}
    out = ["| workload | figure | target | met | reference |", "|---|---|---|---|---|"]
    for label, name, key, unit, sign, target, reference in rows:
        result = by_name.get(name, {})
        if "skipped" in result:
            why = result.get("gpu") or f"skipped ({result['skipped']})"
            out.append(f"| {label} | {why} |  |  | {reference} |")
            continue
        value = result.get(key)
        if value is None:
            continue
        if sign == "==":
            out.append(f"| {label} | {_f(value)} | yes | {_f(bool(value))} | {reference} |")
            continue
        met = value >= target if sign == ">=" else value <= target
        out.append(f"| {label} | {_f(value)} {unit} | {sign} {_f(target)} {unit} | {_f(met)} | {reference} |")
    return out if len(out) > 2 else []


def _cold_floor_note(results: list[dict[str, Any]]) -> list[str]:
    """Why the cold-run target is out of reach on this disk: one file creation costs more."""
    cold = next((r for r in results if r.get("_script") == "cold_run"), {})
    atomic = cold.get("atomic_write_ms")
    if not atomic:
        return []
    worst = cold.get("worst_ms_per_state")
    took = f"; the slowest shape took {worst / atomic:.2g}x" if worst else ""
    return [
        f"The cold-run target is {0.25 / atomic:.2g}x one atomic small-file write on this disk "
        f"({_f(atomic)} ms, measured in the same run){took}. A computed state writes one file "
        "atomically (its commit record, which carries its small pickle), takes and releases its lock, "
        "checks that no other process committed it meanwhile, and runs as one Dask task; the profile "
        "notes below say where the rest goes.",
        "",
    ]


def render(
    results: list[dict[str, Any]], info: dict[str, Any], started: str, total_s: float, rerun: list[str] | None = None
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `python benchmarks/run.py` (do not edit by hand: it rewrites this page).",
        (
            f"Date: {started} UTC: reran {', '.join(rerun)} ({total_s / 60:.1f} min); every other section keeps "
            "the figures of its own last run (dated under its title where known)."
            if rerun
            else f"Date: {started} UTC; the whole suite took {total_s / 60:.1f} min."
        ),
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "Each script prints one JSON line; figures are medians of several repetitions (see",
        "`repeats`). Building, cached reruns and restores each run in a fresh process, so no",
        "in-process cache flatters them, and times are taken inside that process around the work",
        "itself (interpreter start-up and imports excluded). Because absolute times move from",
        "machine to machine (and with other load on a shared machine), every script also",
        "measures this machine's floor for the same work in the same run and folder: an atomic",
        "small-file write (temporary file, then `os.replace`, as the store writes) and a plain",
        "sequential write and read of the same bytes. The *ratio to floor* column divides the",
        "figure by that floor.",
        "",
        "Before each script, `run.py` waits (at most 10 minutes) until the disk creates a small",
        "file in at most 80 times what a small append takes (`_common.wait_for_quiet_disk`). On",
        "this VM's ext4 (mounted with `discard`), deleting many files (a test suite, the previous",
        "suite's clean-up) makes creating one take 0.12-0.91 ms instead of 0.03-0.05 ms for",
        "several minutes; a script started then would measure those deletions. Each section",
        "says how long it waited and what the probe found when it started.",
        "",
        "Durability: the store's crash safety (every file written to `tmp/` and renamed into place,",
        "the commit record last) is always on in these figures. `fsync=False` is the default:",
        "a rename is atomic, so a killed process never leaves a corrupt state, and only a power",
        "loss or kernel crash can lose the most recent writes (which the next run recomputes).",
        "`Experiment(..., fsync=True)` adds an `fsync` per file for power-loss durability; its",
        "cost is reported separately below.",
        "",
    ]
    summary = _target_table(results, SUMMARY)
    if summary:
        lines += ["## Targets (issue 7)", ""] + summary + [""] + _cold_floor_note(results)
    other = _target_table(results, OTHER_TARGETS)
    if other:
        lines += ["## Other targets (store, scale-out and the rest of issue 7)", ""] + other + [""]
    heavy = _target_table(results, ISSUE20_TARGETS)
    if heavy:
        lines += ["## Targets (issue 20: heavy states)", ""] + heavy + ["", HEAVY_NOTES]
    lines += [PROFILE_NOTES]
    for result in results:
        name = result.get("_script", result.get("workload", "?"))
        lines.append(f"## {TITLES.get(name, name.replace('_', ' ').capitalize())}")
        lines.append("")
        when = f", {result['_date']} UTC" if "_date" in result else ""
        settle = result.get("_disk")
        quiet = (
            f"; started after {settle['waited_s']} s waiting for a quiet disk (create {settle['create_us']} us, "
            f"append {settle['append_us']} us{'' if settle['settled'] else ': NOT quiet, gave up waiting'})"
            if settle
            else ""
        )
        lines.append(
            f"`benchmarks/{name}.py`" + (f", {result['_seconds']} s" if "_seconds" in result else "") + when + quiet
        )
        lines.append("")
        if "error" in result:
            lines.append(f"Did not complete: {result['error']}")
            lines.append("")
            continue
        if "skipped" in result:
            lines += [f"Skipped: {result['skipped']}.", ""]
            continue
        if "_lines" in result:
            for item in result["_lines"]:
                lines += [f"**{item.get('scenario', item.get('workload', name))}**", ""] + _generic_table(item) + [""]
        elif name in KNOWN:
            lines += _known_table(result, KNOWN[name])
        elif name == "scaling":
            lines += _scaling_table(result)
        elif name == "million":
            lines += _million_tables(result)
        elif name == "busy_disk":
            lines += _busy_disk_table(result)
        else:
            lines += _generic_table(result)
        floor_line = _floor_line(result)
        if floor_line:
            lines += ["", floor_line]
        lines.append("")
    lines += ["## Raw results", "", "The JSON line each script printed:", "", "```"]
    lines += [json.dumps(r) for r in results]
    lines += ["```", ""]
    return "\n".join(lines)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def main(argv: list[str]) -> int:
    write_docs = "--no-docs" not in argv
    if "--render" in argv:  # rewrite the page from its own raw results, running nothing
        kept = previous_results()
        order = scripts()
        results = sorted(kept.values(), key=lambda r: order.index(r["_script"]) if r["_script"] in order else len(order))
        with open(DOC, "w") as f:
            f.write(render(results, machine(), "(re-rendered) " + _now(), 0.0))
        return 0
    wanted = [a for a in argv if not a.startswith("--")]
    names = [n for n in scripts() if not wanted or n in wanted]
    started = _now()
    t0 = time.perf_counter()
    results = []
    # One folder for every script's experiments, removed only once all have run (see the
    # note on removal in _common.py: mass deletion slows file creation for minutes).
    base = os.environ.get("DAGGER_BENCH_DIR") or os.path.join(ROOT, "runs", "bench")
    os.makedirs(base, exist_ok=True)
    session = tempfile.mkdtemp(prefix="session-", dir=base)
    os.environ["DAGGER_BENCH_SESSION"] = session
    try:
        for name in names:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            disk = wait_for_quiet_disk(session)
            if disk["waited_s"] or not disk["settled"]:
                print(f"#   waited for a quiet disk: {disk}", file=sys.stderr, flush=True)
            result = run_script(name, timeout=float(os.environ.get("DAGGER_BENCH_TIMEOUT", 1800)))
            result["_disk"] = disk
            print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}), flush=True)
            results.append(result)
    finally:
        del os.environ["DAGGER_BENCH_SESSION"]
        shutil.rmtree(session, ignore_errors=True)
    total = time.perf_counter() - t0
    rerun = [r["_script"] for r in results] if wanted else None
    if wanted:  # a partial run: keep the page's figures for the scripts not rerun
        kept = previous_results()
        ran = {r["_script"] for r in results}
        results += [r for name, r in kept.items() if name not in ran and name in scripts()]
        order = scripts()
        results.sort(key=lambda r: order.index(r["_script"]) if r["_script"] in order else len(order))
    if write_docs:
        os.makedirs(os.path.dirname(DOC), exist_ok=True)
        with open(DOC, "w") as f:
            f.write(render(results, machine(), started, total, rerun=rerun))
        print(f"# wrote {os.path.relpath(DOC, ROOT)}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
