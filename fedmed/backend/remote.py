"""``Remote``: a fragment on a FedMed server reached over HTTP."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Hashable

import requests
from requests.adapters import HTTPAdapter

from .. import wire
from ..errors import ServerUnavailable
from .base import Link, Source, read_response

_local = threading.local()


def _session() -> requests.Session:
    # One pooled session per thread: connections to each server are reused
    # across rounds, and no session is shared between threads.
    session = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_connections=64, pool_maxsize=64))
        session.mount("https://", HTTPAdapter(pool_connections=64, pool_maxsize=64))
        _local.session = session
    return session


@dataclass(frozen=True)
class Remote(Source):
    """A fragment on a remote FedMed server.

    Parameters
    ----------
    ip : str
        The server's base URL, e.g. ``"http://127.0.0.1:5000"``.
    fragment : str
        The name of the fragment on that server.
    timeout : float
        Seconds to wait for the connection and for the answer of each request.
    token : str, optional
        Bearer token for a server with authentication on (sent as
        ``Authorization: Bearer ...``; use HTTPS through a reverse proxy so it
        never travels in clear).
    retries : int
        Extra attempts after a failed connection, waiting ``backoff``,
        ``2 * backoff``, ... seconds. Requests are idempotent, so retrying is
        safe; a timed-out answer is not retried (the server may be busy).

    Examples
    --------
    >>> import fedmed as fm
    >>> source = fm.Remote(ip="http://127.0.0.1:5000", fragment="cohort 1/2")
    >>> source.server
    'http://127.0.0.1:5000'
    """

    ip: str
    fragment: str
    timeout: float = 30.0
    token: str | None = field(default=None, repr=False)
    retries: int = 2
    backoff: float = 0.2

    def __post_init__(self) -> None:
        base = self.ip.rstrip("/")
        if "://" not in base:
            base = f"http://{base}"
        object.__setattr__(self, "ip", base)

    @property
    def uid(self) -> str:
        return f"remote:{self.ip}|{self.fragment}"

    @property
    def link_key(self) -> Hashable:
        return ("remote", self.ip, self.timeout, self.token, self.retries, self.backoff)

    def link(self) -> "HttpLink":
        return HttpLink(self.ip, self.timeout, self.token, self.retries, self.backoff)


@dataclass(frozen=True)
class HttpLink(Link):
    """POSTs msgpack requests to a server's protocol endpoint."""

    name: str
    timeout: float
    token: str | None = field(default=None, repr=False)
    retries: int = 2
    backoff: float = 0.2

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": wire.CONTENT_TYPE, "Accept": wire.CONTENT_TYPE}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        body = wire.pack(request)
        for attempt in range(self.retries + 1):
            try:
                reply = _session().post(self.name + wire.ENDPOINT, data=body, headers=headers, timeout=self.timeout)
                break
            except requests.Timeout:
                raise ServerUnavailable(f"no answer within {self.timeout:g} s", server=self.name) from None
            except requests.ConnectionError as exc:
                if attempt == self.retries:
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise ServerUnavailable(f"cannot connect ({_reason(exc)}){tries}", server=self.name) from None
                time.sleep(self.backoff * 2**attempt)
        return read_response(reply.status_code, reply.content, self.name)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
