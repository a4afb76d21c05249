"""The `dagger` command on real experiments: every command, its errors and exit codes.

Also the pictures (draw, plot, Jupyter display) and the promise that browsing
never unpickles: a planted malicious pickle is never executed by any read command.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
from xml.etree import ElementTree

import paperdefs
import pytest
import records_io
from damage import carried_record, edit_carried_pickle, left_long_ago, pickle_bytes, pickle_file, sole_pickle_file
from typer.testing import CliRunner

import dagger as dg
from dagger import cli
from dagger.cli.draw import _branches
from dagger.store.records import encode_json, state_key

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(cli.app, [str(a) for a in args])


def one_line_error(result, code: int, *needles: str) -> None:
    """The command failed with ``code`` and said why in exactly one line, without a traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dagger: error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The paper's Listing 2 experiment, run once for the module (read-only in tests)."""
    directory = str(tmp_path_factory.mktemp("cli") / "exp")
    paperdefs.listing2(directory)
    return directory


@pytest.fixture
def listing(built, tmp_path):
    """A private copy of the Listing 2 experiment that a test may modify."""
    directory = str(tmp_path / "copy")
    shutil.copytree(built, directory)
    return directory


def graph_of(directory):
    return dg.Experiment.restore(directory).graph


def by_recipe(graph, name, tag):
    return next(n for n in graph.nodes.filter(tag) if (n.recipe or {}).get("name") == name)


def inject(directory, sha, **extra):
    """Write a new metadata revision of state ``sha`` with ``extra`` keys (as other tools would)."""
    exp = dg.Experiment.restore(directory)
    meta = dict(exp.graph.node(sha).metadata)
    meta.update(extra)
    exp.records.write_meta(meta, old_rev=meta["rev"])


# ---- show and ls ------------------------------------------------------------------------


def test_show_prints_every_state_with_recipe_tags_results_and_status(built):
    result = invoke("show", built)
    assert result.exit_code == 0, result.output
    graph = graph_of(built)
    for node in graph:
        line = next(ln for ln in result.stdout.splitlines() if node.sha()[:10] in ln)
        name = "root" if node.recipe is None else node.recipe["name"]
        assert name in line
        for tag in node.tags:
            assert tag in line
    train = by_recipe(graph, "TrainRecipe", "lr:0.1")
    line = next(ln for ln in result.stdout.splitlines() if train.sha()[:10] in ln)
    assert "lr=0.1" in line and "nb_epochs=100" in line
    assert f"accuracy={train.results['eval_fn']['accuracy']:.4g}" in line and "done" in line
    assert "└── " in result.stdout and "5 states" in result.stdout
    only = invoke("show", built, "--result", "nothing-like-this")
    assert only.exit_code == 0 and "accuracy=" not in only.stdout


def test_show_empty_experiment(tmp_path):
    exp = dg.Experiment(str(tmp_path / "e"), state_class=paperdefs.State)
    exp.spawn_new_tree(dataset_name="d", model_name="m")  # writes experiment.json, runs nothing
    result = invoke("show", tmp_path / "e")
    assert result.exit_code == 0 and "no states yet" in result.stdout


class Diverges(dg.Recipe):
    PROPERTIES = ["epoch"]

    def run(self, state):
        raise RuntimeError(f"loss diverged at epoch {self.epoch}")


def test_show_lists_states_whose_last_attempt_failed(tmp_path):
    exp = dg.Experiment(str(tmp_path / "e"), state_class=paperdefs.State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    bad = Diverges(epoch=3)(root)
    paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(bad)  # skipped: its parent failed
    paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run(raise_on_failure=False)
    out = invoke("show", tmp_path / "e").stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("failed"))
    assert bad._sha[:10] in line and "Diverges" in line and "loss diverged at epoch 3" in line
    assert "2 states" in out and "1 failed" in out


def test_ls_filters_like_nodeset_filter(built):
    graph = graph_of(built)
    cases = [
        (["--tag", "pruned"], graph.nodes.filter("pruned")),
        (["--tag", "pruned", "--tag", "!lr:0.01"], graph.nodes.filter("pruned", "!lr:0.01")),
        (["--tag", "lr:0.01", "--tag", "lr:0.1", "--any"], graph.nodes.filter("lr:0.01", "lr:0.1", any=True)),
        (["--tag", "lr:0.0?"], graph.nodes.filter("lr:0.0?")),
        ([], graph.nodes),
    ]
    for args, expected in cases:
        result = invoke("ls", built, "-q", *args)
        assert result.exit_code == 0, result.output
        assert result.stdout.split() == [n.sha() for n in expected], args
    assert len(graph.nodes.filter("pruned", "!lr:0.01")) == 1  # the cases really differ
    table = invoke("ls", built, "--tag", "pruned")
    assert table.exit_code == 0 and "2 of 5 states" in table.stdout
    assert all(n.sha()[:10] in table.stdout for n in graph.nodes.filter("pruned"))
    none = invoke("ls", built, "--tag", "no-such-tag")
    assert none.exit_code == 0 and "0 of 5 states" in none.stdout


# ---- inspect ----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["carried", "file"])
def test_inspect_shows_lineage_results_timings_and_files(exp_dir, layout, where):
    paperdefs.listing2(exp_dir)  # (on both layouts: the carrying record is a meta/ file or a segment record)
    listing = exp_dir
    graph = graph_of(listing)
    leaf = by_recipe(graph, "PruneRecipe", "lr:0.1")
    # The pickle is carried by the state's first commit record, or (once moved out) in its own file.
    if where == "file":
        key, size = state_key(leaf.sha()), os.path.getsize(pickle_file(listing, leaf.sha()))
    else:
        key, size = carried_record(listing, leaf.sha()), len(pickle_bytes(listing, leaf.sha()))
    result = invoke("inspect", listing, leaf.sha()[:8])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert leaf.sha() in out
    assert "PruneRecipe(pruning_technique=lowest_magnitude, pruning_fraction=0.2)" in out
    assert "paperdefs.PruneRecipe" in out and "lr:0.1, pruned" in out
    lineage = out.split("lineage")[1].split("results")[0]
    assert [n.sha()[:10] for n in leaf.lineage()] == [ln.split()[1] for ln in lineage.strip().splitlines()[1:]]
    assert "TrainRecipe(nb_epochs=100, lr=0.1)" in lineage
    assert "duration" in out and "worker" in out
    stored = out.split("stored files")[1].splitlines()[1]
    assert key in stored and ("(carried by the commit record)" in stored) == (where == "carried")
    train = leaf.parent
    result = invoke("inspect", listing, train.sha())
    assert f"accuracy  {train.results['eval_fn']['accuracy']:.4g}" in result.stdout
    assert leaf.sha()[:10] in result.stdout.split("children")[1]  # its child is listed
    data = json.loads(invoke("inspect", listing, leaf.sha()[:8], "--json").stdout)
    assert data["sha"] == leaf.sha() and data["stored"]["pickle"]["bytes"] == size
    assert data["stored"]["pickle"]["key"] == key
    assert data["stored"]["total_bytes"] == size and data["recipe"]["properties"]["pruning_fraction"] == 0.2


def test_inspect_lists_blobs_and_shows_environment_and_explain(tmp_path):
    exp = dg.Experiment(str(tmp_path / "e"), state_class=paperdefs.State, blob_threshold=1024)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    trained = paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    sha = trained._sha
    graph = graph_of(str(tmp_path / "e"))
    node = graph.node(sha)
    data = json.loads(invoke("inspect", tmp_path / "e", sha, "--json").stdout)
    expected = {name for name, _ in node.metadata["blobs"]}
    assert {b["key"].rsplit("/", 1)[-1] for b in data["stored"]["blobs"]} == expected
    assert len(expected) >= 1  # the data arrays are above the 1 KiB threshold
    # The datasets are inherited unchanged from the root, so their blobs are shared with it.
    assert any(b["shared_with_parent"] for b in data["stored"]["blobs"])
    assert all(b["present"] for b in data["stored"]["blobs"])
    inject(str(tmp_path / "e"), sha, environment={"python": "3.11.7", "torch": "2.13.0"}, explain="never stored")
    out = invoke("inspect", tmp_path / "e", sha).stdout
    assert "environment" in out and "torch" in out and "2.13.0" in out
    assert "explain" in out and "never stored" in out
    assert "shared with parent" in out and "blobs" in out and "not shared with the parent)" in out


# ---- diff --------------------------------------------------------------------------------


def test_diff_finds_where_lineages_part_and_what_differs(built):
    graph = graph_of(built)
    a = by_recipe(graph, "PruneRecipe", "lr:0.01")
    b = by_recipe(graph, "PruneRecipe", "lr:0.1")
    result = invoke("diff", built, a.sha()[:8], b.sha()[:8])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"lineages part after {graph.root.sha()[:10]} root(" in out
    step1 = next(ln for ln in out.splitlines() if ln.startswith("step 1"))
    assert "TrainRecipe(nb_epochs=100, lr=0.01)" in step1 and "TrainRecipe(nb_epochs=100, lr=0.1)" in step1
    assert "step 2" in out and "lr:0.01, pruned" in out
    assert "accuracy" not in out  # neither pruned state recorded results
    up = invoke("diff", built, a.sha()[:8], a.parent.sha()[:8]).stdout
    assert "B is an ancestor of A" in up and f"lineages part after {a.parent.sha()[:10]}" in up
    acc = a.parent.results["eval_fn"]["accuracy"]
    assert next(ln for ln in up.splitlines() if ln.startswith("accuracy")).split()[1:] == ["-", f"{acc:.4g}"]
    same = invoke("diff", built, a.sha(), a.sha()[:6])
    assert same.exit_code == 0 and "same state" in same.stdout


def test_diff_shows_result_and_environment_differences(listing):
    graph = graph_of(listing)
    a = by_recipe(graph, "TrainRecipe", "lr:0.01")
    b = by_recipe(graph, "TrainRecipe", "lr:0.1")
    # A state records only where its environment differed from the experiment's (dagger.environment).
    inject(
        listing,
        a.sha(),
        environment={"python": "3.11.7", "packages": {"numpy": "2.0"}},
        results={"eval_fn": {"accuracy": 0.5}},
    )
    inject(
        listing,
        b.sha(),
        environment={"python": "3.12.1", "packages": {"numpy": "2.0", "not-installed-pkg": "1.0"}},
        results={"eval_fn": {"accuracy": 0.75}},
    )
    out = invoke("diff", listing, a.sha()[:8], b.sha()[:8]).stdout
    assert next(ln for ln in out.splitlines() if ln.startswith("environment.python")).split()[1:] == [
        "3.11.7",
        "3.12.1",
    ]
    assert "environment.packages.numpy" not in out  # equal values are not differences
    pkg = next(ln for ln in out.splitlines() if ln.startswith("environment.packages.not-installed-pkg"))
    assert pkg.split()[1:] == ["-", "1.0"]
    assert next(ln for ln in out.splitlines() if ln.startswith("accuracy")).split()[1:] == [
        "0.5",
        "0.75",
        "(B-A",
        "0.25)",
    ]


# ---- results ------------------------------------------------------------------------------


def test_results_csv_has_one_row_per_state_with_lineage_properties_and_results(built, tmp_path):
    path = tmp_path / "r.csv"
    result = invoke("results", built, "--csv", path)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(path.open()))
    graph = graph_of(built)
    assert sorted(r["sha"] for r in rows) == sorted(n.sha() for n in graph)
    for row in rows:
        node = graph.node(row["sha"])
        assert row["tags"] == ", ".join(node.tags)
        assert row["dataset_name"] == "cifar-10"
        lr = [s.recipe["properties"]["lr"] for s in node.lineage() if s.recipe and s.recipe["name"] == "TrainRecipe"]
        assert row["TrainRecipe.lr"] == (str(lr[0]) if lr else "")
        acc = node.results.get("eval_fn", {}).get("accuracy")
        assert row["accuracy"] == ("" if acc is None else repr(acc))
    assert rows == list(csv.DictReader(io.StringIO(invoke("results", built, "--csv", "-").stdout)))
    pruned = list(csv.DictReader(io.StringIO(invoke("results", built, "--csv", "-", "-t", "pruned").stdout)))
    assert {r["sha"] for r in pruned} == {n.sha() for n in graph.nodes.filter("pruned")}
    one_line_error(invoke("results", built, "--csv", tmp_path), 1)  # a folder is not a writable file
    table = invoke("results", built)
    assert table.exit_code == 0 and "TrainRecipe.lr" in table.stdout and "accuracy" in table.stdout
    assert all(n.sha()[:10] in table.stdout for n in graph)


# ---- draw and plot ------------------------------------------------------------------------


def test_draw_svg_png_pdf(built, tmp_path):
    graph = graph_of(built)
    svg = tmp_path / "t.svg"
    result = invoke("draw", built, "-o", svg, "--result", "accuracy", "--highlight", "pruned")
    assert result.exit_code == 0, result.output
    text = svg.read_text()
    assert "<svg" in text and all(n.sha()[:8] in text for n in graph)
    assert "accuracy=0.8667" in text and "lr:0.1 · pruned" in text
    assert text.count('stroke-width="3"') == 2  # the two highlighted (pruned) states get a thick border
    boxes = ElementTree.fromstring(text).iter("{http://www.w3.org/2000/svg}g")
    thick = {g.get("data-sha") for g in boxes if g.find("{http://www.w3.org/2000/svg}rect[@stroke-width='3']") is not None}
    assert thick == {n.sha() for n in graph.nodes.filter("pruned")}
    png, pdf = tmp_path / "t.png", tmp_path / "t.pdf"
    assert invoke("draw", built, "--output", png).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert invoke("draw", built, "-o", pdf).exit_code == 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    one_line_error(invoke("draw", built, "-o", tmp_path / "t.gif"), 2, "svg, .png or .pdf")
    assert not (tmp_path / "t.gif").exists()


def _measure(state):
    w = state.model["w"]
    return {"sparsity": float((w == 0).mean()), "accuracy": paperdefs.eval_model(state.model, state.eval_data)}


measure = dg.Function(_measure)


@pytest.fixture(scope="module")
def curve(tmp_path_factory):
    """Two branches (lr 0.01, 0.1): train, then two rounds of pruning, measured at every step.

    A third branch ("alt") forks from lr 0.1's first pruned state and prunes harder.
    """
    directory = str(tmp_path_factory.mktemp("curve") / "exp")
    exp = dg.Experiment(directory, state_class=paperdefs.State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    measure(root)  # all-zero weights: sparsity 1
    first_pruned = {}
    for lr in (0.01, 0.1):
        with exp.tag(f"lr:{lr}"):
            s = paperdefs.TrainRecipe(nb_epochs=20, lr=lr)(root)
            measure(s)
            for fraction in (0.2, 0.5):
                s = paperdefs.PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=fraction)(s)
                measure(s)
                first_pruned.setdefault(lr, s)
    with exp.tag("lr:0.1", "alt"):
        measure(paperdefs.PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.8)(first_pruned[0.1]))
    exp.run()
    return directory


def test_plot_draws_one_line_per_branch(curve, tmp_path):
    import matplotlib.image

    out = tmp_path / "plot.png"
    result = invoke("plot", curve, "--x", "sparsity", "--y", "accuracy", "-o", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert width > 400 and height > 300
    graph = graph_of(curve)
    lines = _branches(graph, "sparsity", "accuracy")
    # int(6 * 0.2) = 1, then int(6 * 0.5) = 3, or int(6 * 0.8) = 4 of the 6 weights are zeroed.
    assert [(label, xs) for label, xs, _ in lines] == [
        ("lr:0.01", [0.0, 1 / 6, 0.5]),
        ("lr:0.1", [0.0, 1 / 6, 0.5]),
        ("lr:0.1, alt", [1 / 6, 4 / 6]),  # starts where it leaves the lr:0.1 line: shared states drawn once
    ]
    assert all(0.0 <= y <= 1.0 for _, _, ys in lines for y in ys)
    assert lines[2][2][0] == lines[1][2][1]  # the fork point is the same state on both lines
    with_root = _branches(graph, "sparsity", "accuracy", include_root=True)
    assert [xs[:2] for _, xs, _ in with_root[:2]] == [[1.0, 0.0], [1.0, 0.0]]
    only_alt = _branches(graph, "sparsity", "accuracy", patterns=["alt"])
    assert [(label, xs) for label, xs, _ in only_alt] == [("lr:0.1, alt", [4 / 6])]
    by_lr = _branches(graph, "lr", "accuracy")  # a recipe property found by its short name
    assert sorted(xs[0] for _, xs, _ in by_lr) == [0.01, 0.1, 0.1]
    flags = invoke("plot", curve, "--x", "sparsity", "--y", "accuracy", "-o", out, "--root", "--tag", "lr:0.1")
    assert flags.exit_code == 0 and "2 branches" in flags.stderr
    missing = invoke("plot", curve, "--x", "loss", "--y", "accuracy", "-o", tmp_path / "p.png")
    one_line_error(missing, 1, "'loss'", "sparsity")
    one_line_error(invoke("plot", curve, "--x", "sparsity", "--y", "accuracy", "-o", tmp_path / "p.jpg"), 2)


def test_tree_displays_itself_in_jupyter_and_as_a_dataframe(built):
    graph = graph_of(built)
    bundle = graph._repr_mimebundle_()
    assert "<svg" in bundle["image/svg+xml"] and all(n.sha()[:8] in bundle["image/svg+xml"] for n in graph)
    assert bundle["text/plain"] == graph.to_text()
    df = graph.nodes.filter("lr:*").to_dataframe()
    assert list(df["sha"]) == [n.sha() for n in graph.nodes.filter("lr:*")]
    assert {"tags", "TrainRecipe.lr", "accuracy"} <= set(df.columns)
    assert sorted(df["TrainRecipe.lr"]) == [0.01, 0.01, 0.1, 0.1]


# ---- gc and verify -------------------------------------------------------------------------


def test_verify_ok_then_problem_found(listing):
    ok = invoke("verify", listing)
    assert ok.exit_code == 0, ok.output
    data = json.loads(invoke("verify", listing, "--json").stdout)
    assert data["ok"] is True
    leaf = by_recipe(graph_of(listing), "PruneRecipe", "lr:0.1")
    os.remove(sole_pickle_file(listing, leaf.sha()))
    bad = invoke("verify", listing)
    assert bad.exit_code == 1
    assert leaf.sha()[:12] in bad.stdout


def test_gc_dry_run_then_removes_leftovers(listing):
    junk = os.path.join(listing, "tmp", "leftover")
    os.makedirs(os.path.dirname(junk), exist_ok=True)
    with open(junk, "wb") as f:
        f.write(b"half a write")
    left_long_ago(junk)  # a write killed an hour ago (gc leaves fresh ones to their writers)
    dry = invoke("gc", listing, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert os.path.exists(junk) and "temporary files" in dry.stdout
    assert invoke("gc", listing, "--json").exit_code == 0
    assert not os.path.exists(junk)
    assert len(graph_of(listing)) == 5  # every committed state survives


# ---- errors and exit codes -----------------------------------------------------------------


def test_hash_arguments_that_are_not_hashes_are_refused(built):
    for bad in ("../x", "", "xyz", "ab", "5d42/../../etc"):
        one_line_error(invoke("inspect", built, bad), 2)
    one_line_error(invoke("diff", built, "../x", "abcd"), 2, "not a state hash")


def test_unknown_and_ambiguous_prefixes(listing):
    graph = graph_of(listing)
    shas = [n.sha() for n in graph]
    unknown = next(p for p in ("0000", "ffff", "1234", "abcd", "9999") if not any(s.startswith(p) for s in shas))
    one_line_error(invoke("inspect", listing, unknown), 1, unknown)
    one_line_error(invoke("diff", listing, shas[0], unknown), 1, unknown)
    # A second committed state whose hash shares 6 digits with a real one makes the prefix ambiguous.
    real = shas[-1]
    twin = real[:6] + ("f" if real[6] != "f" else "e") + "0" * 57
    meta = dict(graph.node(real).metadata, sha=twin)
    meta.pop("rev")
    dg.Experiment.restore(listing).records.write_meta(meta)
    one_line_error(invoke("inspect", listing, real[:6]), 2, "ambiguous")
    assert invoke("inspect", listing, real[:7].upper()).exit_code == 0  # more digits (any case) resolve it


def test_not_an_experiment_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    for command in (["show"], ["ls"], ["results"], ["verify"], ["inspect", "abcd"]):
        for where, needle in ((tmp_path / "empty", "no dagger experiment"), (tmp_path / "nope", "does not exist")):
            one_line_error(invoke(command[0], where, *command[1:]), 2, needle)
        one_line_error(invoke(command[0], tmp_path / "file.txt", *command[1:]), 2, "is a file")
    assert not (tmp_path / "nope").exists()  # looking did not create the folder


def test_corrupt_metadata_is_a_one_line_warning(exp_dir, layout):
    paperdefs.listing2(exp_dir)
    leaf = by_recipe(graph_of(exp_dir), "PruneRecipe", "lr:0.1")
    # a torn write (in a segment: a whole frame whose payload is torn JSON)
    where = records_io.write_bytes(exp_dir, leaf.sha(), b'{"format": 1, "sha": ')
    os.remove(os.path.join(exp_dir, "index.json"))  # so the record itself is read
    result = invoke("show", exp_dir)
    assert result.exit_code == 0 and "4 states" in result.stdout and leaf.sha()[:10] not in result.stdout
    warning = [ln for ln in result.stderr.splitlines() if ln.startswith("dagger: warning: ")]
    assert len(warning) == 1 and leaf.sha()[:12] in warning[0] and "Traceback" not in result.stderr
    assert where in warning[0]  # named as it is stored: its meta/ file, or segments/<sha>.<rev>


def test_usage_errors_and_help(built):
    assert invoke("show").exit_code == 2  # missing argument
    assert invoke("frobnicate", built).exit_code == 2
    assert invoke("ls", built, "--no-such-option").exit_code == 2
    for command in ("show", "ls", "inspect", "diff", "results", "draw", "plot", "gc", "verify"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example: dagger " + command in result.stdout, command


def test_console_script_exit_codes_and_slim_import(built):
    ok = subprocess.run([sys.executable, "-m", "dagger.cli", "ls", built, "-q"], capture_output=True, text=True)
    assert ok.returncode == 0 and len(ok.stdout.split()) == 5
    bad = subprocess.run([sys.executable, "-m", "dagger.cli", "inspect", built, "../x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    probe = "import sys, dagger; print(sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"  # `import dagger` never pulls in the CLI's libraries


# ---- reading never unpickles ------------------------------------------------------------------


class _CreatesFile:
    """Unpickling this calls ``open(path, "w")``: a stand-in for arbitrary code in a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_read_commands_never_unpickle(exp_dir, layout, tmp_path):
    # (on both layouts: a carried pickle sits in a meta/ file or in a segment record)
    paperdefs.listing2(exp_dir)
    listing = exp_dir
    marker = tmp_path / "pwned"
    payload = encode_json({"format": 1, "blobs": []}) + b"\n" + pickle.dumps(_CreatesFile(str(marker)))
    graph = graph_of(listing)
    shas = [n.sha() for n in graph]
    # Every pickle a first commit record carries is replaced; every other state also gets the payload
    # in its own pickle file (which readers look at first): both places a pickle is kept hold one.
    for i, sha in enumerate(shas):
        edit_carried_pickle(listing, sha, lambda _: payload)
        if i % 2:
            with open(pickle_file(listing, sha), "wb") as f:
                f.write(payload)
    stray = "ab" * 32
    os.makedirs(os.path.dirname(os.path.join(listing, state_key(stray))), exist_ok=True)
    with open(os.path.join(listing, state_key(stray)), "wb") as f:
        f.write(payload)
    a, b = shas[-1], shas[-2]
    commands = [
        ["show", listing],
        ["ls", listing, "--tag", "pruned"],
        ["inspect", listing, a[:8]],
        ["inspect", listing, a, "--json"],
        ["diff", listing, a, b],
        ["results", listing],
        ["results", listing, "--csv", tmp_path / "r.csv"],
        ["draw", listing, "-o", tmp_path / "t.svg"],
        ["draw", listing, "-o", tmp_path / "t.png"],
        ["plot", listing, "--x", "lr", "--y", "accuracy", "-o", tmp_path / "p.png"],
    ]
    for args in commands:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert not marker.exists(), f"`dagger {args[0]}` unpickled a state"
    # The planted pickles are live: restoring a state (which does unpickle) runs it, from a file or a record.
    for sha in (a, b):
        with pytest.raises(Exception):  # noqa: B017 - the file object is not a state; what matters is the side effect
            graph_of(listing).node(sha).restore()
        assert marker.exists(), sha
        marker.unlink()
