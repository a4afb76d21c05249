"""Security: only restore() of a full state unpickles; no stored value becomes a path outside the folder."""

from __future__ import annotations

import json
import os
import pickle
import uuid
import warnings

import pytest
import records_io
import rel_scenarios as sc
from damage import edit_carried_pickle, pickle_file, sole_pickle_file
from typer.testing import CliRunner

import dagger as dg
from dagger.cli import app
from dagger.store import LocalStore
from dagger.store.records import FIRST_REV, Records, blob_key


class _Trap:
    """Unpickling this creates ``path``: proof that something loaded a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(directory: str, marker: str) -> list[str]:
    """Replace every state pickle by a trap, and put trap pickles into the metadata and the index.

    A pickle carried by a first commit record is replaced there; every other such
    state, and every state whose first record was replaced, also gets a trap in its
    own pickle file: both places a pickle can be kept hold live traps.
    """
    records = Records(LocalStore(directory))
    trap = pickle.dumps(_Trap(marker), protocol=5)
    header = json.dumps({"format": 1, "blobs": []}).encode() + b"\n"
    shas = list(records.committed())
    as_text = trap.decode("latin-1")
    for i, (sha, rev) in enumerate(records.committed().items()):
        if rev == FIRST_REV:
            edit_carried_pickle(directory, sha, lambda _: header + trap)
        if rev != FIRST_REV or i % 2 == 0:
            with open(pickle_file(directory, sha), "wb") as f:
                f.write(header + trap)

        def trap_in(meta: dict) -> None:
            meta.setdefault("results", {})["payload"] = {"pickle": as_text}
            meta["payload"] = as_text

        records_io.edit_json(directory, sha, trap_in, rev)  # its meta/ file, or its segment record
    index = json.load(open(os.path.join(directory, "index.json")))
    index["payload"] = as_text
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(directory, "states", "index.pkl"), "wb") as f:
        f.write(trap)
    return shas


@pytest.fixture
def planted(tmp_path, layout):
    directory = str(tmp_path / "exp")
    exp = sc.define(directory, branches=2, depth=2, size=8)
    exp.run(progress=False)
    assert sc.layout_of(directory) == layout
    marker = str(tmp_path / "PWNED")
    shas = _plant(directory, marker)
    return directory, marker, shas


def test_browsing_never_unpickles(planted, tmp_path):
    directory, marker, shas = planted
    for state_class in (None, sc.RelState):
        exp = dg.Experiment.restore(directory, state_class=state_class, slim=True)
        graph = exp.graph
        assert len(graph) == len(shas)
        for node in graph:
            _ = (node.tags, node.metadata, node.results, node.recipe, node.parent, node.children, node.lineage())
            _ = (node.sha(), node.dagger_seed, node.is_loaded, repr(node), node.size)
            with pytest.raises(dg.DeflatedStateError):
                node.weights  # noqa: B018 - slim states refuse, they never load
        both = graph.nodes.filter("branch:*") & graph.nodes.filter("!branch:1")
        assert len(both | graph.nodes.filter("branch:1", any=True)) == len(shas) - 1
        assert len(graph.nodes.to_records()) == len(shas)
        assert len(graph.nodes.to_dataframe()) == len(shas)
        _ = (graph.root, graph.leaves(), graph.nodes_at_distance(1), graph.to_text(), graph.node(shas[0][:8]))
        graph.to_graphviz().source  # noqa: B018
        assert graph.to_dot().count("->") == len(shas) - 1
        graph.draw(str(tmp_path / "tree.svg"))
        graph.draw(str(tmp_path / "tree.png"))
        assert graph._repr_mimebundle_()["image/svg+xml"].count('class="node"') == len(shas)
    assert not os.path.exists(marker)


def test_cli_never_unpickles(planted, tmp_path):
    directory, marker, shas = planted
    runner = CliRunner()
    commands = [
        ["show", directory],
        ["ls", directory],
        ["ls", directory, "--tag", "branch:0"],
        ["inspect", directory, shas[0][:8]],
        ["inspect", directory, shas[0][:8], "--json"],
        ["diff", directory, shas[0][:8], shas[1][:8]],
        ["results", directory],
        ["results", directory, "--csv", str(tmp_path / "r.csv")],
        ["draw", directory, "-o", str(tmp_path / "tree.svg")],
        ["plot", directory, "--x", "steps", "--y", "total", "-o", str(tmp_path / "plot.png")],
    ]
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    # verify and gc read the pickles' JSON headers, never the pickles: they report, and load nothing.
    for args in (["verify", directory], ["gc", directory, "--dry-run"], ["gc", directory]):
        result = runner.invoke(app, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.output)
    assert not os.path.exists(marker)


def test_restore_of_a_full_state_is_what_runs_the_code(planted):
    """The control: the planted pickles are live, and restore() is the one thing that loads them."""
    directory, marker, shas = planted
    # Every state, so both a trap carried by a first record and one in a pickle file are shown live.
    for sha in shas:
        node = dg.Experiment.restore(directory).graph.node(sha)
        with pytest.raises(Exception):  # noqa: B017 - the trap is not a state; loading it is the point
            node.restore()
        assert os.path.exists(marker), sha
        os.remove(marker)


# ---- no path derived from stored metadata leaves the folder -----------------------------------


@pytest.fixture
def forged(tmp_path, request, layout):
    """A finished experiment (in either layout) whose records point a blob at ``../../x``, a file outside the folder.

    The forged pickle header is in the leaf's pickle file, or (``indirect`` param ``"carried"``)
    in the copy its first commit record carries.
    """
    directory = str(tmp_path / "exp")
    exp = sc.define(directory, branches=1, depth=1, size=8)
    exp.run(progress=False)
    assert sc.layout_of(directory) == layout
    name = f"../../x-{uuid.uuid4().hex}"
    # Where the forged name would lead if it were used as a path: outside the folder.
    victim = os.path.normpath(os.path.join(directory, blob_key(name)))
    assert not victim.startswith(directory + os.sep)
    with open(victim, "wb") as f:
        f.write(b"precious")
    records = Records(LocalStore(directory))
    leaf = next(p._sha for p in exp._promises.values() if p.parent is not None)
    forged_blobs = [[name, 8]]

    def forge(raw: bytes) -> bytes:
        header = json.loads(raw[: raw.index(b"\n")])
        header["blobs"] = forged_blobs
        return json.dumps(header).encode() + raw[raw.index(b"\n") :]

    if getattr(request, "param", "file") == "carried":
        edit_carried_pickle(directory, leaf, forge)
    else:
        path = sole_pickle_file(directory, leaf)  # the only copy: beside an intact carried one it is ignored
        raw = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(forge(raw))
    rev = records.committed()[leaf]
    records_io.edit_json(directory, leaf, lambda meta: meta.update(blobs=forged_blobs), rev)
    index = json.load(open(os.path.join(directory, "index.json")))
    index["states"][leaf]["blobs"] = forged_blobs
    with open(os.path.join(directory, "index.json"), "w") as f:
        json.dump(index, f)
    yield directory, victim, leaf
    os.remove(victim)


@pytest.mark.parametrize("forged", ["file", "carried"], indirect=True)
def test_forged_blob_names_never_become_paths(forged):
    directory, victim, leaf = forged
    # Browsing either skips the forged record (read from meta/ or a segment, with a warning naming it) or,
    # trusting a matching index, lists the state, whose restore then refuses the forged name.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graph = dg.Experiment.restore(directory).graph
    if leaf in {n.sha() for n in graph}:
        with pytest.raises(dg.CorruptRecordError, match="not a blob name"):
            graph.node(leaf).restore()
    else:
        assert any(f"skipping state {leaf[:12]}" in str(w.message) for w in caught)
    # The forged pickle header is refused too, before any blob is read.
    with pytest.raises(dg.CorruptRecordError, match="not a blob name") as info:
        Records(LocalStore(directory)).load_pickle(leaf)
    assert "edited or forged" in str(info.value) and "dagger verify" in str(info.value)
    # Maintenance reads the forged records too: it reports, and never touches the file outside.
    report = dg.Experiment(directory).verify()
    assert not report.ok
    dg.Experiment(directory).gc(unreachable=True)
    result = CliRunner().invoke(app, ["inspect", directory, leaf[:8]])
    assert "precious" not in result.output
    assert open(victim, "rb").read() == b"precious"


@pytest.mark.parametrize("key", ["blobs/../../x", "../x", "/etc/passwd", "states/ab/../../../x", "blobs\\..\\..\\x"])
def test_store_keys_cannot_leave_the_folder(forged, key):
    directory, victim, _ = forged
    store = LocalStore(directory)
    for op in (store.get, store.exists, store.delete, store.size, lambda k: store.put(k, b"evil")):
        with pytest.raises(dg.CorruptRecordError, match="outside the experiment folder"):
            op(key)
    assert open(victim, "rb").read() == b"precious"
