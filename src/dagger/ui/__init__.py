"""The explorer: an interactive, provenance-aware view of an experiment tree in the browser.

``dagger ui DIR`` serves it (:mod:`dagger.ui.server`, the ``ui`` extra);
``dagger ui DIR --export FILE.html`` and :func:`export` write one self-contained
file; ``exp.graph.explore()`` shows it inline in Jupyter (:class:`Explorer`).
The page reads slim JSON metadata only and the tree is laid out by
:mod:`dagger.drawing.layout`, the engine of the static pictures.
"""

from __future__ import annotations

import html
import os
from typing import TYPE_CHECKING, Any

from dagger.ui.data import Source, build, from_graph
from dagger.ui.page import export_html

if TYPE_CHECKING:
    from dagger.graph import StaticExperimentTree

__all__ = ["Explorer", "Source", "build", "export", "export_html", "from_graph"]


class Explorer:
    """The explorer page for one tree: Jupyter shows it inline; :meth:`save` writes it as one HTML file."""

    def __init__(self, data: dict[str, Any], height: int = 640) -> None:
        self.data = data
        self.height = height
        self._html: str | None = None

    @property
    def html(self) -> str:
        """The self-contained page (data, script and styles inline)."""
        if self._html is None:
            self._html = export_html(self.data)
        return self._html

    def save(self, filename: str | os.PathLike[str]) -> str:
        """Write the page to ``filename`` (it works from ``file://``, with no network)."""
        path = os.fspath(filename)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.html)
        return path

    def _repr_html_(self) -> str:
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" style="width:100%;height:{self.height}px;'
            'border:1px solid #d9dee4;border-radius:6px" sandbox="allow-scripts"></iframe>'
        )

    def __repr__(self) -> str:
        return f"<Explorer {len(self.data.get('states', {}))} states>"


def explore(graph: StaticExperimentTree, result: str | None = None, height: int = 640) -> Explorer:
    """The explorer for ``graph`` (``exp.graph``); ``result`` keeps only that result in the boxes' labels."""
    return Explorer(from_graph(graph, result), height)


def export(
    directory: str, filename: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[str, int]:
    """Write the explorer of the experiment at ``directory`` to ``filename``; returns (path, number of states)."""
    _, data = Source(directory, storage_options).snapshot()
    path = Explorer(data).save(filename)
    return path, len(data["states"])
