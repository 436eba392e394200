"""Tables made inside one request (``fedmed.expr.tables``) as SQL: joins, stacks, sorts, per-person group-bys.

A task over relations compiles to one statement per row space its outputs
read (``compile_tables``; a request reading one cohort is one query). Each
row space's root (a ``fragment``, ``merge``, ``concat`` or ``groupagg``)
becomes a ``Source``: a ``FROM`` item with typed columns, read as layer
``t0`` by an ordinary ``Compiler``, which then compiles the filters,
elementwise columns and aggregates above it exactly as over a fragment.
The inputs of a relation are tables of other row spaces, each a ``SELECT``
written by a ``RelationCompiler`` over its own source, nested inside the
relation's SQL: the files are scanned in place, never loaded.

pandas' semantics, as ``fedmed.server.evaluate``'s visitors have them:

- ``merge``: ``{INNER|LEFT} JOIN ... ON l.k IS NOT DISTINCT FROM r.k`` (a
  missing key meets a missing key, as NaN meets NaN in pandas); columns
  named by pandas' rules (a key of one name on both sides once, other
  shared names suffixed);
- ``concat``: ``UNION ALL`` of tables with the same columns in order;
- ``groupagg``: ``GROUP BY`` the keys over rows with every key present;
  ``first``/``last`` are ``arg_min``/``arg_max`` over the rows' order
  among non-missing values, ``sum`` of nothing is 0, ``nunique`` counts
  distinct present values, ``size`` counts rows;
- ``sort_values`` and ``project`` stay in their input's row space.

Row order matters only to ``first`` and ``last``, so it is carried (as the
column ``ORDER``) only into the tables they read: a fragment's own order
(Parquet: file and row number; a DuckDB table: ``rowid``; CSV: the scan's
order), a merge's ``(left, right)`` (pandas' order with ``sort=False``), a
concat's ``(input, row)``, a group-by's keys; a sort numbers the rows by
its keys, ties kept in the order below (a stable sort, missing last).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from ...config import Config
from ...errors import ServerError, TaskFailed
from ...expr.node import Node, walk
from ...expr.rowwise import Fragment as FragmentNode
from ...expr.tables import NEW_ROWS, Concat, GroupAgg, Merge, Project, Sort
from ...server.evaluate import Failure, needed_nodes
from .compiler import Compiler
from .program import Program
from .schema import KIND_DTYPES
from .values import (BOOL, FLOAT, INT, LIST, NULL, OTHER, STR, TIME, Col, Const, SourceColumn, Table, Value, _fsum,
                     literal, quote_identifier)

#: The column a relation's SQL adds for its rows' order, where ``first``/``last`` above need it.
ORDER = "__fedmed_order"
#: A CSV file's rows in the order DuckDB scans them (it keeps insertion order; CSV has no row number).
SCAN_ORDER = "row_number() OVER ()"
#: The DuckDB type a relation's column has, by its kind (what ``read_expression`` reads back as that kind).
KIND_TYPES = {INT: "BIGINT", FLOAT: "DOUBLE", BOOL: "BOOLEAN", STR: "VARCHAR", TIME: "TIMESTAMP"}


@dataclass(frozen=True)
class Source:
    """A ``FROM`` item a compiler reads as layer ``t0``: its SQL, its columns, and its rows' order
    as SQL over it (None: not carried)."""

    sql: str
    columns: tuple[SourceColumn, ...]
    ordinal: str | None = None


def is_root(node: Node) -> bool:
    """Whether ``node`` starts a row space (``fedmed.expr.tables.NEW_ROWS`` and fragments)."""
    return isinstance(node, (FragmentNode, *NEW_ROWS))


def root_of(node: Node) -> Node:
    """The root of the row space ``node``'s rows are in (the server refused a node mixing two)."""
    if is_root(node):
        return node
    roots = [n for n in walk([node], stop=is_root) if is_root(n)]
    if len(roots) != 1:
        raise TaskFailed("a value of this request reads no table or several; merge the tables first")
    return roots[0]


class RelationCompiler(Compiler):
    """A ``Compiler`` over the row space of ``root``, read from ``source``: ``root`` is its fragment.

    It also compiles ``sort_values`` and ``project`` (same row space) and
    tracks each table's rows' order (``orders``: SQL and ascending, most
    significant first) for the ``first``/``last`` of a group-by above.
    """

    def __init__(self, root: Node, source: Source, config: Config) -> None:
        super().__init__(source.sql, source.columns, config, ordinal=source.ordinal)
        self.root = root
        self.orders: dict[int, tuple[tuple[str, bool, str], ...]] = {}  # (SQL, ascending, kind)
        if source.ordinal is not None:
            self.orders[id(root)] = (("o0", True, OTHER),)

    def _needed(self, nodes: Sequence[Node], outputs: Sequence[int], position: dict[int, int]) -> set[int]:
        return needed_nodes(nodes, outputs, position, stop=self.root)  # the relation's table is read, not walked

    def table_of(self, node: Node, what: str) -> Table:
        """The value of ``node`` (a table in this row space), or the ``TaskFailed`` that stopped it."""
        values: dict[int, Value] = {}
        for n in walk([node], stop=lambda n: n is self.root):
            args = [values[id(c)] for c in n.children] if n is not self.root else []
            values[id(n)] = self._visit(n, args)
        value = values[id(node)]
        if not isinstance(value, Table):
            raise TaskFailed(f"{what} needs a table, not a single column or nested data")
        return value

    def _visit(self, node: Node, args: list[Value]) -> Value:
        if node is self.root:
            return self.fragment
        if is_root(node):  # the server refuses nodes mixing row spaces; this is the second lock
            raise TaskFailed("this value combines rows of different tables; merge them first")
        if isinstance(node, Sort):
            return self._sort(node, *args)
        if isinstance(node, Project):
            return self._project(node, args[0], args[1:])
        value = super()._visit(node, args)
        if isinstance(value, Table):  # a filter or elementwise work keeps its table's order
            self.orders[id(node)] = next((self.orders[id(c)] for c in node.children if id(c) in self.orders), ())
        return value

    def _sort(self, node: Sort, table: Value) -> Table:
        table = _table(table, "sort_values")
        _has(table, node.by, "sort_values")
        keys = tuple((table.columns[b].sql, a, table.columns[b].kind) for b, a in zip(node.by, node.ascending))
        self.orders[id(node)] = keys + self.orders.get(id(node.arg), ())
        return table

    def _project(self, node: Project, rows: Value, values: Sequence[Value]) -> Table:
        if isinstance(rows, Table):
            within, columns = rows.rows, dict(rows.columns) if node.keep else {}
        elif isinstance(rows, Col):
            within, columns = rows.rows, {}
        else:
            raise TaskFailed("a table's columns need rows: select them from a table")
        for name, value in zip(node.names, values):
            if isinstance(value, Table):
                raise TaskFailed(f"column {name!r} of a table must be a single column")
            if isinstance(value, Const):
                if value.kind in (LIST, OTHER):
                    raise TaskFailed(f"column {name!r}: a constant of this type is not supported by this fragment")
                kind = FLOAT if value.kind == NULL else value.kind
                columns[name] = self._column(literal(value.value), 0, within, kind, signed=False)
            elif value.rows.contains(within):  # as many rows or more: pandas keeps the table's
                columns[name] = replace(value, rows=within)
            elif within.contains(value.rows):  # fewer rows: missing on the others, as pandas aligns them
                sql = f"(CASE WHEN {value.rows.cond} THEN {value.sql} END)"
                columns[name] = replace(self._column(sql, value.depth, within, value.kind, signed=False),
                                        nullable=value.nullable)
            else:
                raise TaskFailed(f"column {name!r}: its rows come from other row filters than the table's, "
                                 "which this fragment cannot align")
        self.orders[id(node)] = self.orders.get(id(node.rows), ())
        return Table(columns, within)


class Relations:
    """The SQL of every relation one request reads on one server's DuckDB fragments, each written once.

    ``fragments`` maps each fragment name to its ``Source`` (with its rows'
    order as ``ordinal``, used only where ``first``/``last`` need it).
    """

    def __init__(self, fragments: Mapping[str, Source], config: Config) -> None:
        self.fragments = fragments
        self.config = config
        self._spaces: dict[tuple[int, bool], Source] = {}

    def space(self, root: Node, ordered: bool) -> Source:
        """The source of the row space ``root`` starts, with its rows' order when ``ordered``."""
        if isinstance(root, FragmentNode):
            if root.name not in self.fragments:
                raise TaskFailed(f"no fragment {root.name!r} among the tables of this task")
            source = self.fragments[root.name]
            return source if ordered else replace(source, ordinal=None)
        key = (id(root), ordered)
        if key not in self._spaces:
            if isinstance(root, Merge):
                sql, columns = self._merge(root, ordered)
            elif isinstance(root, Concat):
                sql, columns = self._concat(root, ordered)
            elif isinstance(root, GroupAgg):
                sql, columns = self._groupagg(root, ordered)
            else:
                raise TaskFailed(f"this fragment cannot compile a {root.kind} node")
            self._spaces[key] = Source(f"({sql})", tuple(SourceColumn(n, t, f"s{i}") for i, (n, t) in
                                                         enumerate(columns)),
                                       quote_identifier(ORDER) if ordered else None)
        return self._spaces[key]

    def table(self, node: Node, what: str, ordered: bool = False, numbered: bool = False
              ) -> tuple[str, list[tuple[str, str]]]:
        """A ``SELECT`` of the table ``node`` and its columns (name, DuckDB type); with ``ordered``, also
        the column ``ORDER`` (a row number where ``numbered``, or where a sort decides the order)."""
        root = root_of(node)
        compiler = RelationCompiler(root, self.space(root, ordered), self.config)
        value = compiler.table_of(node, what)
        order = compiler.orders.get(id(node), ()) if ordered else ()
        if ordered and not order:
            raise TaskFailed(f"{what}: the order of this table's rows is not known to this fragment")
        typed = [(name, *_typed(compiler, col, name)) for name, col in value.columns.items()]
        ranked = _ranked(order, numbered) if ordered else ""
        uses = [sql for _, sql, _ in typed] + [value.rows.cond] + [e for e, _, _ in order]
        ctes, last = compiler.query._layers(uses)
        select = [f"{sql} AS {quote_identifier(name)}" for name, sql, _ in typed]
        select += [f"{ranked} AS {quote_identifier(ORDER)}"] if ordered else []
        where = "" if value.rows.cond == "TRUE" else f" WHERE {value.rows.cond}"
        return (f"WITH {', '.join(ctes)} SELECT {', '.join(select) or '1 AS _row'} FROM {last}{where}",
                [(name, t) for name, _, t in typed])

    # -- the relations ------------------------------------------------------------------------------
    def _merge(self, node: Merge, ordered: bool) -> tuple[str, list[tuple[str, str]]]:
        left, lcols = self.table(node.left, "merge", ordered)
        right, rcols = self.table(node.right, "merge", ordered)
        ltypes, rtypes = dict(lcols), dict(rcols)
        _has_names(ltypes, node.left_on, "merge (left table)")
        _has_names(rtypes, node.right_on, "merge (right table)")
        pairs = list(zip(node.left_on, node.right_on))
        if any(not _comparable(ltypes[a], rtypes[b]) for a, b in pairs):
            kinds = [f"{a} ({_dtype(ltypes[a])}) with {b} ({_dtype(rtypes[b])})" for a, b in pairs]
            raise TaskFailed(f"merge cannot match {', '.join(kinds)}: convert the keys to one type first")
        once = {b for a, b in pairs if a == b}  # pandas keeps one column of a key named alike on both sides
        kept = [(n, t) for n, t in rcols if n not in once]
        overlap = set(ltypes) & {n for n, _ in kept}
        lsuffix, rsuffix = node.suffixes
        if overlap and not (lsuffix or rsuffix):
            raise TaskFailed("merge: the tables share columns and no suffix tells them apart")
        names = [n + lsuffix if n in overlap else n for n, _ in lcols] + \
                [n + rsuffix if n in overlap else n for n, _ in kept]
        if len(set(names)) != len(names):
            raise TaskFailed("merge: the suffixes make two columns of one name")
        select = [f"l.{quote_identifier(n)} AS {quote_identifier(m)}" for (n, _), m in zip(lcols, names)]
        select += [f"r.{quote_identifier(n)} AS {quote_identifier(m)}" for (n, _), m in zip(kept, names[len(lcols):])]
        if ordered:  # pandas (sort=False): the left's rows in order, each with its matches in the right's order
            o = quote_identifier(ORDER)
            select.append(f"struct_pack(l := l.{o}, r := r.{o}) AS {o}")
        on = " AND ".join(f"l.{quote_identifier(a)} IS NOT DISTINCT FROM r.{quote_identifier(b)}" for a, b in pairs)
        join = "INNER JOIN" if node.how == "inner" else "LEFT JOIN"
        sql = f"SELECT {', '.join(select)} FROM ({left}) AS l {join} ({right}) AS r ON {on}"
        return sql, list(zip(names, [t for _, t in lcols] + [t for _, t in kept]))

    def _concat(self, node: Concat, ordered: bool) -> tuple[str, list[tuple[str, str]]]:
        parts = [self.table(arg, "concat", ordered, numbered=True) for arg in node.args]
        first = [n for n, _ in parts[0][1]]
        for _, columns in parts[1:]:
            if [n for n, _ in columns] != first:
                raise TaskFailed(f"concat needs tables with the same columns in the same order: {first[:10]} and "
                                 f"{[n for n, _ in columns][:10]}")
        types = []
        for i, name in enumerate(first):
            found = {columns[i][1] for _, columns in parts}
            if len(found) > 1 and found != {"BIGINT", "DOUBLE"}:
                raise TaskFailed(f"concat of column {name!r} holding {' and '.join(sorted(_dtype(t) for t in found))} "
                                 "is not supported by this fragment: convert it to one type first")
            types.append("DOUBLE" if len(found) > 1 else found.pop())
        o = quote_identifier(ORDER)
        selects = []
        for k, (sql, _) in enumerate(parts):
            cols = [f"CAST({quote_identifier(n)} AS {t})" if len({c[i][1] for _, c in parts}) > 1
                    else quote_identifier(n) for i, (n, t) in enumerate(zip(first, types))]
            cols += [f"struct_pack(i := {k}, r := {o}) AS {o}"] if ordered else []
            selects.append(f"SELECT {', '.join(cols) or '1 AS _row'} FROM ({sql})")
        return " UNION ALL ".join(selects), list(zip(first, types))

    def _groupagg(self, node: GroupAgg, ordered: bool) -> tuple[str, list[tuple[str, str]]]:
        by_order = any(f in ("first", "last") for f in node.funcs)
        sql, columns = self.table(node.arg, "a named aggregation", by_order)
        types = dict(columns)
        _has_names(types, [*node.keys, *node.columns], "groupby(...).agg")
        keys = [quote_identifier(k) for k in node.keys]
        select = [f"{k} AS {k}" for k in keys]
        out = [(k, types[k]) for k in node.keys]
        for name, column, fn in zip(node.names, node.columns, node.funcs):
            expr, sql_type = _group_function(fn, quote_identifier(column), types[column], column)
            select.append(f"{expr} AS {quote_identifier(name)}")
            out.append((name, sql_type))
        if ordered:  # pandas sorts the groups by their keys
            select.append(f"row_number() OVER (ORDER BY {', '.join(keys)}) AS {quote_identifier(ORDER)}")
        present = " AND ".join(f"{k} IS NOT NULL" for k in keys)
        grouped = ", ".join(str(i + 1) for i in range(len(keys)))
        return f"SELECT {', '.join(select)} FROM ({sql}) WHERE {present} GROUP BY {grouped}", out


def _ranked(order: Sequence[tuple[str, bool, str]], numbered: bool) -> str:
    """The rows' ``order`` as one SQL value that sorts as they do: the order itself where it is one
    ascending value; a struct of the keys (missing last, descending ones negated) and the order below,
    which ``arg_min``/``arg_max`` compare as they stream; else (``numbered``, or a descending text)
    the row numbers, which sort the whole table."""
    if not numbered and len(order) == 1 and order[0][1]:
        return order[0][0]
    negated = {INT: "(-CAST({} AS HUGEINT))", FLOAT: "(-{})", BOOL: "(NOT {})", TIME: "(-epoch_us({}))"}
    if not numbered and all(up or kind in negated for _, up, kind in order[:-1]) and order[-1][1]:
        fields = [f"n{i} := ({e} IS NULL), v{i} := {e if up else negated[kind].format(e)}"
                  for i, (e, up, kind) in enumerate(order[:-1])]
        return f"struct_pack({', '.join(fields)}, o := {order[-1][0]})"
    return "row_number() OVER (ORDER BY " + ", ".join(f"{e} {'ASC' if up else 'DESC'} NULLS LAST"
                                                       for e, up, _ in order) + ")"


def _group_function(fn: str, x: str, sql_type: str, column: str) -> tuple[str, str]:
    """One named aggregation as pandas computes it per group: its SQL over the input's columns, and type."""
    if fn in ("first", "last"):  # the first (last) present value in the rows' order
        pick = "arg_min" if fn == "first" else "arg_max"
        return f"{pick}({x}, CASE WHEN {x} IS NOT NULL THEN {quote_identifier(ORDER)} END)", sql_type
    if fn in ("min", "max"):
        return f"{fn}({x})", sql_type
    if fn == "count":
        return f"count({x})", "BIGINT"
    if fn == "nunique":
        return f"count(DISTINCT {x})", "BIGINT"
    if fn == "size":
        return "count(*)", "BIGINT"
    if sql_type not in ("BIGINT", "DOUBLE", "BOOLEAN"):
        raise TaskFailed(f"groupby(...).agg: {fn} of {column!r} ({_dtype(sql_type)}) is not supported by this "
                         "fragment: it needs numbers")
    if fn == "mean":
        return f"avg(CAST({x} AS DOUBLE))", "DOUBLE"
    if sql_type == "DOUBLE":  # fn == "sum": of no values, 0
        return f"coalesce({_fsum(x)}, CAST(0 AS DOUBLE))", "DOUBLE"
    return f"CAST(coalesce(sum(CAST({x} AS BIGINT)), 0) AS BIGINT)", "BIGINT"


def compile_tables(nodes: Sequence[Node], outputs: Sequence[int], config: Config,
                   fragments: Mapping[str, Source]) -> list[Program]:
    """The programs of ``outputs`` (tasks over relations): one per row space they read, each one query."""
    relations = Relations(fragments, config)
    by_root: dict[int, tuple[Node | None, list[int]]] = {}
    failed: dict[int, Failure] = {}
    for o in dict.fromkeys(outputs):
        try:
            root: Node | None = root_of(nodes[o])
        except ServerError as exc:
            failed[o] = Failure(exc)
            continue
        by_root.setdefault(id(root), (root, []))[1].append(o)
    programs = []
    for root, outs in by_root.values():
        try:
            compiler = RelationCompiler(root, relations.space(root, False), config)  # type: ignore[arg-type]
        except ServerError as exc:
            programs.append(Program(None, {o: Failure(exc) for o in outs}))
            continue
        except Exception as exc:  # a bug or an unexpected value: typed and data-free
            error = TaskFailed(f"{root.kind} cannot be compiled to SQL: {type(exc).__name__}")  # type: ignore[union-attr]
            programs.append(Program(None, {o: Failure(error) for o in outs}))
            continue
        programs.append(compiler.compile(nodes, outs))
    if failed:
        programs.append(Program(None, dict(failed)))
    return programs


# -- helpers -----------------------------------------------------------------------------------------


def _table(value: Value, what: str) -> Table:
    if not isinstance(value, Table):
        raise TaskFailed(f"{what} needs a table, not a single column or nested data")
    return value


def _has(table: Table, names: Sequence[str], what: str) -> None:
    _has_names(table.columns, names, what)


def _has_names(columns: Mapping[str, Any], names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in columns]
    if missing:
        raise TaskFailed(f"{what}: no column {missing[0]!r}")


def _typed(compiler: Compiler, col: Col, name: str) -> tuple[str, str]:
    """A column of a relation's ``SELECT``: its SQL and DuckDB type (by its kind; a source column of
    another type keeps its own)."""
    sql_type = KIND_TYPES.get(col.kind)
    if sql_type is None:
        source = next((c for c in compiler.query.columns if c.alias == col.sql), None)
        if source is None:
            raise TaskFailed(f"column {name!r} of this type cannot be a column of a table on this fragment yet")
        return col.sql, source.type
    return (col.sql if sql_type == "VARCHAR" else f"CAST({col.sql} AS {sql_type})"), sql_type


def _comparable(a: str, b: str) -> bool:
    numbers = {"BIGINT", "DOUBLE", "BOOLEAN"}
    return a == b or (a in numbers and b in numbers)


def _dtype(sql_type: str) -> str:
    kinds = {t: k for k, t in KIND_TYPES.items()}
    return KIND_DTYPES[kinds[sql_type]][0] if sql_type in kinds else sql_type.lower()


__all__ = ["ORDER", "Source", "Relations", "RelationCompiler", "compile_tables", "root_of", "is_root"]
