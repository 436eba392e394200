"""The compiler: one request's node table over one fragment, into one ``Program``.

``Compiler`` walks the node table (``compile``, ``_visit``) and writes
each node with its parts: ``ElementwiseCompiler`` (elementwise
operations), ``FilterCompiler`` (row filters), ``AggregateCompiler`` (the
outputs' aggregates) and ``DisclosureCompiler`` (what the policies ask
about each output); the helpers they share (``_column``, ``_align``,
``_operands``) are here. ``compile_request`` is the entry point the
DuckDB fragments call.
"""

from __future__ import annotations

from typing import Any, Sequence

from ...config import Config
from ...errors import ServerError, TaskFailed
from ...expr.node import Node
from ...expr.rowwise import Column, Elementwise, Filter, Fragment as FragmentNode, Literal, Map
from ...server.evaluate import Failure, needed_nodes
from .aggregates import AGGREGATES, AggregateCompiler
from .disclosure import Needs, _unavailable
from .disclosure_queries import DisclosureCompiler
from .elementwise import ELEMENTWISE, ElementwiseCompiler
from .filters import FilterCompiler
from .program import Output, Program
from .query import Query, _Followup
from .values import ALL, FLOAT, LIST, OTHER, Col, Const, Operand, Rows, SourceColumn, Table, Value, _positive_zero, literal


class Compiler(ElementwiseCompiler, FilterCompiler, AggregateCompiler, DisclosureCompiler):
    """Compiles the outputs of one request over one fragment into a ``Program``.

    ``needs`` says what the privacy policies ask of each result's
    disclosure (None: nothing, and no disclosure is compiled); ``person``
    names the column whose distinct values are the persons counted;
    ``ordinal`` is an SQL expression over the source giving the rows' order
    (the pandas engine's "first" among tied modes), or None.
    """

    def __init__(self, source: str, columns: Sequence[SourceColumn], config: Config, *,
                 needs: Needs | None = None, person: str | None = None, ordinal: str | None = None) -> None:
        self.query = Query(source, columns, ordinal)
        self.config = config
        self.needs = needs
        self.person = person
        key = next((c.alias for c in columns if c.name == person), None)
        if person is not None and key is None:
            raise TaskFailed(f"this fragment has no column {person!r} to count persons by")
        self.later = _Followup(key)
        self._key = key  # the person column in ``t0`` (None: rows are counted)
        self.fragment = Table({c.name: Col(c.alias, 0, ALL, c.kind, untyped=c.untyped, name=c.name) for c in columns},
                              ALL)
        self.rows_index = self.query.select("count(*)")
        self._never_null: set[str] = set()  # boolean columns that are never NULL: usable as a filter as they are
        self._unsigned: set[str] = set()  # float columns that are never -0.0 (every elementwise result)

    # -- driver ----------------------------------------------------------------------------------
    def compile(self, nodes: Sequence[Node], outputs: Sequence[int]) -> Program:
        position = {id(node): i for i, node in enumerate(nodes)}
        needed = self._needed(nodes, outputs, position)
        values: dict[int, Value] = {}
        program = Program(None)
        for i in sorted(needed):
            node = nodes[i]
            # a relation's compiler reads the table it starts from as its fragment: not its children
            args = [values[position[id(child)]] for child in node.children if position[id(child)] in needed]
            failed = next((a for a in args if isinstance(a, Failure)), None)
            if failed is not None:
                values[i] = failed
                continue
            try:
                values[i] = self._visit(node, args)
            except ServerError as exc:
                values[i] = Failure(exc)
            except Exception as exc:  # a bug or an unexpected value: typed and data-free
                values[i] = Failure(TaskFailed(f"{node.kind} {getattr(node, 'op', '')} cannot be compiled to SQL: "
                                               f"{type(exc).__name__}"))
        by_node = {id(nodes[i]): v for i, v in values.items()}
        for o in dict.fromkeys(outputs):
            value = values[o]
            if isinstance(value, Failure):
                program.outputs[o] = value
                continue
            output: Output = value
            if self.needs is not None:
                try:
                    output.disclosure = self._disclose(nodes[o], by_node)  # type: ignore[arg-type]
                except Exception as exc:  # the policies will refuse the result, saying why
                    reason = exc.message if isinstance(exc, ServerError) else \
                        "this fragment cannot report the rows behind this result"
                    output.disclosure = _unavailable(nodes[o].op, self.rows_index, reason, self.person)  # type: ignore[attr-defined]
            program.outputs[o] = output
        if any(not isinstance(v, Failure) for v in program.outputs.values()):
            program.sql = self.query.sql()
            program.followup = self.later.statement(self.query)
        return program

    def _needed(self, nodes: Sequence[Node], outputs: Sequence[int], position: dict[int, int]) -> set[int]:
        """The nodes to visit for ``outputs`` (a relation's compiler stops at the table it reads)."""
        return needed_nodes(nodes, outputs, position)

    def _visit(self, node: Node, args: list[Value]) -> Value:
        if any(isinstance(a, Output) for a in args):
            raise TaskFailed("an aggregate used inside another expression is not supported by this fragment")
        if isinstance(node, FragmentNode):
            return self.fragment
        if isinstance(node, Column):
            (table,) = args
            if isinstance(table, Table):
                if node.name in table.columns:
                    return table.columns[node.name]
                raise TaskFailed(f"no column {node.name!r}")
            raise TaskFailed(f"cannot select column {node.name!r}: the value has no columns")
        if isinstance(node, Literal):
            return Const(node.value)
        if isinstance(node, Elementwise):
            fn = self.config.elementwise[node.op]
            op = ELEMENTWISE.get(fn)
            if op is None:
                raise TaskFailed(f"this fragment cannot run the elementwise operation {node.op!r} in SQL "
                                 f"(the server's config maps it to {_name(fn)})")
            return self._elementwise(op, fn, args)
        if isinstance(node, Filter):
            return self._filter(*args)
        if isinstance(node, Map):
            fn = self.config.aggregates[node.op].map
            op = AGGREGATES.get(fn)
            if op is None:
                raise TaskFailed(f"this fragment cannot compute the aggregate {node.op!r} in SQL "
                                 f"(the server's config maps it to {_name(fn)})")
            return self._map(op, node.op, args)
        raise TaskFailed(f"this fragment cannot compile a {node.kind} node")

    # -- helpers -----------------------------------------------------------------------------------
    def _column(self, expr: str, level: int, rows: Rows, kind: str, nullable: bool = False,
                signed: bool = True) -> Col:
        """``expr`` as a named column; a float one without -0.0 (``signed=False``: it never is -0.0)."""
        if kind == FLOAT and signed:
            expr = _positive_zero(expr)
        alias, at = self.query.name(expr, level)
        if kind == FLOAT:
            self._unsigned.add(alias)
        return Col(alias, at, rows, kind, nullable)

    def _align(self, op: str, cols: Sequence[Col], mode: str) -> tuple[Rows, list[str]]:
        """The rows of a result over ``cols`` and each column's SQL on them (pandas' alignment by label).

        ``mode``: ``"same"`` (comparisons: pandas refuses unequal labels), ``"union"`` (arithmetic:
        missing where an operand has no row), ``"logical"`` (``&``, ``|``: false where it has none).
        """
        if not cols:
            return ALL, []
        first = cols[0].rows
        if all(c.rows.lineage == first.lineage for c in cols):
            return first, [c.sql for c in cols]
        if mode == "same":
            raise TaskFailed("Can only compare identically-labeled Series objects")
        widest = next((c.rows for c in cols if all(c.rows.contains(o.rows) for o in cols)), None)
        if widest is None:
            raise TaskFailed(f"{op}: the operands come from different row filters, which this fragment cannot align")
        fill = "FALSE" if mode == "logical" else "NULL"
        return widest, [
            c.sql if c.rows.lineage == widest.lineage else f"(CASE WHEN {c.rows.cond} THEN {c.sql} ELSE {fill} END)"
            for c in cols
        ]

    def _operands(self, op: str, args: Sequence[Value], mode: str = "union") -> tuple[Rows, list[Operand], int]:
        for a in args:
            if isinstance(a, Const) and a.kind == LIST:
                raise TaskFailed(f"{op}: a list used as a column (one value per row, by position) "
                                 "is not supported by this fragment")
            if isinstance(a, Const) and a.kind == OTHER:
                raise TaskFailed(f"{op}: constants of type {type(a.value).__name__} are not supported")
        cols = [a for a in args if isinstance(a, Col)]
        rows, sqls = self._align(op, cols, mode)
        aligned = iter(sqls)
        operands = [
            Operand(next(aligned), a.kind, a.nullable) if isinstance(a, Col)
            else Operand(literal(a.value), a.kind, False, a.value, True)
            for a in args
        ]
        level = max([c.depth for c in cols], default=0)
        return rows, operands, level


def _name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def compile_request(nodes: Sequence[Node], outputs: Sequence[int], config: Config, *, source: str,
                    columns: Sequence[SourceColumn], needs: Needs | None = None, person: str | None = None,
                    ordinal: str | None = None) -> Program:
    """The query (and the disclosure's second statement, if any) for ``outputs`` of a request over a fragment."""
    compiler = Compiler(source, columns, config, needs=needs, person=person, ordinal=ordinal)
    return compiler.compile(nodes, outputs)
