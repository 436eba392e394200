"""Tables of Dask fragments (issue 18, ``docs/design/tables.md`` section 4): merge, concat, sort_values and named
aggregation over the ``dask.dataframe`` frames of one server, lazily, finished by the request's one ``dask.compute``.

Row order decides ``first`` and ``last``, so every frame here carries its pandas row order in its index, a key
that sorts as pandas orders the rows: a fragment's rows are ``partition << 40 | position``; a merge's are
``(left key, right key)`` (pandas' merge order: left rows in order, each one's matches in right order; ``-1``
where a left row has none); a concat's ``(table, key)``; a sort's ``(sort values..., key)``, missing values last
and descending columns reversed, which is pandas' stable ``sort_values``. Nothing is sorted when it is built:

- ``Merge``: ``dd.merge`` (a hash join: missing keys meet in one partition, where pandas matches them as it
  does everywhere), the sides' keys carried as columns and made the index of each result partition.
- ``Concat``: ``dd.concat`` of the tables, keys tagged by position.
- ``GroupAgg``: the rows shuffled by the group keys, so that each group sits in one partition; there they are
  put in order (their keys) and the pandas engine's own ``visit_groupagg`` runs (dask's named aggregation
  refuses ``nunique``). ``first``/``last`` therefore follow the sort exactly.
- ``Filter``, ``Project``, elementwise operations and maps: the Dask fragment's own (``fedmed.fragments.dask``),
  partition by partition; they keep the row keys.

The row keys of a merge, concat or sort are Python tuples (an object index): exact, but slower than numbers on
very large frames. Shuffles use dask's ``tasks`` method, which carries them as they are.

Exact configs only: the server refuses these tasks under privacy policies before they get here, and a Dask
fragment reports no disclosure anyway.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

import dask.dataframe as dd

from ..config import Config
from ..errors import OperationError, ServerError, TaskFailed
from ..expr.node import Node
from ..expr.rowwise import Fragment as FragmentNode
from ..expr.tables import Concat, GroupAgg, Merge, Project, Sort
from ..server.evaluate import Evaluated, Failure, fold_table, visit_concat, visit_groupagg, visit_merge, visit_project
from .dask import _COLLECTIONS, _compute_all, _visit

#: Rows of one partition at most (a partition's position takes the low 40 bits of a fragment's row key).
_POSITION_BITS = 40
#: Hidden columns carrying the sides' row keys through a merge.
_LEFT, _RIGHT = "__fedmed_left_row", "__fedmed_right_row"
_SHUFFLE = "tasks"


def evaluate_tables(fragments: Mapping[str, Any], nodes: Sequence[Node], outputs: Sequence[int],
                    config: Config) -> list[Evaluated]:
    """The outputs of a task over several Dask fragments of this server, built lazily, one ``dask.compute``."""
    frames = {name: _numbered(f.data) for name, f in fragments.items()}
    values = fold_table(nodes, outputs, lambda node, args: _visit_table(node, args, frames, config))
    return [Evaluated(value, None) for value in _compute_all([values[o] for o in outputs])]


def _visit_table(node: Node, args: list[Any], frames: Mapping[str, Any], config: Config) -> Any:
    try:
        if isinstance(node, FragmentNode):
            if node.name not in frames:
                raise TaskFailed(f"no fragment {node.name!r} among this task's tables")
            return frames[node.name]
        if isinstance(node, Merge):
            return _merge(node, args, config)
        if isinstance(node, Concat):
            return _concat(node, args, config)
        if isinstance(node, Sort):
            return _sort(node, args)
        if isinstance(node, GroupAgg):
            return _groupagg(node, args, config)
        if isinstance(node, Project):
            return _project(node, args, config)
        return _visit(node, args, None, config)  # columns, filters, elementwise operations and maps
    except ServerError as exc:
        return Failure(exc)
    except OperationError as exc:
        return Failure(TaskFailed(f"{node.kind} failed: {exc}"[:300]))
    except Exception as exc:  # pandas and dask may quote data: only the kind of error leaves
        return Failure(TaskFailed(f"{node.kind} failed: {type(exc).__name__}"))


# -- row keys ---------------------------------------------------------------------------------------------------


def _numbered(data: Any) -> Any:
    """The fragment with each row's key ``partition << 40 | position`` as its index (pandas' row order)."""
    meta = _number(data._meta, {"number": 0})
    return data.map_partitions(_number, meta=meta, clear_divisions=True, token="fedmed-rows")


def _number(part: Any, partition_info: dict | None = None) -> Any:
    number = (partition_info or {}).get("number", 0)
    out = part.copy(deep=False)
    out.index = pd.Index((np.int64(number) << _POSITION_BITS) + np.arange(len(part), dtype=np.int64))
    return out


def _keys(index: pd.Index) -> list[Any]:
    return index.tolist()


def _object_index(values: list[Any]) -> pd.Index:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pd.Index(array, dtype=object, tupleize_cols=False)


def _in_order(part: pd.DataFrame) -> pd.DataFrame:
    """The partition's rows in pandas' order: sorted by their keys."""
    if part.index.dtype != object:
        return part.iloc[np.argsort(part.index.to_numpy(), kind="stable")]
    keys = part.index.tolist()
    return part.iloc[sorted(range(len(keys)), key=keys.__getitem__)]


def _frame(value: Any, what: str) -> Any:
    if not isinstance(value, dd.DataFrame):
        raise TaskFailed(f"{what} needs a table, not a single column or nested data")
    return value


# -- relations ----------------------------------------------------------------------------------------------------


def _merge(node: Merge, args: list[Any], config: Config) -> Any:
    left, right = (_frame(a, "merge") for a in args)
    # the schema's checks and pandas' columns, on the empty samples: a wrong column fails by its name
    visit_merge(node, [left._meta, right._meta], None, config)
    left = left.map_partitions(_carry, _LEFT, meta=_carry(left._meta, _LEFT))
    right = right.map_partitions(_carry, _RIGHT, meta=_carry(right._meta, _RIGHT))
    merged = left.merge(right, how=node.how, left_on=list(node.left_on), right_on=list(node.right_on),
                        suffixes=node.suffixes, shuffle_method=_SHUFFLE)
    return merged.map_partitions(_merged_keys, meta=_merged_keys(merged._meta), clear_divisions=True,
                                 token="fedmed-merge-rows")


def _carry(part: pd.DataFrame, name: str) -> pd.DataFrame:
    out = part.copy(deep=False)
    out[name] = _object_index(_keys(part.index)).to_numpy()
    return out


def _merged_keys(part: pd.DataFrame) -> pd.DataFrame:
    left, right = part.pop(_LEFT).tolist(), part.pop(_RIGHT).tolist()
    right = [-1 if r is None or (isinstance(r, float) and r != r) else r for r in right]  # a left row without match
    part.index = _object_index(list(zip(left, right)))
    return part


def _concat(node: Concat, args: list[Any], config: Config) -> Any:
    tables = [_frame(a, "concat") for a in args]
    visit_concat(node, [t._meta for t in tables], None, config)
    tagged = [t.map_partitions(_tag, i, meta=_tag(t._meta, i), clear_divisions=True) for i, t in enumerate(tables)]
    both = dd.concat(tagged, interleave_partitions=False)
    return both.map_partitions(_same, meta=both._meta, token="fedmed-concat-rows")


def _tag(part: pd.DataFrame, i: int) -> pd.DataFrame:
    out = part.copy(deep=False)
    out.index = _object_index([(i, k) for k in _keys(part.index)])
    return out


class _Reversed:
    """A value that sorts in reverse (a descending sort column of any type)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: "_Reversed") -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)


def _sort(node: Sort, args: list[Any]) -> Any:
    table = _frame(args[0], "sort_values")
    missing = [b for b in node.by if b not in table.columns]
    if missing:
        raise TaskFailed(f"sort_values: no column {missing[0]!r}")
    sort = functools.partial(_sort_keys, node.by, node.ascending)
    return table.map_partitions(sort, meta=sort(table._meta), clear_divisions=True, token="fedmed-sort")


def _sort_keys(by: tuple[str, ...], ascending: tuple[bool, ...], part: pd.DataFrame) -> pd.DataFrame:
    """Each row's key: its sort values (missing last, descending reversed), then its old key (a stable sort)."""
    columns = []
    for name, up in zip(by, ascending):
        column = part[name]
        missing = column.isna().tolist()
        values = column.tolist()
        if not up:
            negate = pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype)
            values = [-v if negate else _Reversed(v) for v in values]
        columns.append([(True, 0) if m else (False, v) for m, v in zip(missing, values)])
    keys = _keys(part.index)
    out = part.copy(deep=False)
    out.index = _object_index([(*row, k) for *row, k in zip(*columns, keys)] if columns else keys)
    return out


def _groupagg(node: GroupAgg, args: list[Any], config: Config) -> Any:
    table = _frame(args[0], "a named aggregation")
    agg = functools.partial(_group_partition, node, config)
    meta = agg(table._meta)
    # behind a partition-wise step of its own (as a concat's result): dask's optimizer pushing each output's
    # column selections through a shuffle into a concat did not finish (dask 2026.8)
    table = table.map_partitions(_same, meta=table._meta, token="fedmed-rows-kept")
    shuffled = table.shuffle(on=list(node.keys), shuffle_method=_SHUFFLE)
    return shuffled.map_partitions(agg, meta=meta, clear_divisions=True, token="fedmed-groupagg")


def _same(part: pd.DataFrame) -> pd.DataFrame:
    return part


def _group_partition(node: GroupAgg, config: Config, part: pd.DataFrame) -> pd.DataFrame:
    """The pandas engine's named aggregation over the groups of one partition, rows in pandas' order."""
    out = visit_groupagg(node, [_in_order(part)], None, config)
    # a new row space, in pandas' order: by the group keys (sorted, missing keys dropped)
    out.index = _object_index(list(zip(*(out[k].tolist() for k in node.keys))))
    return out


def _project(node: Project, args: list[Any], config: Config) -> Any:
    rows, values = args[0], args[1:]
    if not isinstance(rows, _COLLECTIONS):
        raise TaskFailed("a table's columns need rows: select them from a table")
    lazy = [i for i, v in enumerate(values) if isinstance(v, _COLLECTIONS)]
    constants = tuple(None if i in lazy else v for i, v in enumerate(values))
    project = functools.partial(_project_partition, node, config, tuple(lazy), constants)
    meta = project(rows._meta, *(values[i]._meta for i in lazy))
    return dd.map_partitions(project, rows, *(values[i] for i in lazy), meta=meta, token="fedmed-project")


def _project_partition(node: Project, config: Config, lazy: tuple[int, ...], constants: tuple[Any, ...],
                       rows: Any, *columns: Any) -> Any:
    values = list(constants)
    for i, column in zip(lazy, columns):
        values[i] = column
    return visit_project(node, [rows, *values], None, config)
