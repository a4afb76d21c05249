"""Every read path on a 10,000-deep chain: correct, without recursion, in output linear in its size.

(No timed asserts here: ``benchmarks/deep_chain.py`` measures the times.)
"""

from __future__ import annotations

import re

import pytest
from chaindefs import chain_sha, make_chain
from typer.testing import CliRunner

import dagger as dg
from dagger import cli
from dagger.graph import INDENT_LEVELS, REPEATS_SHOWN

N = 10_000
runner = CliRunner()


def short_hashes(text: str, digits: int) -> list[str]:
    """Every run of exactly ``digits`` hex digits standing alone in ``text``, in order."""
    return re.findall(rf"(?<![0-9a-f])[0-9a-f]{{{digits}}}(?![0-9a-f])", text)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("deep") / "exp")
    return directory, make_chain(directory, N)


def test_lineage_and_text_of_a_10000_deep_chain(chain):
    directory, shas = chain
    graph = dg.Experiment.restore(directory).graph
    assert len(graph) == N and not graph.problems()
    assert [n.sha() for n in graph.node(shas[-1]).lineage()] == shas
    text = graph.to_text()
    lines = text.splitlines()
    assert set(short_hashes(text, 8)) == {sha[:8] for sha in shas}
    continued = [line for line in lines if "continued below at depth" in line]
    assert len(lines) == N + len(continued) and len(continued) == (N - 1) // INDENT_LEVELS
    assert max(len(line) for line in lines) < 4 * INDENT_LEVELS + 120  # indentation stops growing


def test_table_of_a_10000_deep_chain_has_bounded_columns(chain):
    directory, shas = chain
    graph = dg.Experiment.restore(directory).graph
    rows = graph.nodes.to_records()
    assert [r["sha"] for r in rows] == shas
    leaf = rows[-1]
    # Train is applied at odd depths 1, 3, ..., 9999; Prune at even depths 2, ..., 9998.
    assert leaf["Train.seed"] == 1 and leaf["Train#2.seed"] == 3 and leaf[f"Train#{REPEATS_SHOWN}.seed"] == 7
    assert leaf["Train#last.seed"] == 9999 and leaf["Train#applied"] == 5000
    assert leaf["Prune.seed"] == 2 and leaf["Prune#last.seed"] == 9998 and leaf["Prune#applied"] == 4999
    assert f"Train#{REPEATS_SHOWN + 1}.seed" not in leaf
    assert rows[4]["Prune#2.seed"] == 4 and "Prune#last.seed" not in rows[4]
    assert leaf["loss"] == pytest.approx(1 / (N - 1))
    assert len({k for r in rows for k in r}) < 40


def test_every_command_on_a_10000_deep_chain(chain):
    directory, shas = chain
    shown = runner.invoke(cli.app, ["show", directory])
    assert shown.exit_code == 0, shown.output
    assert short_hashes(shown.stdout, 10) == [sha[:10] for sha in shas]  # each once, in tree order
    table = runner.invoke(cli.app, ["results", directory])
    assert table.exit_code == 0 and len(table.stdout.splitlines()) == N + 1
    assert "Train#applied" in table.stdout.splitlines()[0]
    listed = runner.invoke(cli.app, ["ls", directory])
    assert listed.exit_code == 0 and f"{N} of {N} states" in listed.stdout
    inspected = runner.invoke(cli.app, ["inspect", directory, shas[-1][:10]])
    assert inspected.exit_code == 0
    lineage = inspected.stdout.split("lineage (root first)", 1)[1].split("results", 1)[0]
    assert short_hashes(lineage, 10) == [sha[:10] for sha in shas]  # the whole lineage, root first
    diffed = runner.invoke(cli.app, ["diff", directory, shas[-1][:10], shas[5000][:10]])
    assert diffed.exit_code == 0 and "B is an ancestor of A" in diffed.stdout
    assert f"step {N - 1}" in diffed.stdout and "step 5000" not in diffed.stdout
    assert runner.invoke(cli.app, ["verify", directory]).exit_code == 1  # records only: no pickles, reported
    csv = runner.invoke(cli.app, ["results", directory, "--csv", "-"])
    assert csv.exit_code == 0 and len(csv.stdout.splitlines()) == N + 1


def test_chain_hashes_are_distinct():
    assert len({chain_sha(i) for i in range(100)}) == 100
