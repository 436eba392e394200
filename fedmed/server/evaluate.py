"""The pandas evaluator: runs a node table over one in-memory fragment.

Each node is computed once, in table order, by the visitor for its kind;
shared subexpressions are therefore computed once on the server too. A node
that fails turns into a ``Failure`` that propagates to the outputs above it,
so one bad task does not spoil the others in the same request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import OperationError, ServerError, TaskFailed
from ..expr.node import Node
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map
from .disclosure import Disclosure
from ..ops.columns import map_columns


@dataclass(frozen=True)
class Failure:
    """A task that could not be computed, and why."""

    error: ServerError


@dataclass(frozen=True)
class Evaluated:
    """What a fragment returns per output: the map's value (or a Failure), and the rows behind it."""

    value: Any
    disclosure: Disclosure | None = None


def evaluate_pandas(nodes: Sequence[Node], outputs: Sequence[int], data: Any, config: Config) -> list[Evaluated]:
    """Evaluate the map nodes at ``outputs`` over ``data`` (pandas objects)."""
    values = fold_table(nodes, outputs, lambda node, args: _visit(node, args, data, config))
    by_node = {id(nodes[i]): value for i, value in values.items()}
    index = row_index(data)
    return [
        Evaluated(values[o], Disclosure(nodes[o], by_node, index) if index is not None else None)  # type: ignore[arg-type]
        for o in outputs
    ]


def row_index(data: Any) -> pd.Index | None:
    """The fragment's row labels (of its first table, for a nested dict)."""
    if isinstance(data, (pd.DataFrame, pd.Series)):
        return data.index
    if isinstance(data, dict):
        return next((i for i in map(row_index, data.values()) if i is not None), None)
    return None


def fold_table(
    nodes: Sequence[Node], outputs: Sequence[int], visit: Callable[[Node, list[Any]], Any]
) -> dict[int, Any]:
    """``visit`` each node the outputs need, in table order, children's values first.

    A ``Failure`` in a child becomes the parent's value without a visit, so
    one failing task spoils only the outputs above it. Every engine (pandas,
    Dask) folds a table this way; only ``visit`` differs.
    """
    position = {id(node): i for i, node in enumerate(nodes)}
    values: dict[int, Any] = {}
    for i in sorted(needed_nodes(nodes, outputs, position)):
        args = [values[position[id(child)]] for child in nodes[i].children]
        failed = next((a for a in args if isinstance(a, Failure)), None)
        values[i] = failed if failed is not None else visit(nodes[i], args)
    return values


def needed_nodes(nodes: Sequence[Node], outputs: Sequence[int], position: dict[int, int]) -> set[int]:
    """Indices of the nodes below ``outputs`` (``position`` maps id(node) to its index)."""
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        i = stack.pop()
        if i not in needed:
            needed.add(i)
            stack.extend(position[id(c)] for c in nodes[i].children)
    return needed


def _visit(node: Node, args: list[Any], data: Any, config: Config) -> Any:
    try:
        return VISITORS[type(node)](node, args, data, config)
    except ServerError as exc:
        return Failure(exc)
    except OperationError as exc:  # raised by FedMed's operations: its text holds no data
        return Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} failed: {exc}"[:300]))
    except Exception as exc:
        # pandas and numpy quote data in their messages ("could not convert string to float: 'f'"):
        # only the kind of error leaves the server
        return Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} failed: {type(exc).__name__}"))


def visit_fragment(node: Fragment, args: list[Any], data: Any, config: Config) -> Any:
    return data


def visit_column(node: Column, args: list[Any], data: Any, config: Config) -> Any:
    (table,) = args
    if isinstance(table, (pd.DataFrame, dict)) and node.name in table:
        return table[node.name]
    if isinstance(table, (pd.DataFrame, dict)):
        raise TaskFailed(f"no column {node.name!r}")
    raise TaskFailed(f"cannot select column {node.name!r}: the value has no columns")


def visit_literal(node: Literal, args: list[Any], data: Any, config: Config) -> Any:
    return node.value


#: Operations whose cost grows with the size of a value rather than the number of rows.
_REPEATING = {"mul", "pow", "mod", "floordiv", "add"}


# The server checked every operation name against its config before evaluating.
def visit_elementwise(node: Elementwise, args: list[Any], data: Any, config: Config) -> Any:
    return config.elementwise[node.op](*_bounded(node.op, args))


def _bounded(op: str, args: list[Any]) -> list[Any]:
    """Arguments that cannot make one operation hang or exhaust memory.

    Constants combined only with constants follow numpy, not Python: a
    request's ``10 ** 10**18`` overflows at once instead of computing an
    integer with a quintillion digits. Text cannot be repeated, formatted or
    concatenated (``"x" * 10**9`` per row, or ``x + x`` doubling at every
    level); lists of constants combine elementwise as arrays, never by
    concatenation.
    """
    if op in _REPEATING and any(_is_text(a) for a in args):
        raise TaskFailed(f"{op} is not defined for text values")
    if not any(isinstance(a, (pd.Series, pd.DataFrame)) for a in args):
        return [np.asarray(a) if isinstance(a, (int, float, list)) and not isinstance(a, bool) else a for a in args]
    return args


def _is_text(value: Any) -> bool:
    """A text constant, or a column (pandas' or Dask's) of text."""
    if isinstance(value, str):
        return True
    if getattr(value, "ndim", None) == 1 and hasattr(value, "dtype"):
        return value.dtype == object or str(value.dtype).startswith(("string", "str"))
    return False


def visit_filter(node: Filter, args: list[Any], data: Any, config: Config) -> Any:
    table, mask = args
    if not isinstance(mask, pd.Series) or not isinstance(table, (pd.DataFrame, pd.Series)):
        raise TaskFailed("a row filter needs a boolean column of the same fragment")
    if mask.dtype != bool:
        # pandas' nullable booleans: a missing comparison keeps no row, as in SQL
        mask = mask.fillna(False).astype(bool)
    return table[mask]


def visit_map(node: Map, args: list[Any], data: Any, config: Config) -> Any:
    return map_columns(config.aggregates[node.op].map, *args)


VISITORS: dict[type, Callable[[Any, list[Any], Any, Config], Any]] = {
    Fragment: visit_fragment,
    Column: visit_column,
    Literal: visit_literal,
    Elementwise: visit_elementwise,
    Filter: visit_filter,
    Map: visit_map,
}
