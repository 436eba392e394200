"""``Remote``: a fragment on a FedMed server reached over HTTP."""

from __future__ import annotations

import functools
import ipaddress
import os
import threading
import time
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Hashable
from urllib.parse import urlsplit

import certifi
import urllib3
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError

from .. import wire
from ..errors import InsecureTokenWarning, ServerUnavailable
from .base import Link, Source, read_response

#: Connections kept open per server; a round sends one request per server,
#: so more are needed only when several computations run at once.
CONNECTIONS_PER_SERVER = 8
#: Servers whose connections are kept between rounds.
SERVERS_KEPT = 1024

_managers: dict[str | None, urllib3.PoolManager] = {}
_managers_lock = threading.Lock()


def _manager(url: str) -> urllib3.PoolManager:
    """The process's connection pool for ``url`` (through the proxy the environment names, if any).

    urllib3 directly, not ``requests``: a request costs about half the
    client CPU (1 ms instead of 2 here), which is what a round over hundreds
    of servers is made of, and one pool shared by every thread keeps one set
    of connections instead of one per thread. What ``requests`` read from the
    environment is kept: ``HTTP(S)_PROXY``/``NO_PROXY`` and the certificate
    bundle in ``REQUESTS_CA_BUNDLE`` (else certifi's, as ``requests``).
    """
    proxy = _proxy_for(url)
    manager = _managers.get(proxy)
    if manager is None:
        with _managers_lock:
            manager = _managers.get(proxy)
            if manager is None:
                options = dict(num_pools=SERVERS_KEPT, maxsize=CONNECTIONS_PER_SERVER, retries=False,
                               ca_certs=os.environ.get("REQUESTS_CA_BUNDLE") or certifi.where())
                manager = urllib3.ProxyManager(proxy, **options) if proxy else urllib3.PoolManager(**options)
                _managers[proxy] = manager
    return manager


def _proxy_for(url: str) -> str | None:
    parts = urlsplit(url)
    return _proxy(parts.scheme, parts.hostname or "")


@functools.lru_cache(maxsize=SERVERS_KEPT)
def _proxy(scheme: str, host: str) -> str | None:
    # read once per server: scanning the environment costs as much as the rest of a request
    if urllib.request.proxy_bypass(host):
        return None
    return urllib.request.getproxies().get(scheme)


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
        if self.token and _readable_on_the_way(base):
            warnings.warn(
                f"fm.Remote({base!r}) sends its token over plain HTTP, readable by anyone between here and the "
                "server: use an https:// URL (a TLS proxy in front of the server, docs/security.md)",
                InsecureTokenWarning, stacklevel=3,
            )

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
        url = self.name + wire.ENDPOINT
        for attempt in range(self.retries + 1):
            try:
                reply = _manager(url).request("POST", url, body=body, headers=headers, timeout=self.timeout)
                break
            except NewConnectionError as exc:  # refused or no such host (urllib3 files it under timeouts)
                failure: Exception = exc
            except ConnectTimeoutError:
                raise ServerUnavailable(f"no connection within {self.timeout:g} s", server=self.name) from None
            except ReadTimeoutError:  # not retried: the server may still be working on it
                raise ServerUnavailable(f"no answer within {self.timeout:g} s", server=self.name) from None
            except HTTPError as exc:  # reset, TLS, proxy: worth another attempt
                failure = exc
            if attempt == self.retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise ServerUnavailable(f"cannot connect ({_reason(failure)}){tries}", server=self.name) from None
            time.sleep(self.backoff * 2**attempt)
        return read_response(reply.status, reply.data, self.name)


def _readable_on_the_way(url: str) -> bool:
    """Plain HTTP to another machine (loopback never leaves this one)."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return True


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Name or service not known", "timed out", "Connection reset"):
        if marker in text:
            return marker.lower()
    return type(exc).__name__
