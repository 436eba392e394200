"""``Remote``: a fragment on a FedMed server reached over HTTP."""

from __future__ import annotations

import threading
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        base = self.ip.rstrip("/")
        if "://" not in base:
            base = f"http://{base}"
        object.__setattr__(self, "ip", base)

    @property
    def token(self) -> str:
        return f"remote:{self.ip}|{self.fragment}"

    @property
    def link_key(self) -> Hashable:
        return ("remote", self.ip, self.timeout)

    def link(self) -> "HttpLink":
        return HttpLink(self.ip, self.timeout)


@dataclass(frozen=True)
class HttpLink(Link):
    """POSTs msgpack requests to a server's protocol endpoint."""

    name: str
    timeout: float

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = _session().post(
                self.name + wire.ENDPOINT,
                data=wire.pack(request),
                headers={"Content-Type": wire.CONTENT_TYPE, "Accept": wire.CONTENT_TYPE},
                timeout=self.timeout,
            )
        except requests.Timeout:
            raise ServerUnavailable(f"no answer within {self.timeout:g} s", server=self.name) from None
        except requests.ConnectionError as exc:
            raise ServerUnavailable(f"cannot connect ({_reason(exc)})", server=self.name) from None
        return read_response(reply.status_code, reply.content, self.name)


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
