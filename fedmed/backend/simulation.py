"""``Simulation``: a fragment on an in-process ``Server``, through the real msgpack encoding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

from .. import wire
from ..server.core import Server, Traffic
from .base import Link, Source, read_response


@dataclass(frozen=True, eq=False)
class Simulation(Source):
    """A fragment on a ``Server`` object in this process.

    Requests are encoded and decoded exactly as over HTTP, and the server
    applies its privacy policies, so a simulation behaves like the real
    deployment without sockets. ``traffic`` reports the server's exact
    request and byte counts.

    Examples
    --------
    >>> import fedmed as fm
    >>> server = fm.Server()
    >>> server["a"] = [1, 2, 3]
    >>> sim = fm.Simulation(server, "a")
    >>> int(fm.FedData([sim]).sum()), sim.traffic.requests
    (6, 1)
    """

    server_object: Server
    fragment: str
    name: str = "simulation"

    @property
    def uid(self) -> str:
        return f"simulation:{id(self.server_object):x}|{self.fragment}"

    @property
    def link_key(self) -> Hashable:
        return ("simulation", id(self.server_object))

    def link(self) -> "ServerLink":
        return ServerLink(f"{self.name}:{id(self.server_object):x}", self.server_object)

    @property
    def traffic(self) -> Traffic:
        return self.server_object.traffic


@dataclass(frozen=True, eq=False)
class ServerLink(Link):
    """Hands msgpack bytes to ``Server.handle`` directly."""

    name: str
    server: Server

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        status, body = self.server.handle(wire.pack(request), client=self.name)
        return read_response(status, body, self.name)
