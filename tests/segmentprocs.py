"""A real process that writes or reads commit-record segments, for tests/test_segments.py.

    python segmentprocs.py write FOLDER TAG COUNT        append COUNT records, print each key once committed
    python segmentprocs.py forever FOLDER TAG            append until killed, print each key once committed
    python segmentprocs.py read FOLDER KEYS STOPFILE     read until STOPFILE exists; exit 3 if a key is missing
    python segmentprocs.py s3 URL OPTIONS TAG COUNT MAX  batch COUNT records to S3 (MAX per object), then die
                                                          without closing; print each key once flushed
    python segmentprocs.py full FOLDER LIMIT             append until the kernel refuses to grow the file past
                                                          LIMIT bytes (RLIMIT_FSIZE: a real short write, then
                                                          EFBIG), print the error, lift the limit, append "after"

Payloads are derived from the key (:func:`payload`), so a reader can tell a
whole record from a damaged one. A committed key is printed (and stdout
flushed) only after ``append`` returned: the test kills the process at any
moment and then checks that every printed key is in the store, intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

from dagger.store import FsspecStore, LocalStore
from dagger.store.segments import BatchSegmentWriter, SegmentWriter, latest


def payload(key: str, rev: str = "1") -> bytes:
    """The payload a record of ``key`` at ``rev`` carries: a JSON record of varied length."""
    digest = hashlib.sha256(f"{key}/{rev}".encode()).hexdigest()
    return json.dumps({"sha": key, "rev": rev, "fill": digest * (1 + int(digest[0], 16) % 4)}).encode()


def write(folder: str, tag: str, count: int | None) -> None:
    writer = SegmentWriter(LocalStore(folder))
    i = 0
    while count is None or i < count:
        key = f"{tag}-{i}"
        writer.append(payload(key), key=key, rev="1")
        sys.stdout.write(key + "\n")
        sys.stdout.flush()
        i += 1
    writer.close()


def read(folder: str, keys_file: str, stop_file: str) -> None:
    with open(keys_file) as f:
        expected = json.load(f)  # {key: lowest acceptable rev}
    store = LocalStore(folder)
    reads = 0
    while not os.path.exists(stop_file) or reads == 0:
        found = latest(store)
        for key, rev in expected.items():
            record = found.get(key)
            if record is None or record.rev < rev or record.payload != payload(key, record.rev):
                print(f"read {reads}: {key} is {'missing' if record is None else 'wrong: ' + record.rev}")
                sys.exit(3)
        reads += 1
        if reads == 1:
            print("reading", flush=True)  # the test starts compacting once every reader reads
    print(reads)


def s3(url: str, options: str, tag: str, count: int, per_object: int) -> None:
    writer = BatchSegmentWriter(FsspecStore(url, **json.loads(options)), max_records=per_object, max_delay=0)
    printed = 0
    for i in range(count):
        key = f"{tag}-{i}"
        writer.append(payload(key), key=key, rev="1")
        committed = writer.objects * per_object  # every key of a written object is committed
        for k in range(printed, committed):
            sys.stdout.write(f"{tag}-{k}\n")
        sys.stdout.flush()
        printed = committed
    os._exit(0)  # a crash: no close, so the records still waiting are never written


def full(folder: str, limit: int) -> None:
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the kernel then fails the write instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    writer = SegmentWriter(LocalStore(folder))
    writer.append(payload("first"), key="first", rev="1")  # the segment exists before the limit applies
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    i = 0
    try:
        while True:
            key = f"k{i}"
            writer.append(payload(key), key=key, rev="1")
            print(key, flush=True)
            i += 1
    except OSError as exc:
        print(f"error {exc.errno}", flush=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    writer.append(payload("after"), key="after", rev="1")
    writer.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "write":
        write(args[0], args[1], int(args[2]))
    elif mode == "forever":
        write(args[0], args[1], None)
    elif mode == "read":
        read(*args)
    elif mode == "full":
        full(args[0], int(args[1]))
    elif mode == "s3":
        s3(args[0], args[1], args[2], int(args[3]), int(args[4]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
