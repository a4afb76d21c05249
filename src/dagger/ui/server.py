"""``dagger ui``: the explorer served on the local machine with aiohttp (the ``ui`` extra).

Routes: ``/`` (the page), ``/app.js``, ``/app.css``, ``/api/data`` (the page's
data, with an ETag), ``/api/version`` (a short tag that changes whenever the
stored experiment does; the page polls it every second). Everything is read
only; nothing is unpickled.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any, TextIO

from dagger.ui.data import Source
from dagger.ui.page import asset, served_html

#: The tab's icon: three boxes of a tree.
ICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><path d="M8 5v3M4 11V8h8v3" stroke="#4a6f9f" '
    b'fill="none"/><rect x="5" y="1" width="6" height="4" rx="1" fill="#4a6f9f"/><rect x="1" y="11" width="6" '
    b'height="4" rx="1" fill="#4a8f5a"/><rect x="9" y="11" width="6" height="4" rx="1" fill="#4a8f5a"/></svg>'
)

INSTALL_HINT = "pip install 'dagger-experiments[ui]'"


def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError:
        raise ImportError(f"dagger ui needs aiohttp: {INSTALL_HINT}") from None
    return web


def make_app(source: Source, allowed_hosts: set[str] | None = None) -> Any:
    """The aiohttp application serving ``source``'s explorer.

    With ``allowed_hosts``, requests naming any other ``Host`` are refused (403): a web
    page elsewhere cannot read the experiment through DNS rebinding to 127.0.0.1.
    """
    web = _aiohttp()
    page = served_html()
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    async def index(request: Any) -> Any:
        return web.Response(text=page, content_type="text/html", charset="utf-8", headers=headers)

    async def script(request: Any) -> Any:
        return web.Response(text=asset("app.js"), content_type="text/javascript", charset="utf-8", headers=headers)

    async def style(request: Any) -> Any:
        return web.Response(text=asset("app.css"), content_type="text/css", charset="utf-8", headers=headers)

    async def version(request: Any) -> Any:
        tag = await asyncio.get_running_loop().run_in_executor(None, source.version)
        return web.json_response({"version": tag}, headers=headers)

    async def data(request: Any) -> Any:
        tag, body = await asyncio.get_running_loop().run_in_executor(None, _encoded, source)
        etag = f'"{tag}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={**headers, "ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={**headers, "ETag": etag})

    async def icon(request: Any) -> Any:
        return web.Response(body=ICON, content_type="image/svg+xml", headers=headers)

    @web.middleware
    async def only_local(request: Any, handler: Any) -> Any:
        if allowed_hosts is not None and request.host not in allowed_hosts:
            return web.Response(status=403, text=f"dagger ui answers only to {', '.join(sorted(allowed_hosts))}\n")
        return await handler(request)

    app = web.Application(middlewares=[only_local])
    app.router.add_get("/", index)
    app.router.add_get("/app.js", script)
    app.router.add_get("/app.css", style)
    app.router.add_get("/favicon.ico", icon)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/data", data)
    return app


_cache: dict[int, tuple[str, bytes]] = {}


def _encoded(source: Source) -> tuple[str, bytes]:
    """The data as JSON bytes, encoded once per version."""
    from dagger.ui.page import _json_for_script

    tag, data = source.snapshot()
    held = _cache.get(id(source))
    if held is None or held[0] != tag:
        held = (tag, _json_for_script(data).encode())
        _cache[id(source)] = held
    return held


def serve(source: Source, host: str = "127.0.0.1", port: int = 0, out: TextIO | None = None) -> None:
    """Serve the explorer until interrupted; print its URL first (a free port when ``port`` is 0)."""
    web = _aiohttp()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc} (pick another --port)") from None
    sock.listen(128)
    bound = sock.getsockname()[1]
    loopback = {"127.0.0.1", "localhost", "::1"}
    allowed = {f"{h}:{bound}" for h in ("127.0.0.1", "localhost", "[::1]")} if host in loopback else None
    app = make_app(source, allowed)
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    out = out or sys.stdout
    out.write(f"dagger explorer for {source.directory} at http://{shown}:{bound}/  (Ctrl-C stops it)\n")
    out.flush()
    web.run_app(app, sock=sock, print=None, handle_signals=True, access_log=None)
