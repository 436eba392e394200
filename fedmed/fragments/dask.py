"""``Dask``: a fragment held in a ``dask.dataframe.DataFrame``, on a hospital's own Dask cluster.

Install with ``pip install 'fedmed[dask]'``. A server owner whose data is
too large for one machine's memory points FedMed at the cluster they
already have::

    from dask.distributed import Client
    import dask.dataframe as dd
    import fedmed as fm
    from fedmed.fragments.dask import Dask

    client = Client("tcp://scheduler:8786")      # dask.compute now runs there
    server = fm.Server(config="config.yaml")
    server["registry"] = Dask(dd.read_parquet("/data/registry/*.parquet"))

Evaluation follows the pandas evaluator (``fedmed.server.evaluate``) node by
node, with the same results and rules, but every node is a lazy dask
expression: column selection, row filters and the elementwise operations of
``fedmed.ops.binary`` build on the frame without reading it. Row filters
and elementwise operations are the pandas evaluator's own
(``select_rows``, ``apply_elementwise``) run on each partition, so a row
an operation cannot compute is missing here too, never a failed compute
(see ``fedmed.ops.binary`` on why that matters for privacy). Each
aggregate is then built lazily too, and **one** ``dask.compute`` per
``evaluate`` call runs all the request's outputs together, so the data are
read once per request, on the cluster, and only the small map results come
back. Aggregates are either dask's own reductions (``len count sum sqsum min
max set value_counts crosstab``) or FedMed's pandas map run on each
partition and merged as the client merges servers (Chan et al.'s update for
``moments comoments comoment_matrix``; sums for ``histogram count_below
glm_step``): the value sent is what the pandas path sends for the whole
frame, up to floating-point rounding.

What is refused, as a ``TaskFailed`` naming it (returned as a ``Failure``,
so the request's other tasks still run): an operation whose config entry is
not FedMed's own function (a server owner's custom pandas function could
read the whole frame into memory; nothing here ever calls ``.compute()``
on it), multi-argument aggregates over columns that are not partitioned
alike, and nested dict fragments. If the one ``dask.compute`` itself fails
(an error that shows only when the data are read, in an aggregate), every
output of the request fails with that error: one computation cannot say
which output caused it.

**Privacy.** A Dask fragment reports no ``disclosure`` (``None``): finding
which rows stand behind each result would mean carrying row masks through
the cluster. Policies that need row facts therefore refuse every result of
a Dask fragment: ``Anonymity`` ("this fragment cannot report the rows
behind a result"), ``Dominance``, and ``Noise`` on sums. Policies that need
only the value (``Noise`` on counts and histograms, ``Budget``,
``Coarsening``, ``Saturation``, ``ComplexityCap``, ``CacheLimit``) apply as
usual; ``Snapshot`` cannot compare two versions of a Dask fragment
(replacing one under it raises ``TypeError``). Until row facts are
supported, serve a Dask fragment only where its config's policies need
none.

Two dask issues are avoided (dask 2026.8): a filter whose mask is a bare
``astype`` returned the mask filtered by itself (dask/dask#12172; filters
select on each partition instead, see ``_filter``), and one
``dask.compute`` over both expression collections and ``dask.delayed``
objects returned the results out of order (see ``_partitions``).
"""

from __future__ import annotations

import builtins
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

try:
    import dask
    import dask.dataframe as dd
except ImportError:  # pragma: no cover - depends on the install; Dask() says what to install
    dask = dd = None

from ..config import Config
from ..errors import OperationError, ServerError, TaskFailed
from ..expr.node import Node
from ..expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ..ops import binary, private, public
from ..ops.columns import COLUMNS
from ..server.evaluate import (
    _REPEATING, Evaluated, Failure, _is_text, apply_elementwise, apply_map, fold_table, refuse_text, select_rows,
)
from ..server.fragments import Fragment

__all__ = ["Dask"]

_COLLECTIONS: tuple[type, ...] = (dd.DataFrame, dd.Series) if dd is not None else ()


class Dask(Fragment):
    """A fragment held in a ``dask.dataframe.DataFrame`` (or ``Series``), evaluated with one ``dask.compute`` per request.

    Parameters
    ----------
    data : dask.dataframe.DataFrame or dask.dataframe.Series
        The rows, typically ``dd.read_parquet(...)``. It is never computed
        whole; each request computes only its aggregates.
    rows : int, optional
        The number of rows, if the owner knows it cheaply (Parquet
        metadata); shown by ``/v1/info`` and the status page. Not counted
        here, which would read the data.

    The returned ``Evaluated`` objects carry ``disclosure=None``: privacy
    policies that need the rows behind a result (``Anonymity``,
    ``Dominance``, ``Noise`` on sums) then refuse, as they do for any
    fragment without disclosure. See the module docstring.

    Examples
    --------
    >>> import dask.dataframe as dd, pandas as pd, fedmed as fm
    >>> server = fm.Server()
    >>> server["cohort"] = Dask(dd.from_pandas(pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}), npartitions=2))
    >>> data = fm.FedData([fm.Simulation(server, "cohort")])
    >>> float(data["x"].sum() / data["x"].count())
    2.5
    """

    def __init__(self, data: Any, rows: int | None = None) -> None:
        if dd is None:
            raise ImportError("Dask fragments need dask: pip install 'fedmed[dask]'")
        if not isinstance(data, _COLLECTIONS):
            raise TypeError(
                f"Dask() holds a dask.dataframe DataFrame or Series, not a {type(data).__name__} "
                "(serve pandas objects directly: server[name] = frame)"
            )
        self.data = data
        self._rows = rows

    @property
    def rows(self) -> int | None:
        return self._rows

    def evaluate(
        self, nodes: Sequence[Node], outputs: Sequence[int], config: Config, person: str | None = None
    ) -> list[Evaluated]:
        # no disclosure, so none by persons either: a declared ``person`` changes nothing here
        values = fold_table(nodes, outputs, lambda node, args: _visit(node, args, self.data, config))
        results = _compute_all([values[o] for o in outputs])
        return [Evaluated(value, None) for value in results]

    @staticmethod
    def evaluate_tables(fragments: Any, nodes: Sequence[Node], outputs: Sequence[int],
                        config: Config) -> list[Evaluated]:
        """Tasks reading several Dask fragments of this server together (a merge, a concat, a per-person
        group-by: ``fedmed.fragments.dask_tables``), built lazily and run by one ``dask.compute``. Exact
        configs only: under privacy policies the server refuses these tasks before they get here."""
        from .dask_tables import evaluate_tables

        return evaluate_tables(fragments, nodes, outputs, config)


# -- the node table, lazily ------------------------------------------------------
def _visit(node: Node, args: list[Any], data: Any, config: Config) -> Any:
    try:
        if isinstance(node, FragmentNode):
            return data
        if isinstance(node, Column):
            return _column(node, args[0])
        if isinstance(node, Literal):
            return node.value
        if isinstance(node, Elementwise):
            return _elementwise(node, args, config)
        if isinstance(node, Filter):
            return _filter(*args)
        if isinstance(node, Map):
            return _map(node, args, config)
        raise TaskFailed(f"the Dask fragment cannot evaluate a {node.kind} node")
    except ServerError as exc:
        return Failure(exc)
    except OperationError as exc:  # raised by FedMed's operations: its text holds no data
        return Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} failed: {exc}"[:300]))
    except Exception as exc:  # pandas, numpy and dask may quote data: only the kind of error leaves
        return Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} failed: {type(exc).__name__}"))


def _column(node: Column, table: Any) -> Any:
    if isinstance(table, dd.DataFrame):
        if node.name in table.columns:
            return table[node.name]
        raise TaskFailed(f"no column {node.name!r}")
    if isinstance(table, dict):
        raise TaskFailed("the Dask fragment does not support nested dict fragments")
    raise TaskFailed(f"cannot select column {node.name!r}: the value has no columns")


#: FedMed's own elementwise functions, by identity: a server owner's custom function could read the
#: whole frame into memory, so only these run on the cluster.
_ELEMENTWISE: frozenset[int] = frozenset(
    id(getattr(binary, name)) for name in (
        "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "abs", "eq", "ne", "lt", "le", "gt", "ge",
        "and_", "or_", "invert", "isna", "notna", "fillna", "isin", "clip", "log", "exp", "sqrt", "round", "astype",
        "to_numeric", "dummy", "to_datetime", "dt_year", "dt_month", "dt_days",
    )
)


def _elementwise(node: Elementwise, args: list[Any], config: Config) -> Any:
    fn = config.elementwise[node.op]
    if id(fn) not in _ELEMENTWISE:
        raise TaskFailed(
            f"the Dask fragment has no dask version of the elementwise operation {node.op!r} "
            f"({fn.__module__}.{fn.__qualname__} is not one of fedmed.ops.binary's)"
        )
    # text where numbers are needed is refused by the columns' types (their empty ``_meta``), with the
    # pandas engine's message; counting the values that are not numbers would read the data
    refuse_text(node.op, [a._meta if isinstance(a, _COLLECTIONS) else a for a in args])
    if node.op in _REPEATING and any(_is_text(a) for a in args):
        raise TaskFailed(f"{node.op} is not defined for text values")
    if not any(isinstance(a, _COLLECTIONS) for a in args):  # constants only: numpy rules, as the pandas path
        return fn(*[np.asarray(a) if isinstance(a, (int, float, list)) and not isinstance(a, bool) else a for a in args])
    if any(isinstance(a, list) and node.op != "isin" for a in args):
        raise TaskFailed(f"the Dask fragment cannot combine a list of values with rows in {node.op!r}")
    # the pandas evaluator's own operation on each partition: a row it cannot compute is missing there
    # too, so that whether the request's one compute fails never depends on the rows (a native dask
    # operation would fail the whole compute, and with it every output of the request)
    meta = apply_elementwise(node.op, fn, [a._meta if isinstance(a, _COLLECTIONS) else a for a in args])
    return dd.map_partitions(functools.partial(_per_partition, node.op, fn), *args, meta=meta,
                             token=f"fedmed-{node.op}")


def _per_partition(op: str, fn: Callable[..., Any], *args: Any) -> Any:
    return apply_elementwise(op, fn, list(args))


def _filter(table: Any, mask: Any) -> Any:
    if not isinstance(mask, dd.Series) or not isinstance(table, _COLLECTIONS):
        raise TaskFailed("a row filter needs a boolean column of the same fragment")
    # the pandas path's selection on each partition: a missing value keeps no row (as in SQL), other
    # values by their truth, whatever the mask's type turned out to be on that partition. (dask's own
    # x[mask] also tripped dask/dask#12172 with a bare astype as the mask.)
    return dd.map_partitions(select_rows, table, mask, meta=table._meta, token="fedmed-filter")


# -- aggregates: lazy parts and how to finish them ---------------------------------
@dataclass(frozen=True)
class _Lazy:
    """A map value still to compute: dask objects, and how their computed values become the wire value."""

    parts: tuple[Any, ...]
    finish: Callable[..., Any]


def _map(node: Map, args: list[Any], config: Config) -> Any:
    fn = config.aggregates[node.op].map
    build = _AGGREGATES.get(id(fn))
    if build is None:
        raise TaskFailed(
            f"the Dask fragment has no dask version of the aggregate {node.op!r} "
            f"({fn.__module__}.{fn.__qualname__} is not one of fedmed.ops.private's)"
        )
    if not any(isinstance(a, _COLLECTIONS) for a in args):
        return fn(*args)  # constants only: nothing to read
    refuse_text(node.op, [a._meta if isinstance(a, _COLLECTIONS) else a for a in args],
                numbers=getattr(fn, "needs_numbers", False))
    return _per_column(lambda x: build(fn, x, *args[1:]), args[0])


def _per_column(build: Callable[[Any], Any], value: Any) -> Any:
    """As ``map_columns``: one result per column of a table, sent as ``{"$columns": {...}}``."""
    if isinstance(value, dd.DataFrame):
        return {COLUMNS: {str(col): build(value[col]) for col in value.columns}}
    if isinstance(value, dd.Series):
        return build(value)
    raise TaskFailed(f"an aggregate needs rows, not a {type(value).__name__}")


def _py(value: Any) -> Any:
    """A plain Python value for msgpack (numpy and pyarrow scalars, pandas' NA)."""
    if isinstance(value, np.generic):
        return value.item()
    if value is pd.NA or value is pd.NaT:
        return None
    if hasattr(value, "as_py"):
        return value.as_py()
    return value


def _len(fn: Any, x: Any) -> _Lazy:
    return _Lazy((x.size,), lambda n: int(n))


def _count(fn: Any, x: Any) -> _Lazy:
    return _Lazy((x.count(),), lambda n: int(n))


def _sum(fn: Any, x: Any) -> _Lazy:
    return _Lazy((private._numbers(x, "sum").sum(),), _py)  # text is refused, as the pandas path


def _sqsum(fn: Any, x: Any) -> _Lazy:
    values = private._numbers(x, "sqsum").astype("float64")
    return _Lazy(((values * values).sum(),), float)


def _extreme(which: str) -> Callable[..., _Lazy]:
    def build(fn: Any, x: Any) -> _Lazy:
        # the count tells an empty column (None, as pandas' path) from a missing minimum
        return _Lazy((getattr(x, which)(), x.count()), lambda value, n: None if int(n) == 0 else _py(value))

    return build


def _set(fn: Any, x: Any) -> _Lazy:
    return _Lazy((x.dropna().drop_duplicates(),), lambda values: sorted(_py(v) for v in values))


def _value_counts(fn: Any, x: Any) -> _Lazy:
    def finish(counts: pd.Series) -> list[list[Any]]:
        counts = counts.sort_values(ascending=False, kind="stable")  # most frequent first, as pandas
        return [[_py(value), int(count)] for value, count in counts.items()]

    return _Lazy((x.value_counts(dropna=True),), finish)


def _crosstab(fn: Any, a: Any, b: Any) -> _Lazy:
    if not isinstance(b, dd.Series):
        raise TaskFailed("crosstab needs two columns of the fragment")
    both = a.rename("a").to_frame().assign(b=b.rename("b")).dropna()
    counts = both.groupby(["a", "b"], sort=False).size()
    return _Lazy((counts,), lambda c: [[_py(i), _py(j), int(n)] for (i, j), n in c.items()])


def _partitions(fn: Callable[..., Any], merge: Callable[[list[Any]], Any]) -> Callable[..., _Lazy]:
    """An aggregate as FedMed's pandas map on every partition, merged like servers' results.

    The columns among the arguments become one frame (aligned partition by
    partition, by row label, as the pandas map aligns them); each partition
    yields one partial result, and the server merges the partials after
    the request's one compute. Only dask-expr collections are built: mixing
    them with ``dask.delayed`` objects in one ``dask.compute`` returned the
    results out of order with dask 2026.8.
    """

    def build(map_fn: Any, *args: Any) -> _Lazy:
        where = [i for i, a in enumerate(args) if isinstance(a, dd.Series)]
        if len({args[i].npartitions for i in where}) > 1:
            raise TaskFailed(f"{fn.__name__} needs columns partitioned alike (same npartitions)")
        # bad arguments (a histogram's bins, a model's family) fail this output now, on dask's empty
        # sample of each column, not the request's whole computation later
        fn(*(args[i]._meta if i in where else a for i, a in enumerate(args)))
        frame = args[where[0]].to_frame(name=str(where[0]))
        if len(where) > 1:
            frame = frame.assign(**{str(i): args[i] for i in where[1:]})

        # the function dask tokenizes holds only plain values: a closure over dask collections made
        # tokenizing (by pickling) take minutes
        constants = tuple(None if i in where else a for i, a in enumerate(args))
        chunk = functools.partial(_chunk, fn, tuple(where), constants)
        partials = frame.map_partitions(chunk, meta=pd.Series([], dtype=object), token=f"fedmed-{fn.__name__}")
        return _Lazy((partials,), lambda computed: merge(list(computed)))

    return build


def _chunk(fn: Callable[..., Any], where: tuple[int, ...], constants: tuple[Any, ...], part: pd.DataFrame) -> pd.Series:
    """One partition's partial result (a one-element object Series, for dask to concatenate)."""
    values = [part[str(i)] if i in where else a for i, a in enumerate(constants)]
    # as on pandas: values a map cannot read are missing there, so no row decides whether it fails
    return pd.Series([apply_map(fn, values)], dtype=object)


def _merge_moments(parts: list[Any]) -> list[Any]:
    m = public.moments(parts)
    return [m.n, float(m.mean), float(m.m2)] if m.n else [0, 0.0, 0.0]


def _merge_comoments(parts: list[Any]) -> list[Any]:
    c = public.comoments(parts)
    return [c.n, float(c.mean_x), float(c.mean_y), float(c.m2_x), float(c.m2_y), float(c.cxy)] if c.n else [0] + [0.0] * 5


def _merge_comoment_matrix(parts: list[Any]) -> list[Any]:
    m = public.comoment_matrix(parts)
    return [m.n, np.asarray(m.mean, dtype=float).tolist(), np.asarray(m.m2, dtype=float).tolist()]


def _merge_histogram(parts: list[dict[str, list[Any]]]) -> dict[str, list[Any]]:
    counts = np.sum([p["counts"] for p in parts], axis=0, dtype=np.int64)
    return {"counts": counts.tolist(), "edges": parts[0]["edges"]}


def _merge_counts(parts: list[list[int]]) -> list[int]:
    return np.sum(parts, axis=0, dtype=np.int64).tolist()


def _merge_glm(parts: list[list[Any]]) -> list[Any]:
    return [
        builtins.sum(p[0] for p in parts),
        np.sum([p[1] for p in parts], axis=0).tolist(),
        np.sum([p[2] for p in parts], axis=0).tolist(),
        math.fsum(p[3] for p in parts),
    ]


#: FedMed's map functions (by identity: a server owner's replacement is not assumed to mean the same)
#: and how each is built with dask.
_AGGREGATES: dict[int, Callable[..., Any]] = {
    id(private.len): _len,
    id(private.count): _count,
    id(private.sum): _sum,
    id(private.sqsum): _sqsum,
    id(private.min): _extreme("min"),
    id(private.max): _extreme("max"),
    id(private.set): _set,
    id(private.value_counts): _value_counts,
    id(private.crosstab): _crosstab,
    id(private.moments): _partitions(private.moments, _merge_moments),
    id(private.comoments): _partitions(private.comoments, _merge_comoments),
    id(private.comoment_matrix): _partitions(private.comoment_matrix, _merge_comoment_matrix),
    id(private.histogram): _partitions(private.histogram, _merge_histogram),
    id(private.count_below): _partitions(private.count_below, _merge_counts),
    id(private.glm_step): _partitions(private.glm_step, _merge_glm),
    # per-group partials of each partition, merged per label as the client merges servers
    id(private.grouped): _partitions(private.grouped, public.merge_grouped),
    id(private.schema): lambda fn, x: _dtype(x),
}


def _dtype(x: Any) -> str:
    """The column's dtype as the pandas fragment of the same rows shows it (no compute: the ``_meta``'s).

    Dask turns text into pyarrow strings (``dataframe.convert-string``), whatever pandas held; the
    same rows in pandas show pandas' default text dtype, ``str``.
    """
    dtype = x.dtype
    converted = dask.config.get("dataframe.convert-string", None) is not False  # None: dask's default, on
    if converted and isinstance(dtype, pd.StringDtype) \
            and dtype.storage == "pyarrow" and dtype.na_value is pd.NA:
        return "str"
    return str(dtype)


# -- one dask.compute for the whole request ------------------------------------------
def _compute_all(values: list[Any]) -> list[Any]:
    """Every output's lazy parts computed in one ``dask.compute``; then each finished into its wire value."""
    lazies: list[_Lazy] = []
    for value in values:
        _collect(value, lazies)
    if not lazies:
        return values
    flat = [part for lazy in lazies for part in lazy.parts]
    try:
        computed = dask.compute(*flat)
    except Exception as exc:  # only the kind of error: its text may quote data
        failure = Failure(TaskFailed(f"the request's dask computation failed: {type(exc).__name__}"))
        return [_fill(value, {id(lazy): failure for lazy in lazies}) for value in values]
    done: dict[int, Any] = {}
    offset = 0
    for lazy in lazies:
        chunk = computed[offset:offset + len(lazy.parts)]
        offset += len(lazy.parts)
        try:
            done[id(lazy)] = lazy.finish(*chunk)
        except OperationError as exc:
            done[id(lazy)] = Failure(TaskFailed(f"an aggregate failed: {exc}"[:300]))
        except Exception as exc:
            done[id(lazy)] = Failure(TaskFailed(f"an aggregate failed: {type(exc).__name__}"))
    return [_fill(value, done) for value in values]


def _collect(value: Any, into: list[_Lazy]) -> None:
    if isinstance(value, _Lazy):
        into.append(value)
    elif isinstance(value, dict) and COLUMNS in value:
        for item in value[COLUMNS].values():
            _collect(item, into)


def _fill(value: Any, done: dict[int, Any]) -> Any:
    """The wire value, with each lazy part replaced by its result; a failed column fails the whole output."""
    if isinstance(value, _Lazy):
        return done[id(value)]
    if isinstance(value, dict) and COLUMNS in value:
        columns = {name: _fill(item, done) for name, item in value[COLUMNS].items()}
        failed = next((c for c in columns.values() if isinstance(c, Failure)), None)
        return failed if failed is not None else {COLUMNS: columns}
    if isinstance(value, _COLLECTIONS):
        return Failure(TaskFailed("an output must be an aggregate, not rows"))
    return value
