"""pandas' names on ``FedData``: one table from method name to federated plan.

``FedData.__getattr__`` looks a name up here after the operations the
config offers (``data.sum()``, ``data.histogram(...)`` keep meaning what
the config says). Each entry is a function ``fn(data, *args, **kwargs)``
that builds the plan from aggregates and client formulas, as pandas'
method of the same name would compute it; ``kind="property"`` entries are
read as attributes (``data.columns``). The tables live in modules by what
they hold: column methods (``series``), whole-frame methods and selection
(``frame``), group-bys (``groupby``), tables derived on the servers (``tables``: merge,
sort_values, concat, named aggregation), the schema and the refusals of
row-level calls (``schema``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

#: The modules whose ``METHODS`` tables make up the registry, in lookup order.
MODULES = ("series", "frame", "groupby", "tables", "schema")


@dataclass(frozen=True)
class Method:
    """One pandas name: the function that plans it, and whether it is read as a property."""

    fn: Callable[..., Any]
    kind: str = "method"  # "method" or "property"
    #: Taken before a config operation of the same name (``value_counts(normalize=True)``, ``min()``
    #: as pandas): the entry must give what the operation gives when called as the operation is.
    override: bool = False


def table() -> dict[str, Method]:
    """Every registered name, from the modules of ``MODULES`` that exist (imported on first use)."""
    global _TABLE
    if _TABLE is None:
        merged: dict[str, Method] = {}
        for name in MODULES:
            try:
                module = importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{name}":
                    raise
                continue
            for key, method in getattr(module, "METHODS", {}).items():
                if key in merged:
                    raise RuntimeError(f"fedmed.api: {key!r} is defined twice")
                merged[key] = method
        _TABLE = merged
    return _TABLE


_TABLE: dict[str, Method] | None = None


def lookup(data: Any, name: str, overrides_only: bool = False) -> Any:
    """``data.name`` from the table: a bound method, a property's value, or None when the name is not
    there (or, with ``overrides_only``, not marked ``override``)."""
    method = table().get(name)
    if method is None or (overrides_only and not method.override):
        return None
    if method.kind == "property":
        return method.fn(data)
    return lambda *args, **kwargs: method.fn(data, *args, **kwargs)


def unknown(data: Any, name: str) -> Any:
    """``data.name`` for a name that is neither a config operation nor in the table: raises, or returns.

    ``schema.unknown`` (when present) decides: a column read as an attribute (``data.age``, returned),
    a refused row-level call, or an error listing close matches. Without it, an ``AttributeError``.
    """
    try:
        from .schema import unknown as by_schema
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.schema":
            raise
        by_schema = None
    if by_schema is not None:
        return by_schema(data, name)
    config = data.config
    offered = sorted([*config.aggregates, *config.elementwise, *table()])
    raise AttributeError(f"FedData has no operation {name!r}; the config {config.origin} offers {offered}")


def hook(name: str) -> Callable[..., Any] | None:
    """A module-level function ``name`` of the first module of ``MODULES`` defining it: how ``FedData``
    reaches what has no method name (``data[["a", "b"]]``, ``data["x"] = ...``, ``len(data)``,
    ``np.log(data["x"])``, a refused row-level call)."""
    for module_name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module_name}":
                raise
            continue
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None
