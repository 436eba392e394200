"""The pandas evaluator: runs a node table over one in-memory fragment.

Each node is computed once, in table order, by the visitor for its kind;
shared subexpressions are therefore computed once on the server too. A node
that fails turns into a ``Failure`` that propagates to the outputs above it,
so one bad task does not spoil the others in the same request.

Only the request may make a node fail, never the rows: a failure reaches
the client before any privacy policy, so one that depends on the values
would answer a yes/no question about them exactly. Elementwise operations,
row filters and maps are therefore total (``apply_elementwise``,
``select_rows``, ``apply_map``): what they cannot compute for some rows is
missing there. The Dask engine runs the same three on each partition.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import OperationError, PrivacyError, ServerError, ServerMisconfigured, TaskFailed
from ..expr.node import Node, walk
from ..expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map
from ..expr.tables import Concat, GroupAgg, Merge, Project, Sort
from .disclosure import Disclosure
from .lineage import Lineage, concat_rows, group_rows, merge_rows
from .memory import schedule
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


def evaluate_pandas(
    nodes: Sequence[Node], outputs: Sequence[int], data: Any, config: Config, person: str | None = None,
    person_of: Mapping[str, str | None] | None = None,
) -> Iterator[Evaluated]:
    """Evaluate the map nodes at ``outputs`` over ``data`` (pandas objects), one output at a time.

    ``person`` is the column identifying a person (the server config's
    ``persons``): each ``Disclosure`` gets it, so that privacy rules count
    persons, not rows. A fragment without that column answers no task:
    counting its rows instead would quietly weaken every rule.

    Outputs are computed in order (``memory.schedule``). Under privacy
    policies a task's intermediates stay until its result has been judged
    (the disclosure reads them), and each value is freed, when the next
    output is asked for, once no later output needs it: peak memory follows
    the largest task, and each ``Evaluated``'s disclosure holds until the
    next one is taken. Without policies nothing is judged (no disclosure is
    made) and a value is freed as soon as its last reader is computed:
    peak memory follows the widest level of the table.

    Over several tables (``Tables``), ``person_of`` names each fragment's
    person column and each task's disclosure follows persons through its
    relations (``fedmed.server.lineage``); a task whose rows do not each
    belong to one person is refused with why.
    """
    persons = None
    if person is not None:
        persons = data.get(person) if isinstance(data, pd.DataFrame) else None
        if not isinstance(persons, pd.Series):
            missing = ServerMisconfigured(
                f"this fragment has no column {person!r}, which the server's config ('persons') names as its "
                "person key: every task on it is refused until the server's owner fixes that"
            )
            yield from (Evaluated(Failure(missing)) for _ in outputs)
            return
    visit = lambda node, args: _visit(node, args, data, config)  # noqa: E731
    by_node: dict[int, Any] = {}  # id(node) -> value, for the disclosure and its reruns
    index = row_index(data)
    rerun = _rerun(by_node, visit)
    judged = bool(config.privacy)
    for o, step in zip(outputs, schedule(nodes, outputs, judged)):
        for i in step.new:
            args = [by_node[id(child)] for child in nodes[i].children]
            failed = next((a for a in args if isinstance(a, Failure)), None)
            by_node[id(nodes[i])] = failed if failed is not None else visit(nodes[i], args)
            for c in step.drops.get(i, ()):
                by_node.pop(id(nodes[c]), None)
        value = by_node[id(nodes[o])]
        release = getattr(config.aggregates[nodes[o].op].map, "release", None) if nodes[o].op in config.aggregates else None
        if judged and isinstance(data, Tables) and not isinstance(value, Failure):
            lineage = Lineage(nodes[o], by_node, person_of or {})
            if lineage.why is not None:
                yield Evaluated(Failure(PrivacyError(lineage.why)))
            else:
                yield Evaluated(value, Disclosure(nodes[o], by_node, lineage.index(lineage.source),
                                                  persons=lineage.persons(lineage.source), rerun=rerun,
                                                  release=release, lineage=lineage))
        else:
            yield Evaluated(value, Disclosure(nodes[o], by_node, index, persons=persons, rerun=rerun,  # type: ignore[arg-type]
                                              release=release) if index is not None and judged else None)
        for i in step.freed:
            by_node.pop(id(nodes[i]), None)


def _rerun(values: dict[int, Any], visit: Callable[[Node, list[Any]], Any]) -> Callable[[Node, dict[int, Any]], Any]:
    """How the disclosure asks "what if": the map's arguments recomputed with some node values replaced.

    Only the nodes above a replaced one are visited again; a failure gives None. ``also``: nodes below
    the map whose recomputed values are wanted too, after its arguments.
    """
    def rerun(root: Node, overrides: dict[int, Any], also: Sequence[Node] = ()) -> list[Any] | None:
        known, changed = {**values, **overrides}, set(overrides)
        for node in walk(root.children):
            if id(node) in changed or not any(id(c) in changed for c in node.children):
                continue
            value = visit(node, [known[id(c)] for c in node.children])
            if isinstance(value, Failure):
                return None
            known[id(node)] = value
            changed.add(id(node))
        return [known[id(c)] for c in [*root.children, *also]]

    return rerun


def rows_of(data: Any) -> int:
    """The fragment's rows (of its largest table, for a nested dict)."""
    if isinstance(data, (pd.DataFrame, pd.Series)):
        return len(data)
    if isinstance(data, dict):
        return max(map(rows_of, data.values()), default=0)
    return 0


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


def needed_nodes(nodes: Sequence[Node], outputs: Sequence[int], position: dict[int, int],
                 stop: Node | None = None) -> set[int]:
    """Indices of the nodes below ``outputs`` (``position`` maps id(node) to its index), not below ``stop``."""
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        i = stack.pop()
        if i not in needed:
            needed.add(i)
            if nodes[i] is not stop:
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


class Tables(dict):
    """The fragments one request reads on this server, by name: the ``data`` of a task over tables
    (a merge, a concat, a per-person group-by), where each ``fragment`` node reads its own."""


def visit_fragment(node: Fragment, args: list[Any], data: Any, config: Config) -> Any:
    return data[node.name] if isinstance(data, Tables) else data


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
#: Longest text constant ``fillna`` puts on the rows (each row's copy is hashed and compared on its
#: own; the SQL engine holds the same bound).
MAX_FILL_TEXT = 1_000


# The server checked every operation name against its config before evaluating.
def visit_elementwise(node: Elementwise, args: list[Any], data: Any, config: Config) -> Any:
    refuse_text(node.op, args, count=not config.privacy, empty=rows_of(data) == 0)
    return apply_elementwise(node.op, config.elementwise[node.op], _bounded(node.op, args, rows_of(data)))


def apply_elementwise(op: str, fn: Callable[..., Any], args: list[Any]) -> Any:
    """``fn(*args)``, with every row ``fn`` cannot compute missing instead of a failed task.

    Whether a task fails reaches the client before any privacy policy sees
    a value, so it must not depend on the rows: ``astype("int")`` of a
    column that holds infinity in one person's row, or ``x ** (id - 17)``
    on integers, would otherwise answer "does that row exist" exactly.
    The operation runs as it is; only when it raises (and then at no cost
    to the other operations) ``total`` finds the rows it cannot compute and
    makes them missing. What still fails depends on the request alone: an
    ``OperationError`` (an unknown type name for ``astype``), a wrong
    number of operands, or a failure of constants combined with constants.
    """
    try:
        return _positive_zero(fn(*args))
    except (ServerError, OperationError):
        raise
    except Exception:
        if not any(isinstance(a, (pd.Series, pd.DataFrame)) for a in args):
            raise  # constants only: the request alone decides
        _check_operands(op, fn, args)
        return _positive_zero(total(fn, args))


def _positive_zero(value: Any) -> Any:
    """Float results without -0.0: it equals 0.0 to every comparison and count, yet ``1 / -0.0`` is
    ``-inf``, a sign that one row could carry past every rule that looks at values."""
    if isinstance(value, pd.Series) and value.dtype.kind == "f":
        return value + 0.0  # IEEE: -0.0 + 0.0 is +0.0; every other value is unchanged
    if isinstance(value, pd.DataFrame):
        floats = [c for c, kind in zip(value.columns, value.dtypes) if getattr(kind, "kind", "") == "f"]
        if floats:
            value = value.copy()
            value[floats] = value[floats] + 0.0
    return value


#: Most calls of an operation ``total`` spends finding the rows it cannot compute; rows still
#: undecided then are all missing (the cost of a failure stays bounded, its outcome stays success).
MAX_CALLS = 4096


def total(fn: Callable[..., Any], args: list[Any]) -> Any:
    """``fn(*args)`` over rows (Series or DataFrames among ``args``), missing where it raises.

    Rows are found by halving: a block of rows that raises is split in two
    and each half tried again, so ``k`` failing rows among ``n`` cost about
    ``2 k log2(n / k)`` calls (at most ``MAX_CALLS``). An operation that
    raises even on no rows is a type error: every row is missing. A table
    is done column by column, so that one text column does not blank the
    numbers. Missing rows take the nullable form of the type the operation
    gives on no rows (``Int64`` for ``int64``, ``boolean`` for ``bool``),
    so a failure changes values, never the kind of values.
    """
    frames = [a for a in args if isinstance(a, (pd.Series, pd.DataFrame))]
    tables = [a for a in frames if isinstance(a, pd.DataFrame)]
    if tables and len(tables) == len(frames) and all(list(t.columns) == list(tables[0].columns) for t in tables):
        return pd.DataFrame(
            {c: total(fn, [a.iloc[:, i] if isinstance(a, pd.DataFrame) else a for a in args])
             for i, c in enumerate(tables[0].columns)},
            index=tables[0].index,
        ) if tables[0].columns.is_unique else pd.DataFrame(np.nan, index=tables[0].index, columns=tables[0].columns)
    index = frames[0].index
    if any(not f.index.equals(index) for f in frames[1:]):
        if not all(f.index.is_unique for f in frames):
            return _all_missing(index)
        for f in frames[1:]:
            index = index.union(f.index, sort=False)
        args = [a.reindex(index) if isinstance(a, (pd.Series, pd.DataFrame)) else a for a in args]

    def part(a: Any, lo: int, hi: int) -> Any:  # a list as long as the rows is one value per row
        if isinstance(a, (pd.Series, pd.DataFrame)):
            return a.iloc[lo:hi]
        return a[lo:hi] if isinstance(a, list) and len(a) == len(index) else a

    def call(lo: int, hi: int) -> Any:
        value = fn(*[part(a, lo, hi) for a in args])
        if not isinstance(value, (pd.Series, pd.DataFrame)) or len(value) != hi - lo:
            raise TypeError("an elementwise operation must give one value per row")
        return value

    try:
        empty = call(0, 0)
    except Exception:
        # it fails on no rows at all: the kinds of values (the schema), not the rows, are the cause;
        # all-missing would make a sum of it a confident 0
        raise TaskFailed("the operation is not defined for these kinds of values (for example text where "
                         "numbers are needed); convert them first, e.g. with .to_numeric()") from None
    pieces: list[tuple[int, int, Any]] = []
    todo, calls = [(0, len(index))], 0
    while todo:
        lo, hi = todo.pop()
        value = None
        if calls < MAX_CALLS:
            calls += 1
            try:
                value = call(lo, hi)
            except Exception:
                if hi - lo > 1:
                    mid = (lo + hi) // 2
                    todo += [(mid, hi), (lo, mid)]
                    continue
        pieces.append((lo, hi, value))
    pieces.sort(key=lambda p: p[0])
    return pd.concat([value if value is not None else _missing(empty, index[lo:hi]) for lo, hi, value in pieces])


def _missing(empty: Any, index: pd.Index) -> Any:
    """Missing values over ``index`` of the nullable form of ``empty``'s type(s)."""
    if isinstance(empty, pd.DataFrame):
        return pd.DataFrame({c: _missing(empty.iloc[:, i], index) for i, c in enumerate(empty.columns)}, index=index)
    dtype = empty.dtype
    if dtype.kind in "iu":
        dtype = "Int64"
    elif dtype.kind == "b":
        dtype = "boolean"
    return pd.Series(None, index=index, dtype=dtype, name=empty.name)


def _all_missing(index: pd.Index) -> pd.Series:
    """Every row missing (floats): the operation could not compute any."""
    return pd.Series(np.nan, index=index, dtype="float64")


def _check_operands(op: str, fn: Callable[..., Any], args: list[Any]) -> None:
    """Raise ``TaskFailed`` when ``fn`` cannot take ``len(args)`` operands (the request's fault, not the rows')."""
    if isinstance(fn, np.ufunc):
        fits = fn.nin <= len(args) <= fn.nargs
    else:
        try:
            inspect.signature(fn).bind(*args)
            fits = True
        except TypeError:
            fits = False
        except ValueError:  # no signature to check (some builtins)
            fits = True
    if not fits:
        raise TaskFailed(f"elementwise {op} does not take {len(args)} operand(s)")


def _bounded(op: str, args: list[Any], rows: int | None = None) -> list[Any]:
    """Arguments that cannot make one operation hang or exhaust memory.

    Constants combined only with constants follow numpy, not Python: a
    request's ``10 ** 10**18`` overflows at once instead of computing an
    integer with a quintillion digits, and they never broadcast to more
    values than the fragment has rows or the largest constant has entries
    (nested lists added to their transposes would ask for gigabytes).
    Text cannot be repeated, formatted or concatenated (``"x" * 10**9``
    per row, or ``x + x`` doubling at every level), whether it is a column
    or a column of a whole table; lists of constants combine elementwise
    as arrays, never by concatenation.
    """
    if op in _REPEATING:
        text = next((t for t in map(_text_in, args) if t is not None), None)
        if text is not None:
            raise TaskFailed(f"{op} is not defined for text values{text}")
    if op == "fillna" and any(isinstance(a, str) and len(a) > MAX_FILL_TEXT for a in args):
        raise TaskFailed(f"fillna: this fragment fills with text of at most {MAX_FILL_TEXT:,} characters")
    if not any(isinstance(a, (pd.Series, pd.DataFrame)) for a in args):
        arrays = [np.asarray(a) if isinstance(a, (int, float, list)) and not isinstance(a, bool) else a for a in args]
        _check_broadcast(op, arrays, rows)
        return arrays
    return args


def _is_text(value: Any) -> bool:
    """A text constant, or a column (pandas' or Dask's) of text."""
    if isinstance(value, str):
        return True
    if getattr(value, "ndim", None) == 1 and hasattr(value, "dtype"):
        return value.dtype == object or str(value.dtype).startswith(("string", "str"))
    return False


def _text_in(value: Any) -> str | None:
    """Where ``value`` holds text: ``""`` for a text constant or column, ``" (column 'c')"`` for a
    table's text column, None when it holds none."""
    if _is_text(value):
        return ""
    if isinstance(value, pd.DataFrame):
        for name, column in value.items():
            if _is_text(column):
                return f" (column {str(name)[:40]!r})"
    return None


# -- text where numbers are needed ------------------------------------------------
# A CSV column with a few values such as "unknown" or ">89" loads as text. Operations that need numbers
# refuse it by its type, never by its values (a refusal reaches the client before any privacy policy):
# the message names the column and the conversion, ``.to_numeric()``. How many values are not numbers is
# said only by a server without privacy policies; under policies the message is the same whatever the
# values, and says how to count them with an aggregate the policies judge.

#: Elementwise operations that read their operands as numbers (by name, as ``_REPEATING``).
NEEDS_NUMBERS = frozenset({"add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "abs", "log", "exp",
                           "sqrt", "round", "clip"})
#: Comparisons that order their operands: text has no order against a number.
ORDERING = frozenset({"lt", "le", "gt", "ge"})


def refuse_text(op: str, args: Sequence[Any], *, numbers: bool = False, count: bool = False,
                empty: bool = False) -> None:
    """Raise ``TaskFailed`` (``text_message``) when ``op`` would read a text column as numbers.

    ``numbers`` says that the operation needs numbers in every column (a
    map marked ``needs_numbers``); elementwise operations are known by name
    (``NEEDS_NUMBERS``; ``ORDERING`` only against a number). ``args`` are
    pandas objects, or Dask's empty ``_meta`` ones: only their types decide.
    ``count`` adds how many values are not numbers: only for a server
    without privacy policies. ``empty``: the fragment has no rows at all.
    """
    columns = [c for a in args for c in _columns_of(a)]
    dated = next((c for c in columns if _is_date(c)), None) if numbers else None
    if dated is not None:  # read as numbers, a date is microseconds: a mean of dates would be a number of them
        name = str(dated.name)[:40] if dated.name is not None else "x"
        raise TaskFailed(f"{op} needs numbers, but column {name!r} holds dates ({dated.dtype}): use "
                         f"data[{name!r}].dt.year or .dt.month, or a difference of two dates in days "
                         "((a - b).dt.days); min, max and count take dates as they are")
    # Decided by the type alone, never by how many rows a filter left (that would tell whether a
    # selection is empty: an oracle). Only an empty fragment is let through: pandas makes [] an object
    # column, and its row count is the fragment's, not the request's.
    text = None if empty else next((c for c in columns if _is_text(c)), None)
    if text is None:
        return
    against_number = any(_is_number(a) for a in args) or any(_is_number(c) for c in columns)
    if numbers or op in NEEDS_NUMBERS or (op in ORDERING and against_number):
        raise TaskFailed(text_message(op, text.name, str(text.dtype), _not_numbers(text) if count else None))


def _is_date(column: Any) -> bool:
    return pd.api.types.is_datetime64_any_dtype(column.dtype) or pd.api.types.is_timedelta64_dtype(column.dtype)


def text_message(op: str, name: Any, dtype: str, counts: tuple[int, int] | None = None) -> str:
    """Why ``op`` refuses the text column ``name`` and what to do; ``counts`` (not numbers, present) only
    without privacy policies. Every engine words it this way: up to the first ``"; "`` the message is
    the same on every engine (``dtype`` only tells Python objects from text).

    Examples
    --------
    >>> print(text_message("moments", "bmi", "str"))  # doctest: +NORMALIZE_WHITESPACE
    moments needs numbers, but column 'bmi' holds text values: convert it with data['bmi'].to_numeric(),
    which reads each value as a number and makes text that is not one missing (as pd.to_numeric(errors='coerce'));
    to count the values that are not numbers, compute (x.notna() & x.to_numeric().isna()).sum()
    with x = data['bmi']
    >>> print(text_message("moments", "bmi", "str", (2, 31)))  # doctest: +NORMALIZE_WHITESPACE
    moments needs numbers, but column 'bmi' holds text values: convert it with data['bmi'].to_numeric(),
    which reads each value as a number and makes text that is not one missing (as pd.to_numeric(errors='coerce'));
    2 of the 31 values present here are not numbers
    """
    label = str(name)[:40] if name is not None else None
    column = f"column {label!r}" if label is not None else "a column"
    expression = f"data[{label!r}]" if label is not None else "the column"
    kind = "text values" if dtype != "object" else "Python objects (text, or values of mixed types)"
    tail = (f"{counts[0]} of the {counts[1]} values present here are not numbers" if counts is not None else
            "to count the values that are not numbers, compute (x.notna() & x.to_numeric().isna()).sum() "
            f"with x = {expression}")
    return (f"{op} needs numbers, but {column} holds {kind}: convert it with {expression}.to_numeric(), which "
            "reads each value as a number and makes text that is not one missing "
            f"(as pd.to_numeric(errors='coerce')); {tail}")


def _columns_of(value: Any) -> list[Any]:
    """The columns among an operation's arguments (a table's columns, each one)."""
    if isinstance(value, pd.DataFrame):
        return [value.iloc[:, i] for i in range(value.shape[1])]
    return [value] if getattr(value, "ndim", None) == 1 and hasattr(value, "dtype") else []


def _is_number(value: Any) -> bool:
    """A number constant, or a column of numbers (booleans included)."""
    if getattr(value, "ndim", None) == 1 and hasattr(value, "dtype"):
        return pd.api.types.is_numeric_dtype(value.dtype) or pd.api.types.is_bool_dtype(value.dtype)
    return isinstance(value, (int, float, np.number)) and not isinstance(value, str)


def _not_numbers(x: Any) -> tuple[int, int] | None:
    """(values present that are not numbers, values present) of a pandas column; None for a lazy one."""
    if not isinstance(x, pd.Series):
        return None
    from ..ops.binary import to_numeric

    present = x.notna()
    return int((present & to_numeric(x).isna()).sum()), int(present.sum())


def _check_broadcast(op: str, arrays: list[Any], rows: int | None) -> None:
    """Refuse constants that would broadcast beyond the fragment's rows and their own sizes."""
    shapes = [np.shape(a) for a in arrays]
    try:
        entries = math.prod(np.broadcast_shapes(*shapes))
    except ValueError:
        return  # numpy refuses them itself, at no cost
    bound = max([rows or 0, *(math.prod(s) for s in shapes)])
    if entries > bound:
        raise TaskFailed(f"{op} of these constants would make {entries} values, more than the fragment's "
                         f"{rows or 0} rows or any constant's entries: constants never broadcast beyond them")


def visit_filter(node: Filter, args: list[Any], data: Any, config: Config) -> Any:
    table, mask = args
    if not isinstance(mask, pd.Series) or not isinstance(table, (pd.DataFrame, pd.Series)):
        raise TaskFailed("a row filter needs a boolean column of the same fragment")
    return select_rows(table, mask)


def select_rows(table: Any, mask: pd.Series) -> Any:
    """The rows of ``table`` where ``mask`` is true: missing, false or absent from the mask keeps none."""
    if not mask.index.equals(table.index):
        # rows the mask lacks are not kept (pandas would refuse the mask, but only when some row is
        # lacking, which depends on the rows an earlier filter kept)
        if not (mask.index.is_unique and table.index.is_unique):
            return table.iloc[:0]
        mask = mask.reindex(table.index)
    if mask.dtype != bool:
        # a missing value keeps no row, as in SQL; other values by their truth
        if pd.api.types.is_numeric_dtype(mask.dtype) and not pd.api.types.is_bool_dtype(mask.dtype):
            mask = (mask != 0) & mask.notna()  # numpy's truth of NaN is True
        mask = mask.fillna(False).astype(bool)
    return table[mask]


def visit_map(node: Map, args: list[Any], data: Any, config: Config) -> Any:
    fn = config.aggregates[node.op].map
    refuse_text(node.op, args, numbers=getattr(fn, "needs_numbers", False), count=not config.privacy,
                empty=rows_of(data) == 0)
    return apply_map(fn, args)


def apply_map(fn: Callable[..., Any], args: list[Any]) -> Any:
    """A map over each column (``map_columns``), reading the values it cannot read as missing.

    As for elementwise operations, whether a map fails must not depend on
    the rows. A map that raises on some values (statistics of a column of
    Python objects that holds text among numbers) is run again per column
    with those values missing: first with objects read as numbers where
    they are numbers (``pd.to_numeric``), then, if it still raises, with
    every value missing. What fails then fails on no rows at all: the
    request's fault (bad arguments), not the data's.
    """
    try:
        return map_columns(fn, *args)
    except (ServerError, OperationError):
        raise
    except Exception:
        return map_columns(lambda *a: _map_total(fn, list(a)), *args)


def _map_total(fn: Callable[..., Any], args: list[Any]) -> Any:
    """``fn(*args)``; failing that, with objects read as numbers; failing that, with every value missing."""
    attempts = (
        lambda a: a,
        lambda a: pd.to_numeric(a, errors="coerce") if a.dtype == object else a,
        lambda a: pd.Series(np.nan, index=a.index, name=a.name),
    )
    for i, attempt in enumerate(attempts):
        try:
            return fn(*[attempt(a) if isinstance(a, pd.Series) else a for a in args])
        except (ServerError, OperationError):
            raise
        except Exception:
            if i == len(attempts) - 1:
                raise


# -- relations: tables made inside one request (fedmed.expr.tables) ------------------------------------
# Each checks the columns it names before it runs, so that a missing column fails by the schema, with
# its name, whatever the rows hold.


def _frame_of(value: Any, what: str) -> pd.DataFrame:
    if not isinstance(value, pd.DataFrame):
        raise TaskFailed(f"{what} needs a table, not a single column or nested data")
    return value


def _has(table: pd.DataFrame, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise TaskFailed(f"{what}: no column {missing[0]!r}")


def visit_merge(node: Merge, args: list[Any], data: Any, config: Config) -> Any:
    left, right = (_frame_of(a, "merge") for a in args)
    _has(left, node.left_on, "merge (left table)")
    _has(right, node.right_on, "merge (right table)")
    for a, b in zip(node.left_on, node.right_on):
        if _key_kind(left[a]) != _key_kind(right[b]):  # by the dtypes alone: pandas' own check reads object values
            raise TaskFailed(f"merge cannot match {a} ({left[a].dtype}) with {b} ({right[b].dtype}): "
                             "convert the keys to one type first")
    try:
        if config.privacy:  # rows labelled by where they come from, which the privacy judge follows (lineage.py)
            return merge_rows(left, right, node.how, node.left_on, node.right_on, node.suffixes)
        out = pd.merge(left, right, how=node.how, left_on=list(node.left_on), right_on=list(node.right_on),
                       suffixes=node.suffixes, sort=False)
    except (ValueError, TypeError):  # named by the schema only: pandas' own message may quote values
        clash = (set(left.columns) & set(right.columns)) - {a for a, b in zip(node.left_on, node.right_on) if a == b}
        if clash and (node.suffixes[0] == node.suffixes[1] or any(
                c + node.suffixes[0] in right.columns or c + node.suffixes[1] in left.columns for c in clash)):
            raise TaskFailed(f"merge: the suffixes {list(node.suffixes)} give two columns one name "
                             f"(columns on both sides: {sorted(clash)[:5]}); choose other suffixes") from None
        kinds = [f"{a} ({left[a].dtype}) with {b} ({right[b].dtype})" for a, b in zip(node.left_on, node.right_on)]
        raise TaskFailed(f"merge cannot match {', '.join(kinds)}: convert the keys to one type first") from None
    return out.reset_index(drop=True)  # new rows: unique labels, which row filters follow


def _key_kind(column: pd.Series) -> str:
    """What a join key holds, by its dtype: numbers (and booleans) match numbers, dates dates, text text."""
    kind = column.dtype.kind
    return {"i": "number", "u": "number", "f": "number", "b": "number", "M": "date", "m": "duration"}.get(kind, "text")


def visit_concat(node: Concat, args: list[Any], data: Any, config: Config) -> Any:
    tables = [_frame_of(a, "concat") for a in args]
    first = list(tables[0].columns)
    for t in tables[1:]:
        if list(t.columns) != first:
            raise TaskFailed(f"concat needs tables with the same columns in the same order: {first[:10]} and "
                             f"{list(t.columns)[:10]}")
        for c in first:  # by the dtypes: numbers stacked on text would make sorts and group-bys fail by the rows
            if isinstance(t[c], pd.Series) and _key_kind(t[c]) != _key_kind(tables[0][c]):
                raise TaskFailed(f"concat of column {c!r} as {tables[0][c].dtype} and as {t[c].dtype}: "
                                 "convert it to one type first")
    if config.privacy:
        return concat_rows(tables)
    return pd.concat(tables, ignore_index=True)


def visit_groupagg(node: GroupAgg, args: list[Any], data: Any, config: Config) -> Any:
    table = _frame_of(args[0], "a named aggregation")
    _has(table, [*node.keys, *node.columns], "groupby(...).agg")
    spec = {name: (column, fn) for name, column, fn in zip(node.names, node.columns, node.funcs)}
    grouped = table.groupby(list(node.keys), sort=True, dropna=True, observed=True)
    try:
        out = grouped.agg(**spec)
    except TypeError:  # values of several types in one column: the groups that mix them are missing, no failure
        out = pd.DataFrame({name: _total_agg(grouped[column], fn) for name, (column, fn) in spec.items()})
    out = out.reset_index()
    return group_rows(out, node.keys) if config.privacy else out


def _total_agg(grouped: Any, fn: str) -> pd.Series:
    """``fn`` of each group, missing where the group's values cannot be combined (text beside numbers):
    whether a task fails must not depend on the rows a filter keeps."""
    try:
        return grouped.agg(fn)
    except TypeError:
        def one(values: pd.Series) -> Any:
            try:
                return values.agg(fn)
            except TypeError:
                return np.nan
        return grouped.agg(one)


def visit_sort(node: Sort, args: list[Any], data: Any, config: Config) -> Any:
    table = _frame_of(args[0], "sort_values")
    _has(table, node.by, "sort_values")
    sort = functools.partial(table.sort_values, list(node.by), ascending=list(node.ascending), kind="stable",
                             na_position="last")
    try:
        return sort()
    except TypeError:  # text beside numbers in one column: ordered by type first, never a failure that rows decide
        return sort(key=_total_order)


def _total_order(column: pd.Series) -> pd.Series:
    if column.dtype != object:
        return column
    return column.map(lambda v: v if _missing_value(v) else (type(v).__name__, v))


def _missing_value(v: Any) -> bool:
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def visit_project(node: Project, args: list[Any], data: Any, config: Config) -> Any:
    rows, values = args[0], args[1:]
    if not isinstance(rows, (pd.DataFrame, pd.Series)):
        raise TaskFailed("a table's columns need rows: select them from a table")
    out = rows.copy() if node.keep and isinstance(rows, pd.DataFrame) else pd.DataFrame(index=rows.index)
    for name, value in zip(node.names, values):
        if isinstance(value, pd.DataFrame):
            raise TaskFailed(f"column {name!r} of a table must be a single column")
        out[name] = value  # aligned by row label, as pandas' assign
    return out


VISITORS: dict[type, Callable[[Any, list[Any], Any, Config], Any]] = {
    Fragment: visit_fragment,
    Column: visit_column,
    Literal: visit_literal,
    Elementwise: visit_elementwise,
    Filter: visit_filter,
    Map: visit_map,
    Merge: visit_merge,
    Concat: visit_concat,
    GroupAgg: visit_groupagg,
    Sort: visit_sort,
    Project: visit_project,
}
