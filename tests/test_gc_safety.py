"""gc beside writers, links out of the folder, stray pickles, corrupt blobs (issue 18, items 1-3 and 9).

- a blob or pickle written before its commit record is never deleted by a gc in any process
  (writer leases and gc's marker: see dagger.store.leases), including the interleavings where
  gc lists the records before the commit and deletes after it;
- gc and every writer refuse to go through a symbolic link inside the experiment folder;
- a stray or torn pickle file shadows neither the pickle a record carries nor its blobs;
- the documented recovery from a corrupt blob works end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import records_io
from damage import pickle_bytes, pickle_file
from storedefs import build
from typer.testing import CliRunner

import dagger as dg
from dagger import cli
from dagger.errors import StoreError
from dagger.hashing import FORMAT_VERSION
from dagger.store import LocalStore
from dagger.store import leases as ls
from dagger.store.layout import SEGMENTS
from dagger.store.maintenance import gc, verify
from dagger.store.records import FIRST_REV, Records, blob_key, state_key

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("DAGGER_TEST_SRC") or os.path.join(os.path.dirname(HERE), "src")  # (another tree: a check)
RUN_SCRIPT = os.path.join(HERE, "reliability", "gc_stress_run.py")
runner = CliRunner()

SHA_A = "a" * 64
SHA_B = "b" * 64


def _commit(records: Records, sha: str, info: dict) -> None:
    records.write_meta({"format": FORMAT_VERSION, "sha": sha, **info})


def _array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(20_000)  # 160 kB: a blob


def _garbage_blob(directory: str) -> tuple[str, np.ndarray]:
    """A blob on the store that no record lists (its state's records were removed): gc's to take."""
    records = Records(LocalStore(directory))
    data = _array(1)
    info = records.save_pickle(SHA_A, {"x": data})
    _commit(records, SHA_A, info)
    records.close()
    records_io.remove(directory, SHA_A)  # (its meta/ file, or its frame in a segment)
    return info["blobs"][0][0], data


# ---- item 1: blobs written before their commit record --------------------------------------


_WRITER = """
import sys, numpy as np
from dagger.hashing import FORMAT_VERSION
from dagger.store import LocalStore
from dagger.store.records import Records
directory, sha = sys.argv[1], sys.argv[2]
records = Records(LocalStore(directory))
big = np.random.default_rng(7).random(20_000)
info = records.save_pickle(sha, {"x": big, "pad": bytes(range(256)) * 100}, inline=False)  # blob + pickle file
print("SAVED", info["blobs"][0][0], flush=True)
sys.stdin.readline()
records.write_meta({"format": FORMAT_VERSION, "sha": sha, **info})
print("COMMITTED", flush=True)
"""


def test_gc_in_another_process_keeps_the_blobs_and_pickle_of_a_state_not_yet_committed(tmp_path):
    directory = str(tmp_path / "exp")
    env = {**os.environ, "PYTHONPATH": SRC}
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, directory, SHA_B], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        line = writer.stdout.readline().split()
        assert line[0] == "SAVED", line
        blob = line[1]
        records = Records(LocalStore(directory))
        report = gc(records)  # the writer holds no state lock: only its lease protects its files
        assert report.removed["blobs"] == [] and report.removed["orphan_pickles"] == []
        assert report.live_locks == 1 and report.skipped == {"orphan_pickles": 1, "blobs": 1}
        assert records.store.exists(blob_key(blob)) and records.store.exists(state_key(SHA_B))
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == "COMMITTED"
    finally:
        writer.stdin.close()
        writer.wait(timeout=60)
    assert os.listdir(os.path.join(directory, "leases")) == []  # dropped once committed
    assert verify(records).ok
    assert np.array_equal(records.load_pickle(SHA_B)["x"], np.random.default_rng(7).random(20_000))


class _Interleaving(LocalStore):
    """A LocalStore that runs ``hook`` once, the first time gc lists ``folder`` (to land a writer there)."""

    def __init__(self, path: str, folder: str, hook) -> None:
        super().__init__(path)
        self.folder, self.hook = folder, hook

    def list(self, prefix: str):
        found = super().list(prefix)
        if prefix == self.folder and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return found


def test_a_state_committed_between_gcs_listing_and_its_deletion_keeps_the_blob_it_reused(tmp_path):
    # gc lists the blobs (one unreferenced), then a writer saves a state whose array is that very
    # blob (found there, so not written again) and commits it; gc must not delete it afterwards.
    directory = str(tmp_path / "exp")
    garbage, data = _garbage_blob(directory)

    def writer() -> None:
        records = Records(LocalStore(directory))
        _commit(records, SHA_B, records.save_pickle(SHA_B, {"x": data}))

    report = gc(Records(_Interleaving(directory, "blobs", writer)))
    assert report.removed["blobs"] == []
    records = Records(LocalStore(directory))
    assert verify(records).ok
    assert np.array_equal(records.load_pickle(SHA_B)["x"], data)


def test_a_writer_that_starts_while_gc_deletes_waits_for_it_and_rewrites_the_blob(tmp_path):
    # gc has read the leases (none) and is about to delete an unreferenced blob when a writer
    # starts saving a state with the same bytes: the writer must see gc's marker and wait, then
    # find the blob gone and write it again.
    directory = str(tmp_path / "exp")
    garbage, data = _garbage_blob(directory)
    saw_marker = threading.Event()

    class Watching(LocalStore):
        def get(self, key: str) -> bytes:
            raw = super().get(key)
            if key.startswith(f"{ls.FOLDER}/{ls.GC_PREFIX}"):
                saw_marker.set()
            return raw

    done: list[BaseException | None] = []

    def save() -> None:
        try:
            records = Records(Watching(directory))
            _commit(records, SHA_B, records.save_pickle(SHA_B, {"x": data}))
            done.append(None)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test
            done.append(exc)

    thread = threading.Thread(target=save)

    def start_writer() -> None:
        thread.start()
        assert saw_marker.wait(30), "the writer never looked for a gc marker"

    report = gc(Records(_Interleaving(directory, ls.FOLDER, start_writer)))
    thread.join(60)
    assert done == [None]
    assert report.removed["blobs"] == [blob_key(garbage)]  # deleted while the writer waited ...
    records = Records(LocalStore(directory))
    assert verify(records).ok  # ... and written again before its commit record
    assert np.array_equal(records.load_pickle(SHA_B)["x"], data)


def test_a_lease_left_by_a_dead_process_blocks_no_gc(tmp_path):
    directory = str(tmp_path / "exp")
    garbage, _ = _garbage_blob(directory)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = LocalStore(directory)
    lease = f"{ls.FOLDER}/{ls.WRITER_PREFIX}dead.json"
    store.put(lease, json.dumps({"host": ls._HOST, "pid": dead.pid, "time": 0, "token": "x"}).encode())
    report = gc(Records(store))
    assert lease in report.removed["locks"] and report.removed["blobs"] == [blob_key(garbage)]


def test_a_failed_save_drops_its_lease(exp_dir):
    # A state that fails after writing its blobs (here: its commit record cannot be written)
    # must not leave the process's lease up, which would keep every later gc from freeing anything.
    exp, _, _ = build(exp_dir, data_mb=0.5, model_mb=0.125, width=1, depth=1)
    records = exp.records
    info = records.save_pickle(SHA_A, {"x": _array(3)})
    assert os.listdir(os.path.join(exp_dir, "leases"))
    with pytest.raises(KeyError):
        records.write_meta({"format": FORMAT_VERSION, **info})  # no "sha": the record is never written
    records.release(SHA_A)
    assert os.listdir(os.path.join(exp_dir, "leases")) == []


# ---- item 2: symbolic links out of the experiment folder ----------------------------------------


def _outside(tmp_path) -> tuple[str, dict[str, bytes]]:
    folder = tmp_path / "outside"
    folder.mkdir()
    files = {
        "thesis.tex": b"\\documentclass{article} years of work",
        f"{'c' * 64}.lock": b'{"host": "elsewhere", "pid": 1, "time": 0}',
        "c" * 64: b"looks like a blob",
        f"{'d' * 64}.pkl": b"looks like a pickle",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return str(folder), files


def _snapshot(folder: str) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            path = os.path.join(dirpath, n)
            out[os.path.relpath(path, folder)] = open(path, "rb").read()
    return out


def _untouched(folder: str, files: dict[str, bytes]) -> bool:
    return _snapshot(folder) == files


def _link(directory: str, sub: str, target: str) -> str:
    path = os.path.join(directory, sub)
    if os.path.isdir(path):
        for dirpath, dirnames, names in os.walk(path, topdown=False):
            for n in names:
                os.remove(os.path.join(dirpath, n))
            for n in dirnames:
                os.rmdir(os.path.join(dirpath, n))
        os.rmdir(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    return path


@pytest.fixture
def stored(exp_dir):
    exp, root, leaves = build(exp_dir, data_mb=0.5, model_mb=0.125, width=2, depth=1)
    exp.run()
    pickle_file(exp_dir, leaves[0].sha())  # a states/ folder with a file in it
    exp.store.put("tmp/leftover", b"t")
    exp.store.lock("locks/x.lock", 60)  # (makes locks/)
    return exp, root, leaves


def _first_sub(directory: str, folder: str) -> str:
    return f"{folder}/{sorted(os.listdir(os.path.join(directory, folder)))[0]}"


@pytest.mark.parametrize("sub", ["locks", "tmp", "leases", "blobs/<first>", "states/<first>", "meta", "blobs"])
def test_gc_never_follows_a_link_out_of_the_folder(stored, tmp_path, sub):
    exp, _, _ = stored
    d = exp.directory
    os.makedirs(os.path.join(d, "leases"), exist_ok=True)
    if sub.endswith("<first>"):
        sub = _first_sub(d, sub.split("/")[0])
    outside, files = _outside(tmp_path)
    link = _link(d, sub, outside)
    for args in (["gc", d, "--dry-run"], ["gc", d], ["gc", d, "--unreachable"]):
        result = runner.invoke(cli.app, args)
        assert result.exit_code != 0, result.output
        assert "symbolic link" in result.output and link in result.output, result.output
        assert _untouched(outside, files) and os.path.islink(link)
    with pytest.raises(StoreError, match="symbolic link"):
        dg.Experiment(d).gc()
    assert _untouched(outside, files) and os.path.islink(link)


def _run_through_a_link(stored, tmp_path, sub: str) -> None:
    exp, _, _ = stored
    d = exp.directory
    os.makedirs(os.path.join(d, sub), exist_ok=True)
    outside, files = _outside(tmp_path)
    if sub == "blobs":  # the blobs moved to another disk, behind a link: reading them is fine, writing is not
        shutil.copytree(os.path.join(d, sub), outside, dirs_exist_ok=True)
        files = _snapshot(outside)
    link = _link(d, sub, outside)
    # One new state (all of them, with meta/ or segments/ gone).
    again, _, _ = build(d, data_mb=0.5, model_mb=0.125, width=3, depth=1)
    with pytest.raises(dg.RunFailedError) as info:
        again.run()
    assert "symbolic link" in str(info.value) and link in str(info.value)
    assert _untouched(outside, files) and os.path.islink(link)


@pytest.mark.parametrize("sub", ["locks", "tmp", "leases", "blobs"])
def test_a_run_never_writes_through_a_link_out_of_the_folder(stored, tmp_path, sub):
    _run_through_a_link(stored, tmp_path, sub)


def test_a_run_never_writes_commit_records_through_a_link_out_of_the_folder(layout, stored, tmp_path):
    # The folder the commit records go to: meta/ in the files layout, segments/ in the segments layout.
    _run_through_a_link(stored, tmp_path, "meta" if layout == "files" else SEGMENTS)


def test_an_experiment_folder_that_is_itself_a_link_works(tmp_path):
    real = tmp_path / "disk" / "exp"
    real.mkdir(parents=True)
    linked = tmp_path / "exp"
    os.symlink(real, linked)
    exp, _, leaves = build(str(linked), data_mb=0.5, model_mb=0.125, width=1, depth=1)
    exp.run()
    assert exp.gc().removed_count == 0 and exp.verify().ok
    assert records_io.every_sha(str(real)) == sorted(n.sha() for n in exp.graph.nodes)  # the records are in there


# ---- item 3: a stray or torn pickle file -------------------------------------------------------


@pytest.mark.parametrize("stray", ["torn", "garbage", "another state's"])
def test_a_stray_pickle_file_shadows_neither_the_carried_pickle_nor_its_blobs(stored, stray):
    exp, root, leaves = stored
    d = exp.directory
    sha = leaves[1].sha()  # its pickle travels in its first commit record
    assert not os.path.exists(os.path.join(d, state_key(sha)))
    raw = pickle_bytes(d, sha)
    model = dg.Experiment.restore(d).graph.node(sha).restore().model
    content = {"torn": raw[: len(raw) // 2], "garbage": b"\x00" * 100, "another state's": pickle_bytes(d, root.sha())}
    path = os.path.join(d, state_key(sha))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content[stray])
    report = exp.gc()
    assert report.removed["blobs"] == []
    assert verify(exp.records).ok or stray == "another state's"
    if stray != "another state's":
        restored = dg.Experiment.restore(d).graph.node(sha).restore()
        assert np.array_equal(restored.model, model)
        # a later revision (a new tag) moves the carried pickle out over the torn file, never losing it
        records = Records(LocalStore(d))
        meta = records.read_meta(sha, FIRST_REV)
        records.write_meta(meta, old_rev=FIRST_REV)
        assert np.array_equal(Records(LocalStore(d)).load_pickle(sha).model, model)
        assert verify(Records(LocalStore(d))).ok
    assert dg.Experiment(d).gc().removed["blobs"] == []
    assert not [p for p in verify(Records(LocalStore(d))).problems if "blob is missing" in p.message]


# ---- item 9: the documented recovery from a corrupt blob ----------------------------------------


def _script(directory: str, mode: str, n: int = 4) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC, "DAGGER_PROGRESS": "0"}
    return subprocess.run(
        [sys.executable, RUN_SCRIPT, directory, mode, str(n)], env=env, capture_output=True, text=True, timeout=300
    )


def _flip_a_byte(directory: str, sha: str) -> str:
    records = Records(LocalStore(directory))
    name = records.read_meta(sha, records.committed()[sha])["blobs"][0][0]
    path = os.path.join(directory, blob_key(name))
    raw = bytearray(open(path, "rb").read())
    raw[1000] ^= 0x01
    with open(path, "wb") as f:
        f.write(raw)
    return name


@pytest.mark.parametrize("recovery", ["verify --repair", "delete the records"])
def test_the_documented_recovery_from_a_corrupt_blob_works(tmp_path, recovery, layout):
    d = str(tmp_path / "exp")
    assert "RUN-DONE" in _script(d, "threads").stdout
    graph = dg.Experiment.restore(d).graph
    victim = graph.root.sha()  # (recomputing it loads no parent: see the report on __main__ classes)
    _flip_a_byte(d, victim)
    checked = _script(d, "check")
    assert victim in checked.stdout.split("CHECKED", 1)[1]  # damaged: it cannot be restored
    message = next(line for line in checked.stdout.splitlines() if line.startswith("DAMAGED"))
    assert "dagger verify --repair" in message and "run the experiment again" in message
    if recovery == "verify --repair":  # what the error says
        env = {**os.environ, "PYTHONPATH": SRC}
        cmd = [sys.executable, "-m", "dagger.cli", "verify", "--repair", d]
        repaired = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert "repaired" in repaired.stdout, repaired.stdout + repaired.stderr
    else:  # the older advice: delete the damaged state's records; the recomputed state replaces the blob
        records_io.remove(d, victim)  # (its meta/ files, or its frames in the segments)
    assert "RUN-DONE" in _script(d, "threads").stdout
    checked = _script(d, "check")
    assert checked.stdout.strip().endswith("CHECKED 4"), checked.stdout + checked.stderr  # all 4 restore, right values
    assert dg.Experiment(d).verify().ok
