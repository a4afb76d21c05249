"""The explorer (`dagger ui`), in a real headless browser: Debian's chromium driven by Playwright.

The served page and the exported file are tested on the real pruning study
(examples/pruning/study.py); live updates on a script that grows its tree in
a subprocess while the page is open. Each test checks the page's contract:
every state on screen is an element with ``data-sha``, clicking one opens
``[data-panel]`` with its full hash and results, the ``input[data-filter]``
hides what does not match, no request leaves 127.0.0.1 (or the file), and the
console logs no error.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dagger as dg
from dagger.cli.draw import _branches

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
STUDY = ROOT / "examples" / "pruning" / "study.py"
CHROMIUM = os.environ.get("DAGGER_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- fixtures: the browser, the study, a server -----------------------------------------------


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        raise RuntimeError(
            f"the explorer's tests need chromium at {CHROMIUM}: apt-get install chromium "
            "(or set DAGGER_TEST_CHROMIUM to its path)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The full pruning study, run once as the README runs it: its folder and its slim experiment."""
    out = tmp_path_factory.mktemp("ui") / "pruning"
    subprocess.run([sys.executable, str(STUDY), "--out", str(out)], env=_env(), check=True, capture_output=True)
    return out, dg.Experiment.restore(str(out))


class Server:
    """``dagger ui DIR`` in a subprocess; ``url`` is the address it printed."""

    def __init__(self, directory: str, *extra: str) -> None:
        cmd = [sys.executable, "-m", "dagger.cli", "ui", directory, *extra]
        self.proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "http://" not in line:
            self.stop()
            raise RuntimeError(f"dagger ui printed no URL: {line!r} {self.proc.stderr.read()}")
        self.url = line.split(" at ", 1)[1].split()[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def served(study):
    server = Server(str(study[0]))
    yield server
    server.stop()


class Page:
    """A browser page that records console errors, page errors and every request it makes."""

    def __init__(self, browser, url: str, width: int = 1400, height: int = 2200) -> None:
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready]")

    def shas(self, visible_only: bool = True) -> set[str]:
        sel = "[data-sha]:not([hidden])" if visible_only else "[data-sha]"
        return set(self.page.eval_on_selector_all(sel, "els => els.map(e => e.dataset.sha)"))

    def click_state(self, sha: str, **kw) -> None:
        self.page.click(f'[data-sha="{sha}"]', **kw)

    def close(self) -> None:
        self.page.close()


def _page(browser, url, **kw):
    p = Page(browser, url, **kw)
    return p


def _results(node) -> dict:
    out = {}
    for fn, value in (node._meta().get("results") or {}).items():
        out.update(value if isinstance(value, dict) else {fn: value})
    return out


def _fmt(v) -> str:
    """A number as the page prints it (4 significant digits)."""
    return str(v) if isinstance(v, int) else f"{float(f'{v:.4g}'):g}" if abs(v) < 1e6 else f"{v:.4g}"


def _python_filter(graph, text: str) -> set[str]:
    """The filter box's expression with NodeSet.filter: alternatives by |, patterns by &."""
    out: set[str] = set()
    alts = [[p.strip() for p in alt.split("&") if p.strip()] for alt in text.split("|")]
    alts = [a for a in alts if a]
    if not alts:
        return {n.sha() for n in graph}
    for alt in alts:
        out |= {n.sha() for n in graph.nodes.filter(*alt)}
    return out


# ---- the served page ----------------------------------------------------------------------------


def test_served_page_shows_every_state_and_stays_local(browser, served, study):
    _, exp = study
    page = _page(browser, served.url)
    try:
        assert page.shas() == {n.sha() for n in exp.graph} and len(exp.graph) == 19
        root = exp.graph.root
        box = page.page.locator(f'[data-sha="{root.sha()}"]')
        assert "root" in box.inner_text() and root.sha()[:8] in box.inner_text()
        # tags and results of a state are on its box
        leaf = exp.graph.nodes.filter("rewound", "lr:0.1", "retrained")[0]
        text = page.page.locator(f'[data-sha="{leaf.sha()}"]').inner_text()
        assert "rewound" in text and "accuracy=" in text
        page.page.wait_for_timeout(1500)  # one poll of the live endpoint at least
        assert any(u.endswith("/api/version") for u in page.requests)
        assert all(u.startswith(served.url) for u in page.requests), page.requests
        assert page.errors == []
    finally:
        page.close()


def test_panel_shows_full_hash_results_and_lineage(browser, served, study):
    _, exp = study
    node = exp.graph.nodes.filter("prune:2", "lr:0.01")[0]
    page = _page(browser, served.url)
    try:
        page.click_state(node.sha())
        panel = page.page.locator("[data-panel]")
        panel.wait_for(state="visible")
        text = panel.inner_text()
        assert node.sha() in text
        for key, value in _results(node).items():
            assert key in text and _fmt(value) in text, (key, value)
        steps = page.page.eval_on_selector_all(
            "[data-panel] [data-lineage] [data-goto]", "e => e.map(x => x.dataset.goto)"
        )
        assert steps == [s.sha() for s in node.lineage()]
        page.page.click(f'[data-panel] [data-lineage] [data-goto="{node.parent.sha()}"]')  # a step is clickable
        assert node.parent.sha() in page.page.locator("[data-panel] [data-full-hash]").inner_text()
        assert "stored size" in panel.inner_text().lower() and "timings" in panel.inner_text().lower()
        assert page.errors == []
    finally:
        page.close()


@pytest.mark.parametrize("mode", ["hide", "dim"])
def test_filter_box_hides_or_dims_what_does_not_match(browser, served, study, mode):
    _, exp = study
    page = _page(browser, served.url)
    try:
        page.page.select_option("#filter-mode", mode)
        page.page.fill("input[data-filter]", "lr:0.1 & !retrained")
        want = _python_filter(exp.graph, "lr:0.1 & !retrained")
        assert 0 < len(want) < len(exp.graph)
        if mode == "hide":
            assert page.shas() == want
            for n in exp.graph:
                if n.sha() not in want:
                    assert page.page.locator(f'[data-sha="{n.sha()}"]').is_hidden()
        else:
            dimmed = set(page.page.eval_on_selector_all("[data-sha].dim", "e => e.map(x => x.dataset.sha)"))
            assert page.shas() == {n.sha() for n in exp.graph} and dimmed == {n.sha() for n in exp.graph} - want
        page.page.fill("input[data-filter]", "")
        assert page.shas() == {n.sha() for n in exp.graph}
        assert page.errors == []
    finally:
        page.close()


EXPRESSIONS = [
    "pruned",
    "!pruned",
    "lr:0.1 & !pruned",
    "lr:0.0*",
    "lr:0.?",
    "prune:[12]",
    "prune:[!12]",
    "rewound | lr:0.01 & retrained",
    "lr:0.1&prune:3|rewound",
    "*",
    "!*",
    "nothing-has-this",
    "lr:0.1 & prune:*  &  !rewound",
    "[",
    "lr:0.1 | ",
    "",
]


def test_filter_semantics_match_nodeset_filter(browser, study, tmp_path):
    """The page's filter (JavaScript) and the library's (Python) choose the same states."""
    out, exp = study
    page = _page(browser, (out / "explorer.html").as_uri())
    try:
        for text in EXPRESSIONS:
            got = set(page.page.evaluate("t => window.dagger.matchFilter(t)", text))
            assert got == _python_filter(exp.graph, text), text
        assert page.errors == []
    finally:
        page.close()


def test_two_states_side_by_side(browser, served, study):
    _, exp = study
    a = exp.graph.nodes.filter("prune:3", "lr:0.01", "!rewound", "!retrained")[0]
    b = exp.graph.nodes.filter("rewound", "lr:0.01", "retrained")[0]
    la, lb = [s.sha() for s in a.lineage()], [s.sha() for s in b.lineage()]
    fork = [x for x, y in zip(la, lb, strict=False) if x == y][-1]
    page = _page(browser, served.url)
    try:
        page.click_state(a.sha())
        page.click_state(b.sha(), modifiers=["Shift"])
        diff = page.page.locator("[data-panel][data-diff]")
        diff.wait_for(state="visible")
        text = diff.inner_text()
        assert a.sha() in text and b.sha() in text
        assert page.page.locator("[data-fork]").get_attribute("data-fork") == fork
        keys = set(page.page.eval_on_selector_all("[data-diff-key]", "e => e.map(x => x.dataset.diffKey)"))
        assert "accuracy" in keys and "tags" in keys and any(k.startswith("step ") for k in keys)
        assert "properties.dataset_name" not in keys  # the same in both
        page.page.keyboard.press("Escape")  # back to A alone, then closed
        assert page.page.locator("[data-panel]").get_attribute("data-state") == a.sha()
        assert page.page.locator("[data-panel][data-diff]").count() == 0
        page.page.keyboard.press("Escape")
        assert page.page.locator("[data-panel]").is_hidden()
        assert page.errors == []
    finally:
        page.close()


def test_results_table_sorts_and_highlights_its_rows(browser, served, study):
    _, exp = study
    page = _page(browser, served.url)
    try:
        page.page.click("#show-table")
        page.page.click('th[data-col="accuracy"]')
        page.page.click('th[data-col="accuracy"]')  # descending
        first = page.page.locator("#results tbody tr").first.get_attribute("data-row")
        best = max((n for n in exp.graph if "accuracy" in _results(n)), key=lambda n: _results(n)["accuracy"])
        assert _results(exp.graph.node(first))["accuracy"] == _results(best)["accuracy"]
        rows = page.page.eval_on_selector_all("#results tbody tr", "e => e.map(x => x.dataset.row)")
        accs = [_results(exp.graph.node(s)).get("accuracy") for s in rows]
        assert [a for a in accs if a is not None] == sorted((a for a in accs if a is not None), reverse=True)
        page.page.fill("#table-filter", "rewound")
        rows = set(page.page.eval_on_selector_all("#results tbody tr", "e => e.map(x => x.dataset.row)"))
        assert rows == {n.sha() for n in exp.graph.nodes.filter("rewound")}
        lit = set(page.page.eval_on_selector_all("[data-sha].hl", "e => e.map(x => x.dataset.sha)"))
        assert lit == rows
        page.page.click(f'#results tbody tr[data-row="{first if first in rows else sorted(rows)[0]}"]')
        assert page.page.locator("[data-panel]").is_visible()
        assert page.errors == []
    finally:
        page.close()


def test_plot_draws_each_branch_like_dagger_plot(browser, served, study):
    _, exp = study
    want = _branches(exp.graph, "sparsity", "accuracy")
    page = _page(browser, served.url)
    try:
        page.page.click("#show-plot")
        page.page.select_option("#plot-x", "sparsity")
        page.page.select_option("#plot-y", "accuracy")
        assert page.page.locator("#plot").get_attribute("data-branches") == str(len(want)) and len(want) >= 2
        points = page.page.locator("#plot [data-point]").count()
        assert points == sum(len(xs) for _, xs, _ in want)
        assert page.page.locator("#plot polyline").count() == len(want)
        assert page.errors == []
    finally:
        page.close()


def test_collapse_and_expand_a_subtree(browser, served, study):
    _, exp = study
    node = exp.graph.nodes.filter("lr:0.1", "!pruned")[0]  # the lr:0.1 branch's first training
    below = {n.sha() for n in exp.graph if node.sha() in {s.sha() for s in n.lineage()[:-1]}}
    page = _page(browser, served.url)
    try:
        page.page.click(f'[data-fold="{node.sha()}"]')
        assert page.shas().isdisjoint(below) and node.sha() in page.shas()
        assert f"+{len(below)}" in page.page.locator(f'[data-fold="{node.sha()}"]').inner_text()
        page.page.click(f'[data-fold="{node.sha()}"]')
        assert below <= page.shas()
        assert page.errors == []
    finally:
        page.close()


def test_only_states_on_screen_are_elements(browser, served, study):
    _, exp = study
    page = _page(browser, served.url, width=900, height=500)
    try:
        page.page.evaluate("() => { const v = window.dagger.view; v.k = 1; v.x = 10; v.y = 10; window.dagger.fit; }")
        page.page.mouse.move(450, 250)
        page.page.mouse.wheel(0, -200)  # zoom in: fewer states fit
        page.page.wait_for_timeout(100)
        on_screen = page.shas(visible_only=False)
        assert 0 < len(on_screen) < len(exp.graph)
        assert page.errors == []
    finally:
        page.close()


# ---- the exported file --------------------------------------------------------------------------


def test_exported_file_works_offline(browser, study, tmp_path):
    out, exp = study
    target = tmp_path / "explorer.html"
    done = subprocess.run(
        [sys.executable, "-m", "dagger.cli", "ui", str(out), "--export", str(target)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {target} (19 states)" in done.stderr
    html = target.read_text()
    assert "<script src=" not in html and "<link" not in html and "http://" not in html.split("</head>")[0]
    page = _page(browser, target.as_uri())
    try:
        assert page.shas() == {n.sha() for n in exp.graph}
        node = exp.graph.nodes.filter("rewound", "lr:0.1", "retrained")[0]
        page.click_state(node.sha())
        assert node.sha() in page.page.locator("[data-panel]").inner_text()
        page.page.fill("input[data-filter]", "rewound")
        assert page.shas() == {n.sha() for n in exp.graph.nodes.filter("rewound")}
        assert page.requests == [target.as_uri()]
        assert page.errors == []
    finally:
        page.close()


def test_the_study_writes_its_explorer(browser, study):
    out, exp = study
    page = _page(browser, (out / "explorer.html").as_uri())
    try:
        assert page.shas() == {n.sha() for n in exp.graph}
        assert page.requests == [(out / "explorer.html").as_uri()] and page.errors == []
    finally:
        page.close()


def test_notebook_shows_the_explorer_inline(browser, study):
    _, exp = study
    view = exp.graph.explore()
    html = view._repr_html_()
    assert html.startswith("<iframe srcdoc=")
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.set_content(f"<html><body style='margin:0'>{html.replace('height:640px', 'height:880px')}</body></html>")
        frame = page.frame_locator("iframe")
        frame.locator("body[data-ready]").wait_for(state="attached")
        assert frame.locator(f'[data-sha="{exp.graph.root.sha()}"]').count() == 1
        assert errors == []
    finally:
        page.close()


def test_text_from_the_store_is_text_not_markup(browser, tmp_path):
    """A tag holding markup is shown as text: the export cannot be broken out of, nothing runs."""
    import paperdefs

    exp = dg.Experiment(str(tmp_path / "e"), state_class=paperdefs.State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    evil = "</script><script>window.owned=1</script><img src=x onerror=window.owned=2>"
    with exp.tag(evil):
        paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    target = tmp_path / "x.html"
    dg.Experiment.restore(str(tmp_path / "e")).graph.explore().save(target)
    page = _page(browser, target.as_uri())
    try:
        assert page.page.evaluate("() => window.owned === undefined")
        assert len(page.shas()) == 2
        assert page.requests == [target.as_uri()] and page.errors == []
    finally:
        page.close()


# ---- live updates -------------------------------------------------------------------------------

# The definitions live in a module beside the script (growdefs.py): the second run restores
# the first's states, which needs their classes importable by name on this branch.
GROWDEFS = textwrap.dedent(
    """
    import sys
    import time

    import dagger as dg


    class State(dg.ExperimentState):
        PROPERTIES = ["name", "width"]
        NONHASHED_ATTRIBUTES = ["model"]

        def initialize_state(self, **kwargs):
            self.model = {"w": 0.0}


    class Step(dg.Recipe):
        PROPERTIES = ["i"]

        def run(self, state):
            time.sleep(float(sys.argv[3]))
            state.model = {"w": state.model["w"] + self.i}
            return state
    """
)

GROW = textwrap.dedent(
    """
    import sys

    import dagger as dg
    from growdefs import State, Step

    exp = dg.Experiment(sys.argv[1], state_class=State)
    s = exp.spawn_new_tree(name="live", width=8)
    for i in range(int(sys.argv[2])):
        with exp.tag(f"step:{i}"):
            s = Step(i=i)(s)
    exp.run()
    """
)


def test_new_states_appear_while_a_run_is_in_progress(browser, tmp_path):
    script = tmp_path / "grow.py"
    script.write_text(GROW)
    (tmp_path / "growdefs.py").write_text(GROWDEFS)
    directory = str(tmp_path / "live")
    subprocess.run([sys.executable, str(script), directory, "1", "0"], env=_env(), check=True)
    server = Server(directory)
    page = _page(browser, server.url)
    try:
        assert len(page.shas()) == 2
        page.page.evaluate("() => { window.sameDocument = true; }")
        version = page.page.get_attribute("body", "data-version")
        run = subprocess.Popen([sys.executable, str(script), directory, "6", "1.5"], env=_env())
        try:
            page.page.wait_for_function("() => document.querySelectorAll('[data-sha]').length > 2", timeout=60_000)
            still_running = run.poll() is None
            seen = len(page.shas())
        finally:
            run.wait(120)
        assert still_running and 2 < seen < 7  # shown while the run was still computing the rest
        page.page.wait_for_function("() => document.querySelectorAll('[data-sha]').length === 7", timeout=20_000)
        assert page.page.get_attribute("body", "data-version") != version
        assert page.page.evaluate("() => window.sameDocument === true")  # no reload
        assert all(u.startswith(server.url) for u in page.requests) and page.errors == []
    finally:
        page.close()
        server.stop()


# ---- the command and the data -------------------------------------------------------------------


def test_command_errors_are_one_line(tmp_path, study):
    out, _ = study

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "dagger.cli", "ui", *args], env=_env(), capture_output=True, text=True
        )

    missing = run(str(tmp_path / "nope"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    notexp = run(str(empty))
    assert notexp.returncode == 2 and "no dagger experiment" in notexp.stderr
    badfile = run(str(out), "--export", str(tmp_path / "x.txt"))
    assert badfile.returncode == 2 and "name an .html file" in badfile.stderr
    badopt = run(str(out), "--storage-option", "novalue", "--export", str(tmp_path / "x.html"))
    assert badopt.returncode == 2 and "KEY=VALUE" in badopt.stderr
    # an fsspec URL with a storage option
    url = run(out.as_uri(), "--storage-option", "auto_mkdir=false", "--export", str(tmp_path / "u.html"))
    assert url.returncode == 0, url.stderr
    assert "19 states" in url.stderr


def test_reading_for_the_page_writes_nothing(study, tmp_path):
    """The explorer never writes to the store, even where the index is stale (it reads around it)."""
    from dagger.ui.data import Source

    out, exp = study
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "index.json").unlink()  # as if a run were still going: no index yet
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    version, data = Source(str(copy)).snapshot()
    assert len(data["states"]) == 19 and data["layout"]["total_states"] == 19
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
    json.dumps(data)  # JSON-ready
    assert Source(str(copy)).version() == version


def test_data_uses_the_drawing_layout(study):
    """The page's boxes are the static drawing's: one layout engine for both."""
    _, exp = study
    from dagger.drawing import layout, node_specs

    data = exp.graph.explore().data
    static = layout(node_specs(list(exp.graph)), max_states=10_000).to_dict()
    assert [(b["id"], b["x"], b["y"], b["width"]) for b in data["layout"]["boxes"]] == [
        (b["id"], b["x"], b["y"], b["width"]) for b in static["boxes"]
    ]


def test_layout_data_is_the_layouts_own(study):
    """``Layout.to_dict()`` (built field by field, for speed) holds every field of every box and edge."""
    import dataclasses
    import json

    _, exp = study
    from dagger.drawing import layout, node_specs

    for lay in (layout(node_specs(list(exp.graph))), layout(node_specs(list(exp.graph)), max_states=5)):
        data = lay.to_dict()
        assert data["boxes"] == json.loads(json.dumps([dataclasses.asdict(b) for b in lay.boxes]))
        assert data["edges"] == json.loads(json.dumps([dataclasses.asdict(e) for e in lay.edges]))


def test_colour_by_a_result(browser, study):
    out, exp = study
    page = _page(browser, (out / "explorer.html").as_uri())
    try:
        done = [n for n in exp.graph if "accuracy" in _results(n) and n.parent is not None]
        scored = sorted(done, key=lambda n: _results(n)["accuracy"])
        low, high = scored[0].sha(), scored[-1].sha()

        def fill(sha):
            return page.page.eval_on_selector(f'[data-sha="{sha}"]', "e => e.style.background")

        before = fill(low), fill(high)
        assert before[0] == before[1]  # both "done": one status colour
        page.page.select_option("#colour-by", "accuracy")
        assert fill(low) != fill(high) and fill(high) != before[1]
        everyone = [_results(n)["accuracy"] for n in exp.graph if "accuracy" in _results(n)]
        legend = page.page.locator("#legend").inner_text()
        assert "accuracy" in legend and _fmt(min(everyone)) in legend and _fmt(max(everyone)) in legend
        page.page.select_option("#colour-by", "status")
        assert (fill(low), fill(high)) == before
        assert page.errors == []
    finally:
        page.close()


class Diverges(dg.Recipe):
    PROPERTIES = ["epoch"]

    def run(self, state):
        raise RuntimeError(f"loss diverged at epoch {self.epoch}")


def test_failed_attempts_are_counted(browser, tmp_path):
    import paperdefs

    exp = dg.Experiment(str(tmp_path / "e"), state_class=paperdefs.State)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    bad = Diverges(epoch=3)(root)
    paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run(raise_on_failure=False)
    target = tmp_path / "x.html"
    done = subprocess.run(
        [sys.executable, "-m", "dagger.cli", "ui", str(tmp_path / "e"), "--export", str(target)],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    page = _page(browser, target.as_uri())
    try:
        count = page.page.locator("#count")
        assert count.get_attribute("data-failed") == "1" and "1 failed" in count.inner_text()
        assert bad._sha[:10] in count.get_attribute("title") and "loss diverged at epoch 3" in count.get_attribute(
            "title"
        )
        assert len(page.shas()) == 2 and page.errors == []
    finally:
        page.close()


def test_serves_an_s3_experiment_live(browser, s3_location):
    """An fsspec URL with --storage-option: a real S3 server (moto); a new state shows up live."""
    import paperdefs

    url, options = s3_location
    exp = dg.Experiment(url, state_class=paperdefs.State, storage_options=options)
    root = exp.spawn_new_tree(dataset_name="d", model_name="m")
    paperdefs.TrainRecipe(nb_epochs=1, lr=0.1)(root)
    exp.run()
    flags = [f"{k}={json.dumps(v)}" for k, v in options.items()]
    server = Server(url, *(x for f in flags for x in ("--storage-option", f)))
    page = _page(browser, server.url)
    try:
        assert len(page.shas()) == 2
        with exp.tag("later"):
            late = paperdefs.TrainRecipe(nb_epochs=2, lr=0.1)(root)
        exp.run()
        page.page.wait_for_selector(f'[data-sha="{late._sha}"]', timeout=20_000)
        page.page.fill("input[data-filter]", "later")
        assert page.shas() == {late._sha}
        assert all(u.startswith(server.url) for u in page.requests) and page.errors == []
    finally:
        page.close()
        server.stop()


def test_server_answers_only_to_local_names_and_shows_the_chosen_result(study):
    """Another Host (DNS rebinding) is refused; --result keeps only that result in the labels."""
    import urllib.error
    import urllib.request

    out, exp = study
    server = Server(str(out), "--result", "accuracy")
    try:
        with urllib.request.urlopen(server.url + "api/version") as r:
            assert r.status == 200 and json.loads(r.read())["version"]
        port = server.url.rstrip("/").rsplit(":", 1)[1]
        request = urllib.request.Request(server.url + "api/data", headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 403
        with urllib.request.urlopen(server.url + "api/data") as r:
            data = json.loads(r.read())
        texts = [sp["text"] for b in data["layout"]["boxes"] for sp in b["spans"] if sp["style"] == "results"]
        assert texts and all(t.startswith("accuracy=") and "sparsity" not in t for t in texts)
        assert len(data["states"]) == len(exp.graph)
    finally:
        server.stop()


def test_aiohttp_only_when_serving_and_a_clear_error_without_it(study, tmp_path):
    out, _ = study
    probe = (
        "import sys, dagger.cli, dagger.ui, dagger as dg; "
        f"dg.Experiment.restore({str(out)!r}).graph.explore().save({str(tmp_path / 'n.html')!r}); "
        "print('aiohttp' in sys.modules)"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], env=_env(), capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False" and (tmp_path / "n.html").stat().st_size > 0
    blocked = "import sys; sys.modules['aiohttp'] = None; from dagger.cli import main; main(sys.argv[1:])"
    done = subprocess.run([sys.executable, "-c", blocked, "ui", str(out)], env=_env(), capture_output=True, text=True)
    assert done.returncode == 1 and "pip install 'dagger-experiments[ui]'" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
