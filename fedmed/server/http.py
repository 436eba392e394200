"""The Flask app a ``Server`` exposes: routes, authentication, limits, error bodies; the work is ``Server.handle``.

Every protocol answer, errors included, is msgpack, so a client always
gets a typed error; the status page at ``/`` is the one HTML page. This is
the one place that turns exceptions escaping a route into status codes and
msgpack bodies, down to a ``MemoryError`` (503, from a body packed when the
module loads, so answering it needs no memory).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, InternalServerError

from .. import wire
from ..errors import BadRequest, RequestTooLarge, ServerError, ServerUnavailable, Unauthorized
from .process import ReturnFreedMemory
from .status import render_status

if TYPE_CHECKING:
    from .core import Server

log = logging.getLogger("fedmed.server")

#: The message of every unexpected failure; the details go to the server's log only.
INTERNAL_ERROR = "internal server error (see the server's log)"
#: The message of a ``MemoryError``.
OUT_OF_MEMORY = "the server ran out of memory answering this request; ask for less or try later"
#: Seconds between two log lines about failed tokens from one client address (the others are counted).
REFUSALS_LOGGED_EVERY = 60.0


def create_app(server: "Server") -> Flask:
    """A WSGI app serving ``server``: ``POST /v1/evaluate`` and ``GET /v1/info``."""
    app = Flask("fedmed.server")
    app.wsgi_app = ReturnFreedMemory(app.wsgi_app)  # type: ignore[method-assign]
    limit = server.config.limits["max_body_bytes"]
    refusals = RefusalLog(REFUSALS_LOGGED_EVERY, write=lambda line: log.info(json.dumps(line)))
    app.extensions["fedmed.refusals"] = refusals

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
        # refused before Server.handle (401, 413): logged here, as an audit trail of failed attempts;
        # failed tokens at most once per address and interval, so a flood of guesses cannot fill the disk
        address = request.remote_addr or "unknown"
        line = {"client": address, "path": request.path, "status": exc.status, "error": type(exc).__name__}
        if isinstance(exc, Unauthorized):
            refusals.attempt(address, line)
        else:
            log.info(json.dumps(line))
        return _msgpack_error(exc)

    @app.errorhandler(404)
    @app.errorhandler(405)
    def routing_error(exc: Exception) -> Response:
        code = getattr(exc, "code", 404)
        error = ServerError(f"no such endpoint: {request.method} {request.path}")
        error.status = code
        return _msgpack_error(error)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # anything else: raised outside Server.handle, by a hook, or by Server.handle's own error path
        # (a MemoryError while it logged or packed); never Flask's HTML page
        if isinstance(exc, InternalServerError) and exc.original_exception is not None:
            # an error handler or an after-request hook failed; Flask has logged it already
            status, body = unexpected_error(exc.original_exception)
            return Response(body, status=status, content_type=wire.CONTENT_TYPE)
        if isinstance(exc, HTTPException):  # werkzeug's own refusals (a body cut short: 400)
            return _msgpack_error(_http_error(exc))
        log_unexpected(exc)
        status, body = unexpected_error(exc)
        return Response(body, status=status, content_type=wire.CONTENT_TYPE)

    return app


def unexpected_error(exc: BaseException) -> tuple[int, bytes]:
    """Status and msgpack body for an exception nothing else handled: 503 for ``MemoryError``, else 500.

    Never raises and allocates nothing: both answers were packed when this
    module was loaded. Meant for ``Server.handle``'s own unexpected
    failures too.

    Examples
    --------
    >>> from fedmed import wire
    >>> status, body = unexpected_error(MemoryError())
    >>> status, wire.unpack(body)["error"]["type"]
    (503, 'ServerUnavailable')
    """
    return _OUT_OF_MEMORY if isinstance(exc, MemoryError) else _INTERNAL_ERROR


def log_unexpected(exc: BaseException) -> None:
    """Log an unexpected failure with its traceback; when even that fails (out of memory), say so in one line."""
    try:
        log.error("unexpected failure while answering a request", exc_info=exc)
    except Exception:
        try:
            log.error("unexpected failure while answering a request: %s (no traceback: logging failed)",
                      type(exc).__name__)
        except Exception:
            pass  # the answer matters more than its log line


class RefusalLog:
    """Writes the log lines of refused attempts: at most one per client address per ``every`` seconds.

    ``attempt(address, line)`` writes ``line`` when the address has had no
    line for ``every`` seconds, with ``suppressed``: how many of its attempts
    were counted but not written since its previous line. An address's
    count is written with its next line, or, once ``every`` seconds have
    passed, when the next refused attempt from anywhere arrives; then the
    address is forgotten, so the table holds only addresses refused recently.

    Examples
    --------
    >>> lines = []
    >>> refusals = RefusalLog(60.0, write=lines.append, clock=iter([0.0, 1.0, 2.0, 61.0]).__next__)
    >>> for _ in range(4):
    ...     refusals.attempt("10.0.0.7", {"client": "10.0.0.7", "status": 401})
    >>> lines
    [{'client': '10.0.0.7', 'status': 401}, {'client': '10.0.0.7', 'status': 401, 'suppressed': 2}]
    """

    def __init__(self, every: float, write: Callable[[dict[str, Any]], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.write = write
        self.clock = clock
        self._seen: dict[str, tuple[float, int, dict[str, Any]]] = {}  # address -> (last line, unlogged, last attempt)
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def attempt(self, address: str, line: dict[str, Any]) -> None:
        now = self.clock()
        due: list[dict[str, Any]] = []
        with self._lock:
            logged, unlogged, _ = self._seen.get(address, (None, 0, line))
            if logged is not None and now - logged < self.every:
                self._seen[address] = (logged, unlogged + 1, line)
            else:
                self._seen[address] = (now, 0, line)
                due.append({**line, "suppressed": unlogged} if unlogged else line)
            if now >= self._next_sweep:
                due += self._sweep(now)
        for entry in due:
            self.write(entry)

    def _sweep(self, now: float) -> list[dict[str, Any]]:
        """Forget addresses quiet for ``every`` seconds; the lines of their unlogged attempts."""
        self._next_sweep = now + self.every
        keep, due = {}, []
        for address, (logged, unlogged, last) in self._seen.items():
            if now - logged < self.every:
                keep[address] = (logged, unlogged, last)
            elif unlogged:
                due.append({**last, "suppressed": unlogged})
        self._seen = keep
        return due


def _http_error(exc: HTTPException) -> ServerError:
    code = exc.code or 500
    cls = {400: BadRequest, 413: RequestTooLarge}.get(code, ServerError)
    error = cls(f"{code} {exc.name}")
    error.status = code
    return error


def _msgpack_error(exc: ServerError) -> Response:
    body = wire.pack({"protocol": wire.PROTOCOL, "error": wire.error_body(exc)})
    return Response(body, status=exc.status, content_type=wire.CONTENT_TYPE)


def _prepared(exc: ServerError) -> tuple[int, bytes]:
    return exc.status, wire.pack({"protocol": wire.PROTOCOL, "error": wire.error_body(exc)})


_INTERNAL_ERROR = _prepared(ServerError(INTERNAL_ERROR))
_OUT_OF_MEMORY = _prepared(ServerUnavailable(OUT_OF_MEMORY))
