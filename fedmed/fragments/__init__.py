"""Kinds of fragments a server can hold.

- ``InMemory``: pandas objects in the server's memory (what ``server[name] = data``
  makes of a list, dict or DataFrame).
- ``Parquet``, ``CSV``, ``DuckDB``: data that stays on disk; every request is
  compiled into one DuckDB SQL query (``fedmed.fragments.sql``), scanned out of
  core. They need the optional ``duckdb`` package (``pip install 'fedmed[duckdb]'``),
  imported only when such a fragment is created.

>>> import fedmed as fm
>>> server = fm.Server()
>>> server["small"] = fm.fragments.InMemory({"x": [1, 2, 3]})
>>> int(fm.FedData([fm.Simulation(server, "small")])["x"].sum())
6
"""

from __future__ import annotations

from ..server.fragments import Fragment, InMemory
from .duckdb import CSV, DuckDB, Parquet, SQLFragment

__all__ = ["Fragment", "InMemory", "Parquet", "CSV", "DuckDB", "SQLFragment", "Dask"]


def __getattr__(name: str):
    # Dask loads on first use: importing it takes seconds
    if name == "Dask":
        from .dask import Dask

        return Dask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
