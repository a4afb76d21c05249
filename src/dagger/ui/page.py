"""The explorer page: the packaged assets put together, served (linked files) or exported (one file)."""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

ASSETS = ("index.html", "app.js", "app.css")


def asset(name: str) -> str:
    """The text of one of the page's packaged files (``index.html``, ``app.js``, ``app.css``)."""
    if name not in ASSETS:
        raise KeyError(name)
    return resources.files("dagger.ui").joinpath("assets", name).read_text(encoding="utf-8")


def served_html() -> str:
    """The page as ``dagger ui`` serves it: styles and script linked, data fetched from ``api/data``."""
    page = asset("index.html")
    page = page.replace("<!--DAGGER_STYLE-->", '<link rel="stylesheet" href="app.css">')
    return page.replace("<!--DAGGER_SCRIPT-->", '<script src="app.js"></script>')


def _json_for_script(data: dict[str, Any]) -> str:
    """JSON that cannot end the ``<script>`` element holding it (``</`` and ``<!--`` are escaped)."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("</", "<\\/").replace("<!--", "<\\u0021--")


def export_html(data: dict[str, Any]) -> str:
    """One self-contained page: data, script and styles inline; works from ``file://`` with no network."""
    page = asset("index.html")
    style = "<style>\n" + asset("app.css") + "\n</style>"
    script = (
        '<script id="dagger-data" type="application/json">'
        + _json_for_script(data)
        + "</script>\n<script>\n"
        + asset("app.js").replace("</script", "<\\/script")
        + "\n</script>"
    )
    title = data.get("experiment", {}).get("directory") or ""
    if title:
        page = page.replace("<title>dagger explorer</title>", f"<title>dagger explorer: {html.escape(title)}</title>")
    # str.replace with a function-free replacement: the inserted text is taken literally.
    head, _, rest = page.partition("<!--DAGGER_STYLE-->")
    body, _, tail = rest.partition("<!--DAGGER_SCRIPT-->")
    return head + style + body + script + tail
