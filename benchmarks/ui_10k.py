"""The explorer on a 10,000-state tree: build its data, load the page, filter, pan and zoom.

The tree is the benchmarks' binary tree (``_workload``; states tagged
``group:<i % 50>`` and ``even``), run once. Measured:

- ``data_s``: the page's data from the store (``dagger.ui.Source.snapshot``:
  listing, index, layout by the drawing engine, table rows), in this process;
- ``layout_s``: the layout alone, within that;
- ``export_bytes``: the size of the self-contained HTML file;
- in headless chromium (Playwright, ``/usr/bin/chromium``), opening that file:
  ``load_ms`` (navigation to the page ready: data parsed, tree indexed, first
  screen drawn), ``filter_ms`` (typing a tag expression into the filter box
  until the screen shows the result, median of several expressions),
  ``pan_ms`` and ``zoom_out_ms`` (one redraw after moving the view; zoomed out so
  that about 2,000 states are on screen), and the number of elements on screen;
- served: ``api_data_ms``, one ``GET /api/data`` of a running ``dagger ui``
  (after its first build), and ``api_version_ms``, the poll.

    python benchmarks/ui_10k.py [N]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import urllib.request

from _common import emit, in_fresh_process, scratch

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
CHROMIUM = os.environ.get("DAGGER_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FILTERS = ("group:1*", "even & !group:2?", "group:3 | group:4", "nothing-matches", "*")


def _page_measures(url: str) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_selector("body[data-ready]")
        out["load_ms"] = (time.perf_counter() - t0) * 1e3
        out["on_screen_at_load"] = page.locator("[data-sha]").count()
        times, hits = [], {}
        for text in FILTERS * 3:
            ms = page.evaluate(
                """t => { const i = document.querySelector('input[data-filter]'); const t0 = performance.now();
                          i.value = t; i.dispatchEvent(new Event('input')); return performance.now() - t0; }""",
                text,
            )
            times.append(ms)
            hits[text] = page.evaluate("t => window.dagger.matchFilter(t).length", text)
        out["filter_ms"] = statistics.median(times)
        out["filter_max_ms"] = max(times)
        out["filter_hits"] = hits
        page.evaluate(
            "() => { const i = document.querySelector('input[data-filter]'); i.value = '';"
            " i.dispatchEvent(new Event('input')); }"
        )
        out["pan_ms"] = page.evaluate(
            """() => { const v = window.dagger.view; const ts = [];
                       for (let s = 0; s < 20; s++) { v.x -= 300; const t0 = performance.now(); window.dagger.render();
                         ts.push(performance.now() - t0); }
                       ts.sort((a, b) => a - b); return ts[10]; }"""
        )
        out["zoom_out_ms"] = page.evaluate(
            """() => { const v = window.dagger.view; v.k = 0.12; v.x = 0; v.y = 0; const t0 = performance.now();
                       window.dagger.render(); return performance.now() - t0; }"""
        )
        out["on_screen_zoomed_out"] = page.locator("[data-sha]").count()
        out["console_errors"] = len(errors)
        browser.close()
    return out


def main(n: int = 10_000) -> dict:
    sys.path.insert(0, SRC)
    from dagger.drawing import node_specs
    from dagger.drawing.layout import layout
    from dagger.experiment import Experiment
    from dagger.ui import Explorer
    from dagger.ui.data import Source

    out: dict = {"workload": "ui_10k", "states": n}
    with scratch() as folder:
        built = in_fresh_process("run", folder, "tree", n, pythonpath=SRC, tags=50)
        assert built["computed"] == n, built
        t0 = time.perf_counter()
        _, data = Source(folder).snapshot()
        out["data_s"] = time.perf_counter() - t0
        graph = Experiment.restore(folder).graph
        graph._decode_all()
        specs = node_specs(list(graph))
        t0 = time.perf_counter()
        lay = layout(specs, max_states=n, max_children=n)
        out["layout_s"] = time.perf_counter() - t0
        out["layout_px"] = [round(lay.width), round(lay.height)]
        target = os.path.join(folder, "explorer.html")
        Explorer(data).save(target)
        out["export_bytes"] = os.path.getsize(target)
        out.update(_page_measures("file://" + target))

        env = dict(os.environ, PYTHONPATH=SRC)
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagger.cli", "ui", folder],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = proc.stdout.readline().split(" at ", 1)[1].split()[0]
            urllib.request.urlopen(url + "api/data").read()  # the first build
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url + "api/data").read()
            out["api_data_ms"] = (time.perf_counter() - t0) * 1e3
            out["api_data_bytes"] = len(body)
            polls = []
            for _ in range(10):
                t0 = time.perf_counter()
                urllib.request.urlopen(url + "api/version").read()
                polls.append((time.perf_counter() - t0) * 1e3)
            out["api_version_ms"] = statistics.median(polls)
        finally:
            proc.terminate()
            proc.wait(10)
    return out


if __name__ == "__main__":
    emit(main(*(int(a) for a in sys.argv[1:])))
