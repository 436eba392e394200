"""The Flask app a ``Server`` exposes: routes, authentication and body limits; the work is ``Server.handle``.

Every protocol answer, errors included, is msgpack, so a client always
gets a typed error; the status page at ``/`` is the one HTML page.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from flask import Flask, Response, request

from .. import wire
from ..errors import RequestTooLarge, ServerError, Unauthorized
from .status import render_status

if TYPE_CHECKING:
    from .core import Server

log = logging.getLogger("fedmed.server")


def create_app(server: "Server") -> Flask:
    """A WSGI app serving ``server``: ``POST /v1/evaluate`` and ``GET /v1/info``."""
    app = Flask("fedmed.server")
    limit = server.config.limits["max_body_bytes"]

    def identify() -> str:
        """The client's identity: its token's name when auth is on, else its address."""
        auth = server.config.auth
        if auth is None:
            return request.remote_addr or "unknown"
        name = auth.identify(request.headers.get("Authorization"))
        if name is None:
            raise Unauthorized("a valid bearer token is required (fm.Remote(..., token=...))")
        return name

    @app.post(wire.ENDPOINT)
    def evaluate() -> Response:
        client = identify()
        if (request.content_length or 0) > limit:
            raise RequestTooLarge(f"the request has {request.content_length} bytes; this server accepts {limit}")
        body = request.stream.read(limit + 1)  # bounded even when no length was declared
        if len(body) > limit:
            raise RequestTooLarge(f"the request exceeds {limit} bytes")
        status, answer = server.handle(body, client=client)
        return Response(answer, status=status, content_type=wire.CONTENT_TYPE)

    @app.get("/")
    def status() -> Response:
        client = identify()
        # who asked what is the owner's business, not every analyst's: admins only when auth is on
        auth = server.config.auth
        recent = auth is None or auth.is_admin(client)
        return Response(render_status(server, recent=recent), content_type="text/html; charset=utf-8")

    @app.get(f"/v{wire.PROTOCOL}/info")
    def info() -> Response:
        identify()
        return Response(wire.pack(server.info()), content_type=wire.CONTENT_TYPE)

    @app.errorhandler(ServerError)
    def typed_error(exc: ServerError) -> Response:
        # refused before Server.handle (401, 413): logged here, so failed token attempts leave a trace
        log.info(json.dumps({"client": request.remote_addr, "path": request.path, "status": exc.status,
                             "error": type(exc).__name__}))
        return _msgpack_error(exc)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def routing_error(exc: Exception) -> Response:
        code = getattr(exc, "code", 404)
        error = ServerError(f"no such endpoint: {request.method} {request.path}")
        error.status = code
        return _msgpack_error(error)

    return app


def _msgpack_error(exc: ServerError) -> Response:
    body = wire.pack({"protocol": wire.PROTOCOL, "error": wire.error_body(exc)})
    return Response(body, status=exc.status, content_type=wire.CONTENT_TYPE)
