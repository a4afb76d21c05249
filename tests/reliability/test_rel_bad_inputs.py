"""Bad inputs: each gives one exact error class, and a message that says what to do."""

from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
import uuid
import warnings

import pytest
import records_io
import rel_scenarios as sc
from damage import edit_carried_pickle, pickle_bytes, sole_pickle_file

import dagger as dg
from dagger.store import LocalStore
from dagger.store.records import Records, blob_key, new_rev, state_key


@pytest.fixture
def stored(tmp_path, layout):
    """A finished two-branch experiment and the key facts about one of its leaf states (once per layout)."""
    directory = str(tmp_path / "exp")
    exp = sc.define(directory, branches=2, depth=2)
    exp.run(progress=False)
    assert sc.layout_of(directory) == layout
    records = Records(LocalStore(directory))
    leaf = next(p for p in exp._promises.values() if p.depth == 2)
    return directory, records, leaf._sha


def _leaf_blob(directory, sha):
    raw = pickle_bytes(directory, sha)
    header = json.loads(raw[: raw.index(b"\n")])
    return header["blobs"][-1][0]


def _damage_pickle(directory, sha, where, change):
    """Replace ``sha``'s stored pickle bytes by ``change(bytes)`` where ``where`` says; return the key that holds them.

    ``"file"``: its own pickle file; ``"carried"``: the copy its first commit record carries (in either layout).
    """
    if where == "carried":
        return edit_carried_pickle(directory, sha, change)  # its meta/ file, or segments/<sha>.<rev>
    path = sole_pickle_file(directory, sha)  # the only copy (beside an intact carried one it shadows nothing)
    raw = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(change(raw))
    return state_key(sha)


def _restore(directory, sha):
    return dg.Experiment.restore(directory).graph.node(sha).restore()


def _problems(directory):
    return [str(p) for p in dg.Experiment(directory).verify().problems]


@pytest.mark.parametrize("where", ["file", "carried"])
@pytest.mark.parametrize("keep", [0.02, 0.5, 0.97])
def test_truncated_pickle(stored, keep, where):
    directory, records, sha = stored
    key = _damage_pickle(directory, sha, where, lambda raw: raw[: int(len(raw) * keep)])
    with pytest.raises(dg.CorruptRecordError) as info:
        _restore(directory, sha)
    assert type(info.value) is dg.CorruptRecordError
    assert "truncated" in str(info.value) and key in str(info.value)
    assert "dagger verify --repair" in str(info.value) and sha[:12] in str(info.value)
    assert any(sha[:12] in p for p in _problems(directory))


@pytest.mark.parametrize("where", ["file", "carried"])
def test_pickle_with_a_changed_byte(stored, where):
    directory, records, sha = stored

    def flip(raw):
        raw = bytearray(raw)
        raw[-3] ^= 0x01  # same size, still ends with STOP: only the checksum can tell
        return bytes(raw)

    key = _damage_pickle(directory, sha, where, flip)
    with pytest.raises(dg.CorruptRecordError) as info:
        _restore(directory, sha)
    assert type(info.value) is dg.CorruptRecordError
    assert "does not match its checksum" in str(info.value) and "dagger verify --repair" in str(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_blob(stored, damage):
    directory, records, sha = stored
    path = os.path.join(directory, blob_key(_leaf_blob(directory, sha)))
    raw = bytearray(open(path, "rb").read())
    if damage == "truncate":
        raw = raw[: len(raw) // 3]
    else:
        raw[len(raw) // 2] ^= 0xFF  # same size, different bytes
    with open(path, "wb") as f:
        f.write(raw)
    with pytest.raises(dg.CorruptRecordError) as info:
        _restore(directory, sha)
    assert type(info.value) is dg.CorruptRecordError
    assert "does not match its content hash" in str(info.value)
    assert "dagger verify" in str(info.value) and "recompute" in str(info.value)
    problems = _problems(directory)
    assert any(sha[:12] in p and "blob" in p for p in problems)
    # Other states that do not use that blob still restore.
    other = next(
        s
        for s in records.committed()
        if s != sha and dg.Experiment.restore(directory).graph.node(s).metadata["depth"] == 2
    )
    assert _restore(directory, other).history


def test_missing_blob(stored):
    directory, records, sha = stored
    os.remove(os.path.join(directory, blob_key(_leaf_blob(directory, sha))))
    with pytest.raises(dg.CorruptRecordError) as info:
        _restore(directory, sha)
    assert type(info.value) is dg.CorruptRecordError
    assert "is missing from the store" in str(info.value) and "dagger verify" in str(info.value)
    assert any(sha[:12] in p and "missing" in p for p in _problems(directory))


def test_corrupt_metadata_json(stored):
    directory, records, sha = stored
    rev = records.committed()[sha]
    where = records_io.write_bytes(directory, sha, b'{"format": 1, "sha": "', rev)  # a meta/ file or a segment record
    os.remove(os.path.join(directory, "index.json"))
    # Read by a process that opens the folder now (one that read the segments before keeps what it read:
    # a segment's earlier bytes never change, except by an edit like this one).
    with pytest.raises(dg.CorruptRecordError) as info:
        Records(LocalStore(directory)).read_meta(sha, rev)
    assert type(info.value) is dg.CorruptRecordError
    assert "not valid JSON" in str(info.value) and "dagger verify --repair" in str(info.value)
    assert where in str(info.value)
    # Browsing skips it with a warning that names it, and keeps every other state.
    with pytest.warns(dg.DaggerWarning, match=f"skipping state {sha[:12]}"):
        exp = dg.Experiment.restore(directory)
    assert len(exp.graph) == sc.n_states(2, 2) - 1
    assert any(sha[:12] in p for p in _problems(directory))


def test_corrupt_experiment_record(stored):
    directory, _, _ = stored
    with open(os.path.join(directory, "experiment.json"), "w") as f:
        f.write("not json")
    with pytest.raises(dg.CorruptRecordError, match="experiment.json is not valid JSON") as info:
        dg.Experiment.restore(directory)
    assert type(info.value) is dg.CorruptRecordError


def _newer_format(raw):
    head, sep, rest = raw.partition(b"\n")
    record = json.loads(head)
    record["format"] = 99
    return json.dumps(record).encode() + sep + rest


@pytest.mark.parametrize("what", ["experiment", "meta", "pickle", "carried pickle"])
def test_newer_format_version(stored, what):
    directory, records, sha = stored
    key = None
    if what in ("pickle", "carried pickle"):
        key = _damage_pickle(directory, sha, "file" if what == "pickle" else "carried", _newer_format)
    elif what == "experiment":
        path = os.path.join(directory, "experiment.json")
        raw = _newer_format(open(path, "rb").read())
        with open(path, "wb") as f:
            f.write(raw)
    else:  # a newer dagger writes a new revision of the record (where this folder keeps records), the old one goes
        old = records.committed()[sha]
        records_io.add_record(directory, sha, new_rev(), _newer_format(records_io.read_bytes(directory, sha, old)))
        records_io.remove(directory, sha, old)
    with pytest.raises(dg.FormatVersionError) as info:
        if key is not None:
            _restore(directory, sha)
        else:
            dg.Experiment.restore(directory)  # never skipped as "corrupt": a rerun would overwrite it
    assert "newer dagger (format 99" in str(info.value) and "Upgrade dagger" in str(info.value)
    assert key is None or key in str(info.value)


def test_state_class_that_cannot_be_imported(tmp_path):
    name = f"relmod_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import dagger as dg

            class GoneState(dg.ExperimentState):
                PROPERTIES = ["width"]

                def initialize_state(self, **kwargs):
                    self.weights = [0.0] * self.width

            class Grow(dg.Recipe):
                PROPERTIES = ["by"]

                def run(self, state):
                    state.weights.append(self.by)
                    return state
            """
        )
    )
    sys.path.insert(0, str(folder))
    try:
        mod = importlib.import_module(name)
        directory = str(tmp_path / "exp")
        exp = dg.Experiment(directory, state_class=mod.GoneState)
        child = mod.Grow(by=1.5)(exp.spawn_new_tree(width=3))
        exp.run(progress=False)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
    os.remove(folder / f"{name}.py")
    importlib.invalidate_caches()
    slim = dg.Experiment.restore(directory)  # slim browsing needs no code
    node = slim.graph.node(child._sha)
    assert node.recipe["properties"] == {"by": 1.5}
    with pytest.raises(dg.CodeNotFoundError) as info:
        node.restore()
    assert isinstance(info.value, ImportError)
    assert name in str(info.value) and "importable" in str(info.value) and child._sha[:12] in str(info.value)


def test_folder_with_files_from_other_tools(stored):
    directory, records, sha = stored
    foreign = {
        "notes.txt": b"my notes",
        "wandb/run-1/log.txt": b"x" * 100,
        "meta/README.md": b"# hi",
        "meta/.DS_Store": b"\x00\x01",
        "states/.DS_Store": b"\x00",
        "index.json.bak": b"{",
        ".git/HEAD": b"ref: refs/heads/main",
    }
    for key, data in foreign.items():
        os.makedirs(os.path.dirname(os.path.join(directory, key)), exist_ok=True)
        with open(os.path.join(directory, key), "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(directory, "meta", "subfolder"), exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning
        exp = dg.Experiment.restore(directory)
        assert len(exp.graph) == sc.n_states(2, 2)
        assert exp.graph.node(sha).restore().history
        report = sc.recover(directory, branches=2, depth=2)[0]
    assert len(report.cached) == sc.n_states(2, 2) and not report.computed
    assert dg.Experiment(directory).verify().states == sc.n_states(2, 2)
    dg.Experiment(directory).gc()
    assert len(dg.Experiment.restore(directory).graph) == sc.n_states(2, 2)
    for key in ("notes.txt", "wandb/run-1/log.txt", "index.json.bak", ".git/HEAD"):
        assert os.path.exists(os.path.join(directory, key)), f"gc removed {key}"
    assert sc.audit(directory)["problems"] == []


def _ambiguous_pair(exp, root):
    """Two children of ``root`` whose hashes share a prefix of 4+ hex digits (found by hashing only)."""
    seen = {}
    for k in range(5000):
        child = sc.Step(k=k)(root)
        prefix = child._sha[:4]
        if prefix in seen:
            return seen[prefix], child
        seen[prefix] = child
    raise AssertionError("no 4-digit collision among 5000 hashes")


def test_hash_arguments_that_are_not_hashes(tmp_path):
    exp = dg.Experiment(str(tmp_path / "exp"), state_class=sc.RelState)
    root = exp.spawn_new_tree(name="hashes", size=8)
    a, b = _ambiguous_pair(exp, root)
    exp.run(progress=False, targets=[a, b])
    graph = dg.Experiment.restore(str(tmp_path / "exp")).graph
    common = os.path.commonprefix([a._sha, b._sha])
    cases = {
        "../../etc/passwd": "is not a state hash",
        "": "is not a state hash",
        "a" * 65: "is not a state hash",
        a._sha.upper(): "is not a state hash",
        a._sha[:3]: "too short: give at least 4 hex digits",
        common: "is ambiguous",
    }
    for text, message in cases.items():
        for lookup in (graph.node, graph.resolve):
            with pytest.raises(dg.InvalidHashError, match=message) as info:
                lookup(text)
            assert type(info.value) is dg.InvalidHashError
            assert "give" in str(info.value)  # says what to give instead
    with pytest.raises(dg.InvalidHashError):
        graph.node(None)
    with pytest.raises(dg.StateNotFoundError, match="no state's hash starts with"):
        graph.node("f" * 64 if not a._sha.startswith("ffff") else "0" * 64)
    assert graph.node(a._sha[: len(common) + 1]).sha() == a._sha


def test_self_referencing_properties(tmp_path):
    exp = dg.Experiment(str(tmp_path / "exp"), state_class=sc.RelState)
    root = exp.spawn_new_tree(name="cycles", size=8)
    loop = [1, 2]
    loop.append(loop)
    knot = {"a": 1}
    knot["self"] = {"inner": knot}
    for value in (loop, knot):
        with pytest.raises(dg.UnhashableError, match="self-referencing") as info:
            sc.Step(k=value)(root)
        assert type(info.value) is dg.UnhashableError
        assert "break the cycle" in str(info.value) and "Step.k" in str(info.value)


@pytest.mark.slow
def test_huge_property_is_hashed_without_a_copy(tmp_path):
    # 1.5 million ints: a 12 MB list of pointers (60 MB with its int objects); the benchmark
    # runs the 100 MB list. Hashing streams it, so the peak grows by far less than the list.
    figures = sc.run_huge(1_500_000, str(tmp_path / "exp"))
    assert figures["list_bytes"] >= 12_000_000
    assert figures["growth"] < 0.25 * figures["list_bytes"]
