"""What every backend shares: a ``Source`` names a fragment on a server, a link carries requests.

The executor groups tasks by ``Source.link_key`` (one request per server per
round) and calls ``link.send(request) -> response``. Backends differ only in
how the bytes travel; ``read_response`` turns any server answer into the
decoded response or the typed error it carries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Hashable

from .. import wire
from ..errors import ERROR_TYPES, ServerError
from ..options import options


class Link(ABC):
    """A way to reach one server; ``name`` is how errors and plans refer to it."""

    name: str

    @abstractmethod
    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one protocol request and return the decoded response (or raise a ServerError)."""


class Source(ABC):
    """One fragment on one server: what a ``FedData`` is made of."""

    fragment: str

    @property
    @abstractmethod
    def uid(self) -> str:
        """Stable identity of this source, part of the keys of nodes that read it."""

    @property
    @abstractmethod
    def link_key(self) -> Hashable:
        """Sources with equal link keys share one request per round."""

    @abstractmethod
    def link(self) -> Link:
        """The link to this source's server."""

    @property
    def server(self) -> str:
        return self.link().name

    @property
    def fragments(self) -> tuple[str, ...]:
        """The fragments a task of this source reads, by slot (one, unless paired)."""
        return (self.fragment,)

    @property
    def parts(self) -> tuple["Source", ...]:
        """The plain sources behind this one, by slot."""
        return (self,)


class Paired(Source):
    """Several fragments of one server, read together by one task (a merge or concat of tables).

    Slot ``i`` is ``parts[i]``: ``Fragment()`` of a task reads slot 0,
    ``Table(i)`` slot ``i`` (``fedmed.expr.tables``). Requests go to the
    first part's server, which is every part's server.
    """

    def __init__(self, parts: "tuple[Source, ...]") -> None:
        self._parts = tuple(parts)
        self.fragment = "+".join(self.fragments)  # for messages and plans: 'patients+labs'

    @property
    def parts(self) -> tuple[Source, ...]:
        return self._parts

    @property
    def fragments(self) -> tuple[str, ...]:
        return tuple(p.fragment for p in self._parts)

    @property
    def uid(self) -> str:
        return "paired(" + ",".join(p.uid for p in self._parts) + ")"

    @property
    def link_key(self) -> Hashable:
        return self._parts[0].link_key

    def link(self) -> Link:
        return self._parts[0].link()

    def __repr__(self) -> str:
        return f"Paired({', '.join(map(repr, self._parts))})"


def read_response(status: int, body: bytes, server: str) -> dict[str, Any]:
    """Decode a server's answer; raise the typed error it reports, located at ``server``.

    Answers are bounded by ``fm.options.max_response_bytes``, not by the
    (much smaller) bound a server puts on requests.
    """
    limit = options.max_response_bytes
    if len(body) > limit:
        raise ServerError(
            f"the server answered HTTP {status} with {len(body):,} bytes, more than this client accepts "
            f"({limit:,} bytes, fm.options.max_response_bytes); raise that bound to accept it, or ask for less",
            server=server,
        )
    try:
        response = wire.unpack(body, max_bytes=limit)
    except Exception:
        raise ServerError(f"the server answered HTTP {status} with a body that is not msgpack", server=server) from None
    if not isinstance(response, dict):
        raise ServerError("the server's answer is not a msgpack map", server=server)
    if "error" in response:
        raise error_from_wire(response["error"], server)
    if not isinstance(response.get("results"), list):
        raise ServerError(f"the server answered HTTP {status} without results", server=server)
    if response.get("protocol") != wire.PROTOCOL:
        raise ServerError(
            f"the server speaks protocol {response.get('protocol')!r}, this client {wire.PROTOCOL}", server=server
        )
    return response


def error_from_wire(error: Any, server: str) -> ServerError:
    """Rebuild the typed error a server sent (an unknown type becomes a plain ServerError)."""
    if not isinstance(error, dict):
        return ServerError(f"the server sent a malformed error: {error!r}"[:200], server=server)
    cls = ERROR_TYPES.get(error.get("type"), ServerError)
    return cls(
        str(error.get("message", "unknown error")),
        server=server,
        fragment=error.get("fragment"),
        operation=error.get("operation"),
        policy=error.get("policy"),
    )
