"""The Flask app a ``Server`` exposes: routes only; the work is ``Server.handle``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, Response, request

from .. import wire

if TYPE_CHECKING:
    from .core import Server


def create_app(server: "Server") -> Flask:
    """A WSGI app serving ``server`` (protocol endpoint plus a small info endpoint)."""
    app = Flask("fedmed.server")

    @app.post(wire.ENDPOINT)
    def evaluate() -> Response:
        status, body = server.handle(request.get_data(cache=False), client=request.remote_addr or "unknown")
        return Response(body, status=status, content_type=wire.CONTENT_TYPE)

    @app.get(f"/v{wire.PROTOCOL}/info")
    def info() -> Response:
        return Response(wire.pack(server.info()), content_type=wire.CONTENT_TYPE)

    return app
