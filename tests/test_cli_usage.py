"""The dagger command's usage errors (one line, exit 2), `--storage-option` (S3 through a real
S3-compatible server), and `results` columns for a recipe that repeats on a lineage."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
from paperdefs import PruneRecipe, State, TrainRecipe, listing2

import dagger as dg

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def dagger(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    """The real `dagger` command, in a subprocess (as a user runs it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "dagger.cli", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd
    )


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("cli") / "prune")
    listing2(directory)
    return directory


@pytest.mark.parametrize(
    "args, needle",
    [
        (["show"], "Missing argument 'DIR'"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["ls", "{dir}", "--no-such-option"], "No such option: --no-such-option"),
        (["plot", "{dir}", "--x", "sparsity"], "Missing option"),
        (["inspect", "{dir}", "583d", "--json=3"], "does not take a value"),
        (["results", "{dir}", "--tag"], "requires an argument"),
        (["--storage-option", "no-equals-sign", "show", "{dir}"], "KEY=VALUE"),
        (["-O", "anon=true", "-O", "anon.x=1", "show", "{dir}"], "cannot also hold keys"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(listing, args, needle):
    result = dagger(*(a.format(dir=listing) for a in args))
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no box, no usage block
    assert lines[0].startswith("dagger: error: ") and needle in lines[0], lines[0]
    assert "╭" not in result.stderr and "Traceback" not in result.stderr


def test_help_still_works(listing):
    result = dagger("show", "--help")
    assert result.returncode == 0 and "DIR" in result.stdout
    assert "--storage-option" in dagger("--help").stdout


def test_help_lists_the_commands_of_every_family_in_order():
    """`dagger` is a package of one module per family; `dagger --help` lists their commands family by family."""
    shown = subprocess.run(
        [sys.executable, "-m", "dagger.cli", "--help"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), COLUMNS="200"),
    )
    assert shown.returncode == 0, shown.stderr
    names = re.findall(r"^│ ([a-z]+)\s{2,}\S", shown.stdout, flags=re.MULTILINE)
    families = {
        "browse": ["show", "ls", "inspect"],
        "compare": ["diff", "results"],
        "draw": ["draw", "plot"],
        "ui": ["ui"],
        "maintain": ["gc", "migrate", "verify", "reproduce"],
    }
    assert names == [name for commands in families.values() for name in commands]
    from dagger import cli

    for family, commands in families.items():
        module = getattr(cli, family)
        assert module.__name__ == f"dagger.cli.{family}"
        assert all(callable(getattr(module, "ls_" if name == "ls" else name)) for name in commands)


def test_storage_option_reaches_an_s3_endpoint(s3_location):
    url, options = s3_location
    exp = dg.Experiment(url, state_class=State, storage_options=options)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    endpoint = options["client_kwargs"]["endpoint_url"]
    flags = ["-O", f"endpoint_url={endpoint}", "-O", "key=testing", "-O", "secret=testing"]
    flags += ["--storage-option", "client_kwargs.region_name=us-east-1", "-O", "use_listings_cache=false"]
    shown = dagger(*flags, "show", url)
    assert shown.returncode == 0, shown.stderr
    assert "TrainRecipe" in shown.stdout and "2 states" in shown.stdout
    # without the endpoint, the same URL is not reached (it would be AWS itself): a one-line error
    env_free = dagger("-O", "endpoint_url=http://127.0.0.1:1", "-O", "key=x", "-O", "secret=x", "ls", url)
    assert env_free.returncode != 0 and len(env_free.stderr.splitlines()) == 1
    assert env_free.stderr.startswith("dagger: error: ")


def test_results_gives_each_repetition_of_a_recipe_its_own_columns(tmp_path):
    exp = dg.Experiment(str(tmp_path / "exp"), state_class=State)
    s = exp.spawn_new_tree(dataset_name="d", model_name="m")
    s = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.2)(s)
    s = PruneRecipe(pruning_technique="random", pruning_fraction=0.5)(s)
    s = PruneRecipe(pruning_technique="lowest_magnitude", pruning_fraction=0.75)(s)
    exp.run()
    out = tmp_path / "r.csv"
    assert dagger("results", exp.directory, "--csv", out).returncode == 0
    rows = list(csv.DictReader(out.open()))
    deepest = max(rows, key=lambda r: int(r["depth"]))
    # as docs/cli.md says: the first occurrence is Recipe.property, the k-th Recipe#k.property
    assert deepest["PruneRecipe.pruning_fraction"] == "0.2"
    assert deepest["PruneRecipe#2.pruning_fraction"] == "0.5"
    assert deepest["PruneRecipe#3.pruning_fraction"] == "0.75"
    assert deepest["PruneRecipe#2.pruning_technique"] == "random"
