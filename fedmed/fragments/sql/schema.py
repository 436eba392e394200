"""The pandas dtype a column would have (``fedmed.api.schema``), from its DuckDB type or its kind."""

from __future__ import annotations

from .values import BOOL, DELTA, FLOAT, INT, OTHER, STR, TIME, Col


#: pandas' dtype of a source column by its DuckDB type: what ``pd.read_parquet`` gives for the same
#: Parquet column, so that a DuckDB fragment and a pandas fragment of the same data answer alike.
PANDAS_DTYPES = {
    "BIGINT": "int64", "INTEGER": "int32", "SMALLINT": "int16", "TINYINT": "int8",
    "UBIGINT": "uint64", "UINTEGER": "uint32", "USMALLINT": "uint16", "UTINYINT": "uint8",
    "DOUBLE": "float64", "FLOAT": "float32", "REAL": "float32", "BOOLEAN": "bool", "VARCHAR": "str",
    "TIMESTAMP": "datetime64[us]", "TIMESTAMP_NS": "datetime64[ns]", "TIMESTAMP_MS": "datetime64[ms]",
    "TIMESTAMP_S": "datetime64[s]", "NULL": "float64", '"NULL"': "float64",
}
#: pandas' dtype of a computed column by its kind: (plain, nullable extension dtype).
KIND_DTYPES = {INT: ("int64", "Int64"), FLOAT: ("float64", "Float64"), BOOL: ("bool", "boolean"),
               STR: ("str", "string"), OTHER: ("object", "object"),
               TIME: ("datetime64[us]", "datetime64[us]"), DELTA: ("timedelta64[us]", "timedelta64[us]")}


def pandas_dtype(x: Col, sql_type: str | None) -> str:
    """The dtype pandas would show for ``x``: by its DuckDB type for a source column (``sql_type``),
    by its kind for a computed one. DuckDB types no nullability, so a Parquet column written from
    pandas' ``Int64`` answers ``int64``."""
    if sql_type is not None:
        t = sql_type.upper()
        if t.startswith("ENUM"):
            return "category"
        if t.startswith("DECIMAL") or t == "HUGEINT" or t == "UHUGEINT":
            return "float64"  # as DuckDB hands them to pandas
        return PANDAS_DTYPES.get(t, "object")
    plain, nullable = KIND_DTYPES[x.kind]
    return nullable if x.nullable else plain
