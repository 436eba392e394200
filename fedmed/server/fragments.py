"""What a server holds: fragments, each able to evaluate a node table over its rows.

A ``Fragment`` owns its data and its version and answers
``evaluate(nodes, outputs, config, person=...)``, where ``person`` is the
column identifying a person (the server config's ``persons``).
``InMemory`` does it with pandas; a later out-of-core fragment (DuckDB over
Parquet, Dask) compiles the same table its own way. Fragments are replaced, never mutated, so a query that
picked one up sees one version throughout.
"""

from __future__ import annotations

import threading
import weakref
from abc import ABC, abstractmethod
from functools import cached_property
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import Config
from ..expr.node import Node
from ..errors import PrivacyError, TaskFailed
from ..expr.node import walk
from ..expr.tables import RELATIONS
from .evaluate import Evaluated, Failure, Tables, evaluate_pandas
from .memory import Price, Size, key_columns, most_repeated, price, size_of_data, with_repeats


class Fragment(ABC):
    """Base class: a piece of private data on a server, able to evaluate node tables."""

    @property
    def rows(self) -> int | None:
        """Number of rows, where the fragment knows it cheaply."""
        return None

    def cannot_count_persons(self, column: str) -> str | None:
        """Why privacy rules cannot count persons here by ``column`` (None when they can); shown to the owner."""
        return f"a {type(self).__name__} fragment cannot count persons: policies that need them refuse its results"

    def price(self, nodes: Sequence[Node], outputs: Sequence[int], config: Config) -> Price | None:
        """What evaluating ``outputs`` will cost in memory (``fedmed.server.memory``), or None when
        the fragment bounds its own memory (a DuckDB fragment's ``memory_limit``)."""
        return None

    @abstractmethod
    def evaluate(
        self, nodes: Sequence[Node], outputs: Sequence[int], config: Config, person: str | None = None
    ) -> Iterable[Evaluated]:
        """Values (or ``Failure``s) of the map nodes at ``outputs``, with the rows behind each.

        ``nodes`` is the request's table, in wire order. ``person`` names the
        column identifying a person, or is None to count rows. A fragment
        that cannot count persons returns ``disclosure=None`` when it is
        set, so that policies that count refuse (fail closed).
        """


class InMemory(Fragment):
    """A fragment held in memory as pandas objects.

    Accepts a DataFrame, a Series, a list (or 1-d array), or a dict whose
    values are lists of one length (a table) or further dicts (nested).
    """

    def __init__(self, data: Any) -> None:
        self.data = as_pandas(data)

    @property
    def rows(self) -> int | None:
        return len(self.data) if isinstance(self.data, (pd.DataFrame, pd.Series)) else None

    def cannot_count_persons(self, column: str) -> str | None:
        if isinstance(self.data, pd.DataFrame) and isinstance(self.data.get(column), pd.Series):
            return None
        return f"the fragment has no column {column!r}: every task on it is refused"

    @cached_property
    def size(self) -> Size:
        """Rows, columns, item sizes and longest texts: measured once (the data never changes)."""
        return size_of_data(self.data)

    def price(self, nodes: Sequence[Node], outputs: Sequence[int], config: Config) -> Price | None:
        return price(nodes, outputs, self.size, config)

    def evaluate(
        self, nodes: Sequence[Node], outputs: Sequence[int], config: Config, person: str | None = None
    ) -> Iterable[Evaluated]:
        return evaluate_pandas(nodes, outputs, self.data, config, person=person)


def as_pandas(data: Any) -> Any:
    """Turn user data into the pandas objects the evaluator works on."""
    if isinstance(data, (pd.DataFrame, pd.Series)):
        # unique row labels: privacy policies follow rows through filters by label
        return data if data.index.is_unique else data.reset_index(drop=True)
    if isinstance(data, dict):
        if data and all(_is_column(v) for v in data.values()) and len({len(v) for v in data.values()}) == 1:
            return pd.DataFrame({str(k): v if isinstance(v, (np.ndarray, pd.Index)) else list(v) for k, v in data.items()})
        return {str(k): as_pandas(v) for k, v in data.items()}
    if _is_column(data):
        return pd.Series(data)
    raise TypeError(
        f"cannot serve a {type(data).__name__}: use a list, a dict of lists, or a pandas DataFrame/Series"
    )


def _is_column(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray, pd.Series, pd.Index)) and np.ndim(value) == 1


# -- tasks over several tables of one server (issue 18) --------------------------------------------------

#: Why a task reading a relation of DuckDB or Dask fragments is refused under privacy policies (fail closed:
#: only the pandas engine follows persons through relations, ``fedmed.server.lineage``).
TABLES_REFUSED = ("joins and derived tables of DuckDB and Dask fragments are not judged by this server's privacy "
                  "rules yet (issue 18): under privacy policies they run on in-memory (pandas) fragments only")


def evaluate_tables(
    fragments: Mapping[str, Fragment], nodes: Sequence[Node], outputs: Sequence[int], config: Config,
    person_of: Mapping[str, str | None] | None = None,
) -> Iterable[Evaluated]:
    """Values of ``outputs``, tasks that read ``fragments`` together (a merge, a concat, a per-person
    group-by), all in one evaluation so that a table they share is made once.

    In-memory fragments run them with pandas; fragments whose class has its
    own ``evaluate_tables`` (DuckDB's: Parquet, CSV, a DuckDB table; Dask's)
    run them themselves when every fragment of the task is of that engine.
    A mix of engines (a Parquet ``labs`` with an in-memory ``patients``, a
    Dask one with either) or any other kind fails every task, naming the
    fragments. Under privacy policies, in-memory fragments are judged per
    person (``person_of``: each fragment's person column); tasks over any
    other engine are refused (fail closed).
    """
    if all(isinstance(f, InMemory) for f in fragments.values()):
        tables = Tables({name: f.data for name, f in fragments.items()})  # type: ignore[attr-defined]
        return evaluate_pandas(nodes, outputs, tables, config, person_of=person_of)
    if config.privacy:
        return [Evaluated(Failure(PrivacyError(TABLES_REFUSED))) for _ in outputs]
    engines = {getattr(type(f), "evaluate_tables", None) for f in fragments.values()}
    if len(engines) == 1 and None not in engines:
        return next(iter(engines))(fragments, nodes, outputs, config)  # type: ignore[misc]
    kinds = sorted({n.kind for n in walk([nodes[o] for o in outputs]) if isinstance(n, RELATIONS)})
    what = ", ".join(kinds) or "reading several fragments"
    described = {n: "an in-memory" if isinstance(f, InMemory) else f"a {type(f).__name__}" for n, f in fragments.items()}
    lacking = sorted(n for n, f in fragments.items() if getattr(type(f), "evaluate_tables", None) is None
                     and not isinstance(f, InMemory))
    if lacking:
        error = TaskFailed(f"{what} runs on in-memory (pandas) fragments, or on DuckDB or Dask fragments alone, "
                           f"for now; {lacking[0]!r} is {described[lacking[0]]} fragment (issue 18)")
    else:
        named = " and ".join(f"{n!r} is {d} fragment" for n, d in sorted(described.items()))
        error = TaskFailed(f"{what} runs on in-memory (pandas) fragments, or on DuckDB or Dask fragments alone, "
                           f"not on several engines at once: {named}; serve the tables alike (issue 18)")
    return [Evaluated(Failure(error)) for _ in outputs]


def price_tables(fragments: Mapping[str, Fragment], nodes: Sequence[Node], outputs: Sequence[int],
                 config: Config) -> Price | None:
    """``evaluate_tables``' memory price (None where it will not run: it fails at no cost).

    A merge is priced from how often its keys repeat in the whole fragment
    (``fedmed.server.memory.most_repeated``), measured once per fragment
    version, never from the rows a request's filters keep.
    """
    if not all(isinstance(f, InMemory) for f in fragments.values()):
        return None
    keys = key_columns(nodes)
    sizes = {name: with_repeats(f.size, _repeats(f, keys)) for name, f in fragments.items()}  # type: ignore[attr-defined]
    return price(nodes, outputs, sizes, config)


#: The measured ``most`` of a fragment's key columns, by fragment object: fragments are replaced, never
#: mutated, so an entry holds for the fragment's version and goes with it.
_MOST: "weakref.WeakKeyDictionary[Fragment, dict[str, int | None]]" = weakref.WeakKeyDictionary()
_MOST_LOCK = threading.Lock()


def _repeats(fragment: InMemory, columns: set[str]) -> dict[str, int | None]:
    """``most_repeated`` of those ``columns`` the fragment's table has, each counted once per version."""
    data = fragment.data
    if not isinstance(data, pd.DataFrame):
        return {}
    with _MOST_LOCK:
        known = _MOST.setdefault(fragment, {})
    for c in sorted(columns - known.keys()):
        if c in data.columns and isinstance(data[c], pd.Series):
            known[c] = most_repeated(data[c])  # two requests may count a column at once: the same answer
    return {c: known[c] for c in columns if c in known}
