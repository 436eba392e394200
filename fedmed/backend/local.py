"""``Local``: data in this process, evaluated exactly (no privacy policies, no encoding)."""

from __future__ import annotations

import itertools
from typing import Any, Hashable, Mapping

from ..config import Config, load_config
from ..errors import ServerError
from ..server.core import Server
from .base import Link, Source

_ids = itertools.count(1)


class Local(Source):
    """A fragment held by the analyst, evaluated in-process with the same evaluator as a server.

    Useful to develop an analysis on synthetic data before running it on
    real servers. Policies are not applied: results are exact.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local([1, 2]), fm.Local([3, 4])])
    >>> float(data.sum() / data.len())
    2.5
    """

    fragment = "local"

    def __init__(self, data: Any, config: "str | Mapping[str, Any] | Config | None" = None) -> None:
        self._server = Server(load_config(config).without_privacy())
        self._server[self.fragment] = data
        self._uid = self._site = f"local:{next(_ids)}"

    @classmethod
    def site(cls, tables: Mapping[str, Any],
             config: "str | Mapping[str, Any] | Config | None" = None) -> dict[str, "Local"]:
        """Several tables on one in-process server, each its own fragment: tables ``merge`` can pair.

        Examples
        --------
        >>> import fedmed as fm
        >>> site = fm.Local.site({"patients": {"id": [1, 2]}, "labs": {"id": [1, 1, 2], "x": [1.0, 2.0, 4.0]}})
        >>> patients, labs = fm.FedData([site["patients"]]), fm.FedData([site["labs"]])
        >>> float(patients.merge(labs, on="id")["x"].sum())
        7.0
        """
        server = Server(load_config(config).without_privacy())
        place = f"local:{next(_ids)}"
        out = {}
        for name, data in tables.items():
            source = object.__new__(cls)
            server[str(name)] = data
            source._server, source.fragment, source._site, source._uid = server, str(name), place, f"{place}|{name}"
            out[name] = source
        return out

    @property
    def uid(self) -> str:
        return self._uid

    @property
    def link_key(self) -> Hashable:
        return ("local", self._site)

    def link(self) -> "LocalLink":
        return LocalLink(self._site, self._server)

    def __repr__(self) -> str:
        return f"Local({self._uid})"


class LocalLink(Link):
    """Calls ``Server.evaluate`` on the decoded request."""

    def __init__(self, name: str, server: Server) -> None:
        self.name = name
        self.server = server

    def send(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.server.evaluate(request, client=self.name)
        except ServerError as exc:
            raise exc.located(self.name) from None
