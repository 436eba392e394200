"""Deprecated: moved to ``fedmed.fragments.dask`` (``from fedmed.fragments.dask import Dask``); this shim re-exports it."""

from __future__ import annotations

from .fragments.dask import Dask

__all__ = ["Dask"]
