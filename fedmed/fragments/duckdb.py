"""Out-of-core fragments: Parquet files, CSV files or a DuckDB table, queried in place by DuckDB.

A server holds them like any fragment::

    server["registry"] = fm.fragments.Parquet("data/*.parquet")
    server["visits"] = fm.fragments.CSV("exports/visits-*.csv")
    server["cohort"] = fm.fragments.DuckDB("registry.duckdb", table="cohort")

Each ``evaluate`` compiles the request's node table (``fedmed.fragments.sql``)
into one SQL query and runs it: the data is scanned where it lies and never
loaded into the server's memory; only the aggregates come back. A threshold
policy's disclosure analysis may add one second statement over the same rows
(modes, medians, sums per person). What the compiler cannot express fails
that output with ``TaskFailed``. Tasks reading several fragments together
(a merge, a concat, a per-person group-by: ``SQLFragment.evaluate_tables``,
``fedmed.fragments.sql.relations``) compile to one query per table they
read, with the joins in it, under exact configs only.

The files (or the database) are read at query time. The fragment's column
names and types are read once, when it is created, and so are the sizes and
modification times of its local files: once they differ (a file changed,
added or removed), every query fails until the server owner stores a new
fragment under the same name (``server[name] = ...``), which gives it a new
version. Rows never change under one version, so ``Snapshot`` and the
versions a client sees keep their meaning, and no result mixes old and new
rows unnoticed.

Every query runs under the server's memory budget for one request
(``fedmed.server.memory.request_budget``: config ``limits.memory_bytes``):
it is DuckDB's ``memory_limit``, unless the fragment's own ``settings`` say
less. DuckDB spills what it can (a grouping, a sort) to a directory of this
process under the system's temporary folder (or the settings'
``temp_directory``), which it removes when the fragment is closed, up to as
much again (or the settings' ``max_temp_directory_size``): a hostile query
fills no disk. What still does not fit fails its task with
``TooExpensive``, naming the budget, and the next query runs as usual.
DuckDB's limits hold for a whole database, not for one connection, so the
queries running on one fragment at the same time share one budget.

DuckDB is an optional dependency: ``pip install 'fedmed[duckdb]'``.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

from ..config import Config
from ..errors import ServerError, ServerMisconfigured, TaskFailed, TooExpensive
from ..expr.node import Node
from ..server.evaluate import Evaluated, Failure
from ..server.fragments import Fragment
from ..server.memory import Price, mib, price_answers, request_budget
from .sql import MARKER, Needs, Program, SourceColumn, compile_request, quote_identifier, quote_string
from .sql.relations import SCAN_ORDER, Source, compile_tables

INSTALL = "pip install 'fedmed[duckdb]'"


#: The oldest DuckDB with what the compiler uses (``max(x, n)``, ``histogram(x, boundaries)``,
#: ``histogram`` of structs).
MINIMUM_VERSION = (1, 1)

#: DuckDB's settings set before every query from the server's memory budget (``SQLFragment.bounds``).
BUDGETED = ("memory_limit", "max_temp_directory_size")
#: Other names DuckDB accepts for them.
ALIASES = {"max_memory": "memory_limit"}


def require_duckdb() -> Any:
    """The ``duckdb`` module, or an ImportError that says how to install it."""
    try:
        import duckdb
    except ImportError as exc:
        raise ImportError(f"DuckDB-backed fragments need the duckdb package: {INSTALL}") from exc
    version = tuple(int(p) for p in duckdb.__version__.split(".")[:2] if p.isdigit())
    if version < MINIMUM_VERSION:
        raise ImportError(f"DuckDB-backed fragments need duckdb 1.1 or later (found {duckdb.__version__}): {INSTALL}")
    return duckdb


class SQLFragment(Fragment):
    """Base class of the DuckDB-backed fragments: a ``FROM`` clause DuckDB can scan.

    Parameters
    ----------
    source : the SQL ``FROM`` item (``read_parquet(...)``, a quoted table name).
    database : DuckDB database to connect to (``":memory:"`` for files).
    read_only : open ``database`` read-only.
    settings : DuckDB settings for the connection, e.g. ``{"threads": 4, "memory_limit": "2GB"}``;
        ``memory_limit`` bounds a query only where it is smaller than the server's memory budget
        (see the module docstring).
    count_rows : count the rows when created (cheap for Parquet and tables, a full scan for CSV).
    """

    def __init__(self, source: str, *, database: str = ":memory:", read_only: bool = False,
                 settings: Mapping[str, Any] | None = None, count_rows: bool = True,
                 files: Sequence[str] = ()) -> None:
        duckdb = require_duckdb()
        self._error = duckdb.Error
        self._out_of_memory = duckdb.OutOfMemoryException
        self.source = source
        self.database = database
        settings = dict(settings or {})
        # partial_aggregate_pushdown: DuckDB 1.x/2.0 spends most of a query over several joins planning it
        # (a GLM step over three left joins: 25.7 s with it, 4.8 s without; benchmarks/README.md "Tables")
        config = {"temp_directory": _spill_directory(database), "disabled_optimizers": "partial_aggregate_pushdown",
                  **settings}
        self._connection = duckdb.connect(database, read_only=read_only, config=config)
        self._lock = threading.Lock()
        # the owner's own bounds, in bytes as DuckDB reads them (any unit, or a share of memory)
        owned = {ALIASES.get(name, name) for name in settings}
        self._owner = {name: size for name in BUDGETED if name in owned
                       and (size := _setting_bytes(self._connection, name)) is not None}
        described = self._connection.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()
        self.columns = [SourceColumn(str(name), str(sql_type), f"s{i}")
                        for i, (name, sql_type, *_) in enumerate(described)]
        self._files = tuple(files)
        self._fingerprint = _fingerprint(self._files)
        self._rows: int | None = None
        if count_rows:
            self._rows = int(self._connection.execute(f"SELECT count(*) FROM {source}").fetchone()[0])

    @property
    def rows(self) -> int | None:
        """Rows of the fragment (None for CSV until a query has counted them)."""
        return self._rows

    @property
    def dtypes(self) -> dict[str, str]:
        """Column names and DuckDB types, as read when the fragment was created."""
        return {c.name: c.type for c in self.columns}

    def connect(self) -> Any:
        """A DuckDB connection for one query (a connection is not shared between threads)."""
        with self._lock:
            return self._connection.cursor()

    def limit(self, budget: int) -> None:
        """Set the database's memory and spill limits (``bounds``) for the next queries.

        Set before every query (a tenth of a millisecond): fragments of one database file share
        the database, and their servers may have different budgets.
        """
        with self._lock:
            for name, value in self.bounds(budget).items():
                self._connection.execute(f"SET {name} = '{value}B'")

    def bounds(self, budget: int) -> dict[str, int]:
        """DuckDB's ``memory_limit`` (``budget``, or the owner's if smaller) and ``max_temp_directory_size``
        (the owner's, else ``budget``) for a query."""
        return {"memory_limit": min(budget, self._owner.get("memory_limit", budget)),
                "max_temp_directory_size": self._owner.get("max_temp_directory_size", budget)}

    def price(self, nodes: Sequence[Node], outputs: Sequence[int], config: Config) -> Price | None:
        """What the answers will hold in Python (``memory.price_answers``); DuckDB's own work is bounded
        by ``memory_limit``. None while the rows are not known (a CSV before its first query)."""
        return None if self._rows is None else price_answers(nodes, outputs, self._rows, config)

    def cannot_count_persons(self, column: str) -> str | None:
        if column in self.dtypes:
            return None
        return f"the fragment has no column {column!r}: every task on it is refused"

    def evaluate(
        self, nodes: Sequence[Node], outputs: Sequence[int], config: Config, person: str | None = None
    ) -> list[Evaluated]:
        """One SQL query for all ``outputs``, and one more when a privacy policy needs it; see the module docstring.

        ``person`` names the column identifying a person: the disclosure then
        counts distinct persons (a row without a key is a person of its own).
        A fragment without that column answers no task.
        """
        if _fingerprint(self._files) != self._fingerprint:
            changed = TaskFailed(
                "the fragment's files changed on disk since it was registered; the server's owner must "
                "register it again (server[name] = ...) to serve the new rows under a new version"
            )
            return [Evaluated(Failure(changed), None) for _ in outputs]
        if person is not None and person not in self.dtypes:
            missing = ServerMisconfigured(
                f"this fragment has no column {person!r}, which the server's config ('persons') names as its "
                "person key: every task on it is refused until the server's owner fixes that"
            )
            return [Evaluated(Failure(missing), None) for _ in outputs]
        needs = disclosure_needs(config)
        budget = request_budget(config.limits)
        program = self._compile(nodes, outputs, config, needs, person)
        answers = self._answers(program, lambda o: self._compile(nodes, [o], config, needs, person), budget)
        return [Evaluated(*answers[o]) for o in outputs]

    @staticmethod
    def evaluate_tables(fragments: Mapping[str, "SQLFragment"], nodes: Sequence[Node], outputs: Sequence[int],
                        config: Config) -> list[Evaluated]:
        """Tasks reading several DuckDB fragments of this server together (a merge, a concat, a per-person
        group-by: ``fedmed.fragments.sql.relations``), one query per table they read, over the files in place.

        Files (Parquet, CSV) are read from any connection; tables of a DuckDB database only from their own,
        so all of them must be of one database file. Exact configs only: under privacy policies the server
        refuses these tasks before they get here.
        """
        changed = [n for n, f in fragments.items() if _fingerprint(f._files) != f._fingerprint]
        databases = {os.path.abspath(f.database) for f in fragments.values() if f.database != ":memory:"}
        error: ServerError | None = None
        if changed:
            error = TaskFailed(f"the files of fragment {changed[0]!r} changed on disk since it was registered; the "
                               "server's owner must register it again (server[name] = ...) to serve the new rows")
        elif len(databases) > 1:
            error = TaskFailed("tables of different DuckDB database files cannot be read in one query: "
                               f"{sorted(n for n, f in fragments.items() if f.database != ':memory:')}")
        if error is not None:
            return [Evaluated(Failure(error), None) for _ in outputs]
        host = next((f for _, f in sorted(fragments.items()) if f.database != ":memory:"),
                    fragments[min(fragments)])
        sources = {name: Source(f.source, tuple(f.columns), f.table_order or f.ordinal or SCAN_ORDER)
                   for name, f in fragments.items()}
        budget = request_budget(config.limits)
        answers: dict[int, tuple[Any, Any]] = {}
        for program in compile_tables(nodes, outputs, config, sources):
            single = lambda o: compile_tables(nodes, [o], config, sources)[0]  # noqa: E731
            answers.update(host._answers(program, single, budget, count=False))
        return [Evaluated(*answers[o]) for o in outputs]

    def _answers(self, program: Program, single: Callable[[int], Program], budget: int,
                 count: bool = True) -> dict[int, tuple[Any, Any]]:
        """Each output's value and disclosure: ``program`` run once, or, when it raises and serves several
        tasks, each task alone (``single(o)``: its own program), so that one task's runtime error (an
        overflow, a bad cast, too much memory) does not spoil the others."""
        try:
            row, extra = self._run(program, budget, count)
            return {o: program.read(o, row, extra) for o in program.outputs}
        except (self._error, MemoryError) as exc:
            if sum(not isinstance(v, Failure) for v in program.outputs.values()) == 1:
                return {o: (Failure(self._failed(exc, budget)), None) for o in program.outputs}
            answers = {}
            for o in program.outputs:
                alone = single(o)
                try:
                    answers[o] = alone.read(o, *self._run(alone, budget, count))
                except (self._error, MemoryError) as inner:
                    answers[o] = (Failure(self._failed(inner, budget)), None)
            return answers

    #: SQL over the source giving the rows' order (for the disclosure's "first" among equals), or None.
    ordinal: ClassVar[str | None] = None
    #: The rows' order for the ``first``/``last`` of a table (``fedmed.fragments.sql.relations``), if not ``ordinal``.
    table_order: ClassVar[str | None] = None

    def _compile(self, nodes: Sequence[Node], outputs: Sequence[int], config: Config, needs: Needs | None,
                 person: str | None) -> Program:
        return compile_request(nodes, outputs, config, source=self.source, columns=self.columns,
                               needs=needs, person=person, ordinal=self.ordinal)

    def _run(self, program: Program, budget: int | None = None, count: bool = True
             ) -> tuple[tuple | None, tuple | None]:
        """The row of the program's query, and of its second statement (None when it has none);
        ``count``: the query's first value is the fragment's rows (not so for a query over tables)."""
        if program.sql is None:
            return None, None
        if budget is not None:
            self.limit(budget)
        connection = self.connect()
        try:
            row = connection.execute(program.sql).fetchone()
            extra = connection.execute(program.followup).fetchone() if program.followup is not None else None
        finally:
            connection.close()
        if count:
            self._rows = int(row[0])
        return row, extra

    def _failed(self, exc: Exception, budget: int) -> ServerError:
        """The task failure of a query that raised: ``TooExpensive`` when it ran out of memory or disk."""
        if isinstance(exc, (self._out_of_memory, MemoryError)):
            limits = self.bounds(budget)
            return TooExpensive(
                f"the query needs more memory than this server lets one request use ({mib(limits['memory_limit'])} "
                f"of memory and {mib(limits['max_temp_directory_size'])} of temporary disk space; config "
                "limits.memory_bytes): ask for fewer or simpler results per request, or filter the rows first; "
                "the server's owner can raise the limit"
            )
        return _query_failed(exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source})"


class _Files(SQLFragment):
    """Files DuckDB reads with ``reader``: a path, a glob, or a list of them."""

    reader: ClassVar[str]
    counts_rows: ClassVar[bool]  # whether rows are counted when created, unless ``count_rows`` says

    def __init__(self, path: "str | Path | Sequence[str | Path]", *, settings: Mapping[str, Any] | None = None,
                 count_rows: bool | None = None, **options: Any) -> None:
        self.path = path
        super().__init__(f"{self.reader}({_paths(path)}{_options(options)})", settings=settings,
                         count_rows=self.counts_rows if count_rows is None else count_rows, files=_patterns(path))


class Parquet(_Files):
    """Parquet files: a path, a glob such as ``"data/*.parquet"``, or a list of them.

    ``options`` go to DuckDB's ``read_parquet`` (e.g. ``union_by_name=True``);
    ``count_rows=False`` skips counting the rows when created (cheap for Parquet).
    """

    reader = "read_parquet"
    counts_rows = True
    ordinal = "struct_pack(f := filename, r := file_row_number)"  # DuckDB's virtual columns of Parquet files
    #: The rows' order for the ``first``/``last`` of a table: files in the order given (a glob's sorted), then
    #: rows; one integer, which a per-person group-by keeps per person far cheaper than a file's name.
    table_order = "((CAST(file_index AS BIGINT) << 40) + file_row_number)"


class CSV(_Files):
    """CSV files: a path, a glob such as ``"data/*.csv"``, or a list of them.

    ``options`` go to DuckDB's ``read_csv`` (e.g. ``delim=";"``, ``nullstr="NA"``);
    by default DuckDB detects the dialect, the header and the column types.
    The rows are counted by the first query (``count_rows=True``: when
    created, a full scan).
    """

    reader = "read_csv"
    counts_rows = False


class DuckDB(SQLFragment):
    """A table of a DuckDB database file, opened read-only: ``DuckDB("registry.duckdb", table="registry")``."""

    ordinal = "rowid"

    def __init__(self, path: "str | Path", table: str, *, schema: str | None = None,
                 settings: Mapping[str, Any] | None = None) -> None:
        self.path, self.table = path, table
        name = quote_identifier(table) if schema is None else f"{quote_identifier(schema)}.{quote_identifier(table)}"
        super().__init__(name, database=str(path), read_only=True, settings=settings)


def disclosure_needs(config: Config) -> Needs | None:
    """What the config's policies ask of a result's disclosure (None: nothing, and none is compiled).

    Policies that only look at queries or numbers (caches, caps, budgets,
    rounding) need nothing; Anonymity needs the counts and the
    singling-out analysis for its largest ``k``, Dominance the largest
    contributions; anything else (Noise, a custom policy) gets all of it.
    """
    from ..privacy.limits import CacheLimit, ComplexityCap
    from ..privacy.noise import Budget
    from ..privacy.release import Coarsening, Saturation
    from ..privacy.snapshot import Snapshot
    from ..privacy.threshold import Anonymity, Dominance

    quiet = (CacheLimit, ComplexityCap, Budget, Coarsening, Saturation, Snapshot)
    policies = [p for p in (getattr(p, "policy", p) for p in config.privacy) if not isinstance(p, quiet)]
    if not policies:
        return None
    other = any(not isinstance(p, (Anonymity, Dominance)) for p in policies)
    return Needs(
        judge=other or any(isinstance(p, Anonymity) for p in policies),
        contributions=other or any(isinstance(p, Dominance) for p in policies),
        k=max([5, *(p.k for p in policies if isinstance(p, Anonymity))]),
        top=max([10, *(p.n for p in policies if isinstance(p, Dominance))]),
    )


def _query_failed(exc: Exception) -> TaskFailed:
    """A data-free message: DuckDB's own messages may quote values, ours (``error(...)``) do not."""
    text = str(exc)
    if MARKER in text:
        return TaskFailed(text[text.index(MARKER) + len(MARKER):].split("\n")[0][:300])
    kind = type(exc).__name__
    hint = ("the expression is too large or too deep for DuckDB" if kind in ("BinderException", "ParserException")
            else "for example an integer overflow or a value that cannot be converted")
    return TaskFailed(f"the query failed in DuckDB ({kind}): {hint}")


def _spill_directory(database: str) -> str:
    """Where DuckDB spills what does not fit in memory: a directory of this process, made at the first spill.

    A database file opened twice in one process is one DuckDB database, which must be opened with the
    same settings both times: its directory is named after the file. Files (``:memory:``) get one each.
    """
    if database == ":memory:":
        key = f"m{next(_SPILLS)}"
    else:
        key = hashlib.blake2b(os.path.abspath(database).encode(), digest_size=6).hexdigest()
    return os.path.join(tempfile.gettempdir(), f"fedmed-duckdb-{os.getpid()}-{key}")


_SPILLS = itertools.count()

#: A size as DuckDB writes a setting (``"953.6 MiB"``, ``"2.0 GiB"``, ``"100 bytes"``).
_SIZE = re.compile(r"\s*([0-9.]+)\s*(bytes?|[KMGTP]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "BYTE": 1, "BYTES": 1,
          **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGTP")},
          **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGTP")}}


def _setting_bytes(connection: Any, name: str) -> int | None:
    """A size setting of ``connection``'s database in bytes, as DuckDB reports it (None if it reports none)."""
    text = str(connection.execute("SELECT current_setting(?)", [name]).fetchone()[0])
    match = _SIZE.fullmatch(text)
    if match is None:
        return None
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])


def _paths(path: "str | Path | Sequence[str | Path]") -> str:
    if isinstance(path, (str, Path)):
        return quote_string(str(path))
    paths = [str(p) for p in path]
    if not paths:
        raise ValueError("no files given")
    return "[" + ", ".join(quote_string(p) for p in paths) + "]"


def _patterns(path: "str | Path | Sequence[str | Path]") -> list[str]:
    return [str(path)] if isinstance(path, (str, Path)) else [str(p) for p in path]


def _fingerprint(patterns: Sequence[str]) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of every local file the patterns match (remote URLs are not checked).

    A glob and a stat per file per query: milliseconds, against a scan of the files.
    """
    found = []
    for pattern in patterns:
        if "://" in pattern:
            continue
        for name in sorted(glob.glob(pattern, recursive=True)):
            try:
                info = os.stat(name)
            except OSError:  # removed between the glob and the stat: changed
                continue
            found.append((name, info.st_size, info.st_mtime_ns))
    return tuple(found)


def _options(options: Mapping[str, Any]) -> str:
    parts = []
    for key, value in options.items():
        if not key.isidentifier():
            raise ValueError(f"not an option name: {key!r}")
        parts.append(f", {key} = {_option_value(value)}")
    return "".join(parts)


def _option_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return quote_string(str(value))
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{quote_string(str(k))}: {_option_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_option_value(v) for v in value) + "]"
    raise ValueError(f"cannot pass a {type(value).__name__} as a DuckDB option")


__all__ = ["SQLFragment", "Parquet", "CSV", "DuckDB", "require_duckdb", "disclosure_needs"]
