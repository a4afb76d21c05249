"""A million states (issue 21): the segment layer's raw cost, and the current store at scale.

Two parts, each step in a fresh process (its peak memory taken from the kernel
when it exits):

- ``segments``: for each N, append N real commit records (the bytes a
  trivial state's first record has today, pickle included, each under its own
  hash) to segments, 4 writers of N/4, one ``write`` per record, no fsync; read
  them all back (newest revision per key); compact the 4 segments into one
  (fsync'd); read again. Bytes per record on disk, and what zlib would make of
  a compacted segment. Also: appends with ``fsync=True`` per record (1,000).
- ``store``: the current store (one file per state) on a tree with 8 children
  per node (``tree8``), tagged ``group:<i % 100>``: define, cold run, fully
  cached rerun, slim restore, tag query, peak memory; plain Dask running the
  same dependency graph of no-op tasks; files and bytes on disk per state.
- ``segstore``: the same as ``store`` with commit records in segments
  (``DAGGER_SEGMENTS=1``): bytes of metadata per state are the segments'.
- ``s3``: S3 requests per state and per run, counted at the client on a local S3
  server (moto), for the current store and for the segment layer's batches.

    python benchmarks/million.py                          # segments to 1,000,000; store to 100,000
    python benchmarks/million.py segments 100 1000000     # only the segment layer, these sizes
    python benchmarks/million.py store 100000             # only the current store, these sizes
    python benchmarks/million.py segstore 100000          # the store with its records in segments
    python benchmarks/million.py s3 500                   # only the S3 request counts, N states

Prints one JSON line.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import zlib

from _common import HERE, WORKER, emit, scratch, wait_for_quiet_disk

SEGMENT_SIZES = (100, 1000, 10_000, 100_000, 1_000_000)
STORE_SIZES = (100, 1000, 10_000, 100_000)
SHAPE = "tree8"
TAGS = 100
WRITERS = 4
FSYNC_RECORDS = 1000
# Issue 21's targets at 1,000,000 states (seconds), and the ones on memory and bytes.
TARGETS = {"define_s": 15.0, "run_s": 240.0, "cached_run_s": 20.0, "restore_s": 3.0, "tag_query_s": 0.1}


def _fresh(args: list[str]) -> tuple[dict, int]:
    """Run a Python script in a new interpreter; its JSON result and its peak resident memory in bytes."""
    env = dict(os.environ, DAGGER_PROGRESS="0", PYTHONHASHSEED="0")
    proc = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{err.decode()[-4000:]}")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss * 1024


def _worker(mode: str, folder: str, n: int, **options: object) -> tuple[dict, int]:
    return _fresh([WORKER, mode, folder, SHAPE, str(n), json.dumps(options)])


# ---- the segment layer ---------------------------------------------------------------------------------


def _template(folder: str) -> tuple[bytes, str]:
    """A real first commit record of a trivial state (pickle included), and the hash it names."""
    _worker("run", folder, 3)
    for path in sorted(glob.glob(os.path.join(folder, "meta", "*.json"))):
        record = json.loads(open(path, "rb").read())
        if record.get("parent") and "pickle" in record:
            return open(path, "rb").read(), record["sha"]
    raise RuntimeError("no commit record that carries a pickle was written")


def segments_child(folder: str, n: int, template_path: str) -> dict:
    """In a fresh process: append, read, compact and read again N records (see the module docstring)."""
    import hashlib

    from dagger.store import LocalStore
    from dagger.store.records import FIRST_REV
    from dagger.store.segments import SegmentWriter, compact, latest

    with open(template_path) as f:
        spec = json.load(f)
    record, sha = spec["record"].encode(), spec["sha"]
    head, _, tail = record.partition(sha.encode())
    keys = [hashlib.sha256(b"%d" % i).hexdigest() for i in range(n)]
    store = LocalStore(folder)
    per = -(-n // WRITERS)
    t0 = time.perf_counter()
    for w in range(0, n, per):
        writer = SegmentWriter(store)
        for key in keys[w : w + per]:
            writer.append(b"".join((head, key.encode(), tail)), key=key, rev=FIRST_REV)
        writer.close()
    t1 = time.perf_counter()
    paths = glob.glob(os.path.join(folder, "segments", "*.seg"))
    on_disk = sum(os.path.getsize(p) for p in paths)
    allocated = sum(os.stat(p).st_blocks * 512 for p in paths)
    t2 = time.perf_counter()
    found = latest(store)
    t3 = time.perf_counter()
    assert len(found) == n, len(found)
    del found
    report = compact(store, fsync=True)
    t4 = time.perf_counter()
    assert report.records_out == n, report
    found = latest(store)
    t5 = time.perf_counter()
    assert len(found) == n
    del found
    (compacted,) = glob.glob(os.path.join(folder, "segments", "*.seg"))
    with open(compacted, "rb") as f:
        packed = len(zlib.compress(f.read(), 6))
    out = {
        "n": n,
        "append_s": t1 - t0,
        "append_us_per_record": (t1 - t0) / n * 1e6,
        "read_s": t3 - t2,
        "compact_s": t4 - t3,
        "read_after_compact_s": t5 - t4,
        "segment_files": len(paths),
        "bytes_per_record": on_disk / n,
        "allocated_bytes_per_record": allocated / n,
        "payload_bytes": len(record),
        "zlib_bytes_per_record": packed / n,
    }
    if n >= FSYNC_RECORDS:
        durable = SegmentWriter(store, fsync=True)
        t6 = time.perf_counter()
        for key in keys[:FSYNC_RECORDS]:
            durable.append(b"".join((head, key.encode(), tail)), key=key, rev="1" + FIRST_REV[1:])
        durable.close()
        out["fsync_append_us_per_record"] = (time.perf_counter() - t6) / FSYNC_RECORDS * 1e6
    return out


def segments_part(sizes: tuple[int, ...]) -> dict:
    out: dict = {"segment_sizes": list(sizes)}
    with scratch() as folder:
        record, sha = _template(folder)
        template = os.path.join(folder, "template.json")
        with open(template, "w") as f:
            json.dump({"record": record.decode(), "sha": sha}, f)
        meta_only = len(
            json.dumps({k: v for k, v in json.loads(record).items() if k != "pickle"}, separators=(",", ":"))
        )
        out["record_bytes_with_pickle"] = len(record)
        out["record_bytes_without_pickle"] = meta_only
        for n in sizes:
            with scratch() as sub:
                res, peak = _fresh([__file__, "_segments_child", sub, str(n), template])
            res.pop("n")
            for key, value in res.items():
                out[f"seg_{n}_{key}"] = value
            out[f"seg_{n}_peak_mb"] = peak / 2**20
    return out


# ---- the current store ---------------------------------------------------------------------------------


def _disk(folder: str) -> tuple[int, int, int]:
    """Files, apparent bytes and allocated bytes under ``folder``."""
    files = size = allocated = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            st = os.stat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
            allocated += st.st_blocks * 512
    return files, size, allocated


COMPACT = """
import json, sys, time
from dagger.store import LocalStore
from dagger.store.maintenance import gc
from dagger.store.records import Records
t = time.perf_counter()
done = gc(Records(LocalStore(sys.argv[1])))
print(json.dumps({"compact_s": time.perf_counter() - t, "dropped": done.compacted}))
"""


def store_part(sizes: tuple[int, ...], segments: bool = False) -> dict:
    """The store on ``tree8`` at each size; ``segments``: commit records in segments (DAGGER_SEGMENTS=1)."""
    name = "segstore" if segments else "store"
    out: dict = {f"{name}_sizes": list(sizes), "shape": SHAPE, "tags": TAGS}
    with scratch() as probe:
        out[f"{name}_quiet_disk"] = wait_for_quiet_disk(probe, limit_s=300)
    if segments:
        os.environ["DAGGER_SEGMENTS"] = "1"
    else:
        os.environ["DAGGER_SEGMENTS"] = "0"  # one file per state (layout 2), as before segments
    for n in sizes:
        p = f"{name}_{n}_"
        with scratch() as folder:
            cold, peak = _worker("run", folder, n, tags=TAGS)
            assert cold["computed"] == n, cold
            out[p + "define_s"], out[p + "run_s"], out[p + "run_peak_mb"] = (
                cold["define_s"],
                cold["run_s"],
                peak / 2**20,
            )
            out[p + "run_us_per_state"] = cold["run_s"] / n * 1e6
            files, size, allocated = _disk(folder)
            meta_files, meta_size, meta_allocated = _disk(os.path.join(folder, "segments" if segments else "meta"))
            out[p + "files"], out[p + "bytes_per_state"], out[p + "allocated_bytes_per_state"] = (
                files,
                size / n,
                allocated / n,
            )
            out[p + "meta_bytes_per_state"], out[p + "meta_allocated_bytes_per_state"] = (
                meta_size / n,
                meta_allocated / n,
            )
            cached, peak = _worker("run", folder, n, tags=TAGS)
            assert cached["cached"] == n, cached
            out[p + "cached_define_s"], out[p + "cached_run_s"], out[p + "cached_peak_mb"] = (
                cached["define_s"],
                cached["run_s"],
                peak / 2**20,
            )
            restored, peak = _worker("restore", folder, n)
            assert restored["states"] == n, restored
            out[p + "restore_s"], out[p + "restore_peak_mb"] = restored["restore_s"], peak / 2**20
            tags, _ = _worker("tags", folder, n, repeat=5)
            out[p + "tag_one_s"], out[p + "tag_first_s"], out[p + "tag_and_or_s"] = (
                tags["one_tag_s"],
                tags["first_query_s"],
                tags["and_or_s"],
            )
            if segments:  # after `dagger gc` (it compacts the segments: compressed records)
                done, peak = _fresh(["-c", COMPACT, folder])
                out[p + "compact_s"], out[p + "compact_peak_mb"] = done["compact_s"], peak / 2**20
                _, meta_size, meta_allocated = _disk(os.path.join(folder, "segments"))
                out[p + "compacted_meta_bytes_per_state"] = meta_size / n
                out[p + "compacted_meta_allocated_bytes_per_state"] = meta_allocated / n
                restored, peak = _worker("restore", folder, n)
                assert restored["states"] == n, restored
                out[p + "compacted_restore_s"], out[p + "compacted_restore_peak_mb"] = (
                    restored["restore_s"],
                    peak / 2**20,
                )
        with scratch() as folder:
            dask, peak = _worker("dask", folder, n)
            out[p + "dask_run_s"], out[p + "dask_peak_mb"] = dask["run_s"], peak / 2**20
            out[p + "run_over_dask"] = out[p + "run_s"] / dask["run_s"]
    return out


# ---- object-store requests ---------------------------------------------------------------------------


def s3_part(n: int = 500, batch: int = 1000) -> dict:
    """S3 requests (PUT, GET, LIST, HEAD, ...) per state and per run, counted at the client on a local S3 server.

    The current store: a cold run, a fully cached rerun and a slim restore of an ``n``-state tree8. The
    segment layer: ``n`` records written in batches of ``batch``, then read back.
    """
    import fsspec
    from moto.server import ThreadedMotoServer

    import dagger as dg
    from dagger.store import FsspecStore
    from dagger.store.segments import BatchSegmentWriter, latest

    sys.path.insert(0, HERE)
    from _workload import State, define

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(key, value)
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    calls: dict[str, int] = {}
    try:
        options = {"key": "testing", "secret": "testing", "use_listings_cache": False}
        options["client_kwargs"] = {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"}
        fs = fsspec.filesystem("s3", **options)  # the instance every store below gets (fsspec caches it)
        import boto3

        endpoint = options["client_kwargs"]["endpoint_url"]
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
        real = fs._call_s3

        async def counting(method: str, *a: object, **kw: object) -> object:
            calls[method] = calls.get(method, 0) + 1
            return await real(method, *a, **kw)

        fs._call_s3 = counting

        def take() -> dict[str, int]:
            out = dict(calls)
            calls.clear()
            return out

        out: dict = {"s3_states": n, "s3_batch": batch}
        os.environ["DAGGER_SEGMENTS"] = "0"  # first one object per record (layout 2)
        exp = dg.Experiment("s3://bench/store", state_class=State, storage_options=options)
        define(exp, SHAPE, n)
        take()
        exp.run(progress=False)
        out["s3_store_cold_run_requests"] = take()
        exp = dg.Experiment("s3://bench/store", state_class=State, storage_options=options)
        define(exp, SHAPE, n)
        take()
        exp.run(progress=False)
        out["s3_store_cached_run_requests"] = take()
        dg.Experiment.restore("s3://bench/store", state_class=State, slim=True, storage_options=options)
        out["s3_store_restore_requests"] = take()
        os.environ["DAGGER_SEGMENTS"] = "1"  # the store with its records in segments (batches)
        try:
            exp = dg.Experiment("s3://bench/segstore", state_class=State, storage_options=options)
            define(exp, SHAPE, n)
            take()
            exp.run(progress=False)
            out["s3_segstore_cold_run_requests"] = take()
            exp = dg.Experiment("s3://bench/segstore", state_class=State, storage_options=options)
            define(exp, SHAPE, n)
            take()
            exp.run(progress=False)
            out["s3_segstore_cached_run_requests"] = take()
            dg.Experiment.restore("s3://bench/segstore", state_class=State, slim=True, storage_options=options)
            out["s3_segstore_restore_requests"] = take()
        finally:
            os.environ.pop("DAGGER_SEGMENTS", None)
        store = FsspecStore("s3://bench/segments", **options)
        with BatchSegmentWriter(store, max_records=batch, max_delay=0) as writer:
            for i in range(n):
                writer.append(b"x" * 700, key=f"{i:064x}", rev="0" * 20)
        out["s3_segments_write_requests"] = take()
        assert len(latest(store)) == n
        out["s3_segments_read_requests"] = take()
        for key in ("s3_store_cold_run_requests", "s3_segstore_cold_run_requests", "s3_segments_write_requests"):
            out[key.replace("_requests", "_per_state")] = {m: round(c / n, 3) for m, c in out[key].items()}
        return out
    finally:
        server.stop()


def main(*args: str) -> dict:
    out: dict = {"workload": "million", "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
    part = args[0] if args else "all"
    sizes = tuple(int(a) for a in args[1:])
    t0 = time.perf_counter()
    if part in ("all", "segments"):
        out.update(segments_part(sizes or SEGMENT_SIZES))
    if part in ("all", "store"):
        out.update(store_part(sizes or STORE_SIZES))
    if part in ("all", "segstore"):
        out.update(store_part(sizes or STORE_SIZES, segments=True))
    if part in ("all", "s3"):
        try:
            import moto.server  # noqa: F401  (the local S3 server: a test dependency)
        except ImportError:
            out["s3_skipped"] = "needs moto[server] (pip install 'dagger-experiments[test]')"
        else:
            out.update(s3_part(*sizes))
    out["seconds"] = time.perf_counter() - t0
    out["loadavg_after"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_segments_child":
        sys.path.insert(0, HERE)
        print(json.dumps(segments_child(sys.argv[2], int(sys.argv[3]), sys.argv[4])))
    else:
        emit(main(*sys.argv[1:]))
