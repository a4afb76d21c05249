"""A pickle names the state it belongs to; with a signing key, only pickles signed by it are unpickled."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import records_io
from damage import edit_carried_pickle, pickle_bytes

import dagger as dg
from dagger.errors import UntrustedPickleError
from dagger.store import digest, signing
from dagger.store.records import FIRST_REV, Records

KEY = "k" * 32  # a test key (at least 16 characters)


class Trap:
    """Unpickling this creates ``path``: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def build(directory: str, **options):
    from paperdefs import PruneRecipe, State, TrainRecipe

    exp = dg.Experiment(directory, state_class=State, **options)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    a = TrainRecipe(nb_epochs=1, lr=0.1)(root)
    b = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(a)
    return exp, {"root": root.sha(), "a": a.sha(), "b": b.sha()}


def plant(directory: str, sha: str, payload: bytes, header: dict) -> None:
    """Replace ``sha``'s carried pickle with ``payload`` and a header the attacker wrote."""
    algorithm = json.load(open(os.path.join(directory, "experiment.json")))["blob_hash"]
    header = {"format": 1, "blobs": [], algorithm: digest.hexdigest(algorithm, payload), **header}
    raw = json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload
    edit_carried_pickle(directory, sha, lambda _: raw)
    fix_size(directory, sha, len(raw))


def fix_size(directory: str, sha: str, size: int) -> None:
    """Make the record's pickle size agree (so that only the binding can tell)."""

    def edit(record: dict) -> None:
        record["pickle_bytes"] = size

    records_io.edit_json(directory, sha, edit, FIRST_REV)
    index = os.path.join(directory, "index.json")
    if os.path.exists(index):  # derived from the records just edited (verify would report it stale)
        os.remove(index)


# ---- the pickle names its state ---------------------------------------------------------------


def test_a_pickle_copied_from_another_state_is_refused_and_reported(exp_dir, layout):
    exp, sha = build(exp_dir)
    exp.run(progress=False)
    root_pickle = pickle_bytes(exp_dir, sha["root"])
    where = edit_carried_pickle(exp_dir, sha["a"], lambda _: root_pickle)
    assert where.startswith("segments/" if layout == "segments" else "meta/")
    fix_size(exp_dir, sha["a"], len(root_pickle))
    node = dg.Experiment.restore(exp_dir).graph.node(sha["a"])
    with pytest.raises(UntrustedPickleError, match=f"state {sha['a'][:12]}.*pickle of state {sha['root'][:12]}"):
        node.restore()
    report = dg.Experiment(exp_dir).verify()
    assert not report.ok
    (problem,) = report.problems
    assert problem.state == sha["a"] and "copied from another state" in problem.message
    assert dg.Experiment.restore(exp_dir).graph.node(sha["b"]).restore().model is not None  # others unharmed


def test_pickles_written_before_they_named_their_state_still_restore(exp_dir, layout):
    exp, sha = build(exp_dir)
    exp.run(progress=False)
    for s in sha.values():  # strip the binding, as an older dagger wrote headers

        def legacy(raw: bytes) -> bytes:
            newline = raw.find(b"\n")
            header = json.loads(raw[:newline])
            del header["sha"]
            return json.dumps(header, separators=(",", ":")).encode() + raw[newline:]

        path = edit_carried_pickle(exp_dir, s, legacy)
        fix_size(exp_dir, s, len(Records(exp.store).read_pickle(s)[1]))
        assert path
    graph = dg.Experiment.restore(exp_dir).graph
    assert graph.node(sha["b"]).restore().model is not None
    report = dg.Experiment(exp_dir).verify()
    assert report.ok, str(report)
    assert any("older dagger" in n and "3 state pickles" in n for n in report.notes)


def test_an_edited_result_in_the_index_is_reported_by_verify(exp_dir):
    from paperdefs import eval_fn

    exp, sha = build(exp_dir)
    exp.run(progress=False)
    exp2, _ = build(exp_dir)
    eval_fn(exp2._promises[sha["b"]])
    exp2.run(progress=False)
    assert dg.Experiment(exp_dir).verify().ok
    path = os.path.join(exp_dir, "index.json")
    text = open(path).read()
    assert '"accuracy":' in text
    edited = text.replace('"accuracy":0.', '"accuracy":9.', 1)
    assert edited != text
    with open(path, "w") as f:
        f.write(edited)
    report = dg.Experiment(exp_dir).verify()
    assert not report.ok
    (problem,) = report.problems
    assert problem.state == sha["b"] and "results" in problem.message and "delete index.json" in problem.message
    os.remove(path)  # derived: rebuilt from the records, which hold the truth
    restored = dg.Experiment.restore(exp_dir).graph.node(sha["b"]).results["eval_fn"]["accuracy"]
    assert restored < 1.0 and dg.Experiment(exp_dir).verify().ok


def test_an_edited_tag_column_in_the_index_is_reported(exp_dir):
    exp, sha = build(exp_dir)
    with exp.tag("x"):
        pass
    exp.run(progress=False)
    path = os.path.join(exp_dir, "index.json")
    index = json.load(open(path))
    index["columns"]["tags"][-1] = ["forged"]
    with open(path, "w") as f:
        f.write(json.dumps(index, separators=(",", ":")))
    report = dg.Experiment(exp_dir).verify()
    assert any("tags (column)" in p.message for p in report.problems), str(report)


# ---- the signing key -----------------------------------------------------------------------------


def test_a_signed_experiment_restores_and_verifies(exp_dir, layout):
    exp, sha = build(exp_dir, signing_key=KEY)
    exp.run(progress=False)
    header = json.loads(pickle_bytes(exp_dir, sha["b"]).split(b"\n", 1)[0])
    assert header["sha"] == sha["b"] and len(header["hmac"]) == 64
    restored = dg.Experiment.restore(exp_dir, signing_key=KEY)
    assert restored.graph.node(sha["b"]).restore().model is not None
    assert restored.verify().ok
    # Opened with another key, nothing is unpickled and verify says why.
    other = dg.Experiment.restore(exp_dir, signing_key="o" * 32)
    with pytest.raises(UntrustedPickleError, match="signature does not match"):
        other.graph.node(sha["b"]).restore()
    assert {p.state for p in other.verify().problems} == set(sha.values())


@pytest.mark.parametrize("forgery", ["unsigned", "other key", "signed for another state", "legacy header"])
def test_a_planted_pickle_with_a_rewritten_checksum_never_runs(exp_dir, tmp_path, layout, forgery):
    exp, sha = build(exp_dir, signing_key=KEY)
    exp.run(progress=False)
    marker = str(tmp_path / "PWNED")
    payload = pickle.dumps(Trap(marker), protocol=5)
    header: dict = {"sha": sha["a"]}
    if forgery == "other key":
        header["hmac"] = signing.signature(b"x" * 32, sha["a"], "[]", payload)
    elif forgery == "signed for another state":  # a genuine signature, but of another state's bytes
        header["hmac"] = signing.signature(KEY.encode(), sha["root"], "[]", payload)
    elif forgery == "legacy header":
        header = {}
    plant(exp_dir, sha["a"], payload, header)
    node = dg.Experiment.restore(exp_dir, signing_key=KEY).graph.node(sha["a"])
    with pytest.raises(UntrustedPickleError, match=f"state {sha['a'][:12]}: refusing to unpickle") as caught:
        node.restore()
    reason = {"unsigned": "no signature", "legacy header": "no signature"}.get(forgery, "does not match")
    assert reason in str(caught.value)
    assert not os.path.exists(marker)
    assert any(
        p.state == sha["a"] and "not signed" in p.message
        for p in dg.Experiment(exp_dir, signing_key=KEY).verify().problems
    )
    assert not os.path.exists(marker)
    # The control: without the key the same pickle is unpickled, so the trap above was live.
    with pytest.raises(Exception):  # noqa: B017 - the trap is not a state
        dg.Experiment.restore(exp_dir).graph.node(sha["a"]).restore()
    assert os.path.exists(marker)


def test_the_key_comes_from_the_environment_and_guards_workers(exp_dir, tmp_path, layout, monkeypatch):
    from paperdefs import PruneRecipe

    monkeypatch.setenv(signing.ENV_KEY, KEY)
    exp, sha = build(exp_dir)  # no signing_key=: $DAGGER_SIGNING_KEY is the key
    exp.run(progress=False, scheduler="processes")
    assert "hmac" in json.loads(pickle_bytes(exp_dir, sha["b"]).split(b"\n", 1)[0])
    marker = str(tmp_path / "PWNED")
    payload = pickle.dumps(Trap(marker), protocol=5)
    plant(exp_dir, sha["a"], payload, {"sha": sha["a"]})
    # A new child of the planted state: the worker that would load its parent refuses first.
    exp2, _ = build(exp_dir)
    PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.1)(exp2._promises[sha["a"]])
    with pytest.raises(dg.RunFailedError, match="refusing to unpickle"):
        exp2.run(progress=False, scheduler="processes")
    assert not os.path.exists(marker)
    assert [p.state for p in dg.Experiment(exp_dir).verify().problems] == [sha["a"]]
    monkeypatch.delenv(signing.ENV_KEY)
    # Without a key a forger who rewrote the checksum and named the state goes unseen: that is what the key is for.
    assert dg.Experiment(exp_dir).verify().ok


def test_a_short_key_is_refused(exp_dir):
    with pytest.raises(ValueError, match="at least 16"):
        dg.Experiment(exp_dir, signing_key="short")
