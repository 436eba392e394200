"""The user-facing lazy objects: ``FedData`` (rows on servers) and ``LazyResult`` (values on the client).

Both hold one expression node and build bigger ones through Python
operators; nothing is sent until a value is needed. ``FedData`` stands for
row-level data spread over its sources and has no value on the client;
calling an aggregate on it (``data.sum()``) gives a ``LazyResult``, which
evaluates on ``compute()``, ``float()``, ``int()``, ``bool()``, ``str()`` or
``repr()``. ``compute(a, b, ...)`` evaluates several results in one batch.
"""

from __future__ import annotations

import datetime
import html
import inspect
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .backend.base import Source
from .config import Config, load_config
from .errors import ArgumentError, FedMedError, OperationNotAllowed
from .executor import execute
from .expr.client import Apply, Reduce, Scalar
from .expr.explain import explain_plan
from .expr.node import Node, render_code
from .expr.optimize import OptFlags
from .expr.rowwise import Column, Elementwise, Filter, Fragment, Literal, Map, Param

_OPERATORS = ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and", "or")


class FedData:
    """Row-level data spread over several sources, used like a pandas object.

    Parameters
    ----------
    sources : list of Source
        ``fm.Remote``, ``fm.Simulation`` or ``fm.Local`` fragments, in order.
    config : str, Path, dict or None
        The client's config: which operations ``FedData`` offers and how
        aggregates are reduced. ``None`` uses FedMed's default.
    optimize : bool or OptFlags
        ``False`` runs the naive plan (one request per map task, no merging),
        for comparison; an ``OptFlags`` switches passes one by one.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local({"age": [30, 40]}), fm.Local({"age": [50]})])
    >>> mean = data["age"].sum() / data["age"].len()
    >>> float(mean)
    40.0
    >>> float(data[data["age"] > 35]["age"].min())
    40.0
    """

    __hash__ = None  # type: ignore[assignment]  # == builds an expression, as in pandas

    def __init__(
        self,
        sources: Iterable[Source],
        config: "str | Mapping[str, Any] | Config | None" = None,
        *,
        optimize: "bool | OptFlags" = True,
    ) -> None:
        sources = tuple(sources)
        if not sources:
            raise FedMedError("FedData needs at least one source")
        for s in sources:
            if not isinstance(s, Source):
                raise ArgumentError(f"sources must be fm.Remote, fm.Simulation or fm.Local, not {type(s).__name__}")
        self._sources = sources
        self._config = load_config(config)
        self._flags = optimize if isinstance(optimize, OptFlags) else OptFlags() if optimize else OptFlags.naive()
        self._node: Node = Fragment()

    def _derive(self, node: Node) -> "FedData":
        new = object.__new__(FedData)
        new._sources, new._config, new._flags, new._node = self._sources, self._config, self._flags, node
        return new

    @property
    def node(self) -> Node:
        """The server-side expression this object stands for."""
        return self._node

    @property
    def sources(self) -> tuple[Source, ...]:
        return self._sources

    @property
    def config(self) -> Config:
        return self._config

    # -- selection -------------------------------------------------------
    def __getitem__(self, key: Any) -> "FedData":
        if isinstance(key, str):
            return self._derive(Column(self._node, key))
        if isinstance(key, FedData):
            return self._derive(Filter(self._node, self._operand(key)))
        select = _hook("select")  # data[["a", "b"]] (fedmed.api.frame)
        if select is not None:
            return select(self, key)
        raise ArgumentError(f"select a column by name or filter rows with a boolean FedData, not {type(key).__name__}")

    def __setitem__(self, key: Any, value: Any) -> None:
        # data["bmi10"] = data["bmi"] / 10: a derived column of this expression; nothing is written on a server
        setitem = _hook("setitem")
        if setitem is None:
            raise ArgumentError("FedData does not support item assignment")
        self._node = setitem(self, key, value)._node

    def __len__(self) -> int:
        # len() must return an int: the rows are counted now (one round), as Dask does
        length = _hook("length")
        if length is None:
            raise ArgumentError("len() of a FedData needs its rows counted: use data.len().compute()")
        return length(self)

    def __iter__(self) -> Any:
        refuse = _hook("refuse")
        if refuse is not None:
            raise refuse(self, "__iter__")
        raise ArgumentError("rows never leave a server: iterate over an aggregate's result instead")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        # np.log(data["bmi"]): numpy's functions become elementwise operations on the servers
        apply = _hook("array_ufunc")
        if apply is None:
            return NotImplemented
        return apply(self, ufunc, method, *inputs, **kwargs)

    # -- operations named in the config ----------------------------------
    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        from .api import lookup, unknown  # here: the api modules build on this one

        config = self._config
        if name not in config.aggregates and name not in config.elementwise:
            # data.describe(), data.mean() of a whole table: pandas' frame methods, per column
            dispatch = _hook("dispatch")
            as_frame = dispatch(self, name) if dispatch is not None else None
            if as_frame is not None:
                return as_frame
        pandas_first = lookup(self, name, overrides_only=True)
        if pandas_first is not None:
            return pandas_first
        if name in config.aggregates:
            fn = config.aggregates[name].map
            return lambda *args, **kwargs: self._aggregate(name, _positional(fn, args, kwargs))
        if name in config.elementwise:
            fn = config.elementwise[name]
            return lambda *args, **kwargs: self._elementwise(name, (self, *_positional(fn, args, kwargs)))
        found = lookup(self, name)
        return found if found is not None else unknown(self, name)

    def _aggregate(self, name: str, args: Sequence[Any]) -> "LazyResult":
        operands = tuple(self._operand(a) for a in args)
        fn = self._config.aggregates[name].reduce
        return LazyResult(Reduce(Map(name, (self._node, *operands)), self._sources, fn), self._flags)

    def _elementwise(self, op: str, args: Sequence[Any]) -> "FedData":
        if op not in self._config.elementwise:
            raise OperationNotAllowed(f"the config {self._config.origin} does not offer {op!r}", operation=op)
        return self._derive(Elementwise(op, tuple(self._operand(a) for a in args)))

    def _operand(self, value: Any) -> Node:
        if isinstance(value, FedData):
            if value._sources != self._sources:
                raise FedMedError("cannot combine rows of FedData objects built on different sources")
            return value._node
        if isinstance(value, LazyResult):
            return Param(value.node)
        if isinstance(value, (datetime.date, np.datetime64)):  # pd.Timestamp too: read as a date on the server
            return Elementwise("to_datetime", (Literal(_iso_date(value)),))
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim == 1):
            return Literal([_plain(v) for v in value])
        if value is None or isinstance(value, (bool, int, float, str, np.generic)):
            return Literal(_plain(value))
        raise ArgumentError(f"cannot use a {type(value).__name__} in a federated expression")

    def _binop(self, op: str, other: Any, reflected: bool = False) -> "FedData":
        try:
            self._operand(other)
        except TypeError:
            return NotImplemented
        return self._elementwise(op, (other, self) if reflected else (self, other))

    def __neg__(self) -> "FedData":
        return self._elementwise("neg", (self,))

    def __invert__(self) -> "FedData":
        return self._elementwise("invert", (self,))

    def __abs__(self) -> "FedData":
        return self._elementwise("abs", (self,))

    def __round__(self, decimals: int = 0) -> "FedData":
        return self._elementwise("round", (self, decimals))

    def __bool__(self) -> bool:
        raise ArgumentError(
            "the truth value of federated rows is not known on the client; "
            "use & | ~ to combine conditions, or an aggregate such as .sum()"
        )

    def __repr__(self) -> str:
        servers = ", ".join(dict.fromkeys(s.server for s in self._sources))
        count = len(self._sources)
        return f"FedData({render_code(self._node)} over {count} source{'' if count == 1 else 's'}: {servers})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s.server)}</td><td><code>{html.escape(s.fragment)}</code></td></tr>"
            for s in self._sources
        )
        return (
            f"<div><b>FedData</b> <code>{html.escape(render_code(self._node))}</code> "
            f"(rows stay on the servers; columns are known only to them)"
            f"<table><tr><th>server</th><th>fragment</th></tr>{rows}</table></div>"
        )


class LazyResult:
    """A value the client will compute: an aggregate, or arithmetic on aggregates.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local([1, 2, 3]), fm.Local([4])])
    >>> total = data.sum()
    >>> (total / data.len()).compute()
    2.5
    >>> print(total + 1)
    11
    """

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, node: Node, flags: OptFlags = OptFlags()) -> None:
        self._node = node
        self._flags = flags
        self._last: tuple[Any, ...] = ()  # (value,) once computed: shown by notebooks

    @property
    def node(self) -> Node:
        """The client-side expression this result stands for."""
        return self._node

    def compute(self, on_suppressed: str = "raise", on_error: str = "raise") -> Any:
        """Evaluate now and return the value (``on_suppressed`` and ``on_error`` as in :func:`compute`)."""
        value = execute([self._node], self._flags, on_suppressed, on_error)[0]
        self._last = (value,)
        return value

    def explain(self) -> str:
        """The plan: rounds, per server the map tasks, and the client reduce graph (nothing is sent)."""
        return explain_plan([self._node], self._flags)

    def _binop(self, op: str, other: Any, reflected: bool = False) -> "LazyResult":
        if isinstance(other, FedData):
            return NotImplemented
        node = other.node if isinstance(other, LazyResult) else Scalar(_plain(other))
        args = (node, self._node) if reflected else (self._node, node)
        return LazyResult(Apply(op, args), self._flags)

    def __getitem__(self, key: Any) -> "LazyResult":
        return LazyResult(Apply("getitem", (self._node, Scalar(key))), self._flags)

    def __getattr__(self, name: str) -> "LazyResult":
        # lazy attribute access: float(fm.stats.ttest_ind(a, b).pvalue)
        if name.startswith("_"):
            raise AttributeError(name)
        return LazyResult(Apply("getattr", (self._node, Scalar(name))), self._flags)

    def __call__(self, *args: Any, **kwargs: Any) -> "LazyResult":
        # a method of the value, lazily: data["smoker"].value_counts().sort_index(), result.round(2)
        call = Apply("call", (self._node, Scalar(tuple(_plain(a) for a in args)), Scalar(dict(kwargs))))
        return LazyResult(call, self._flags)

    def __neg__(self) -> "LazyResult":
        return LazyResult(Apply("neg", (self._node,)), self._flags)

    def __abs__(self) -> "LazyResult":
        return LazyResult(Apply("abs", (self._node,)), self._flags)

    def __float__(self) -> float:
        return float(self.compute())

    def __int__(self) -> int:
        return int(self.compute())

    def __bool__(self) -> bool:
        return bool(self.compute())

    def __str__(self) -> str:
        return str(self.compute())

    def __repr__(self) -> str:
        return repr(self.compute())

    def __format__(self, spec: str) -> str:
        return format(self.compute(), spec)

    def _repr_html_(self) -> str:
        """In a notebook: the value once computed (tables as tables), else the plan, without sending anything."""
        plan = self.explain()._repr_html_()
        if not self._last:
            return f"<div><b>not computed yet</b>: call <code>.compute()</code>. Plan:{plan}</div>"
        value = self._last[0]
        if isinstance(value, pd.Series):
            value = value.to_frame(name="value")  # a Series has no HTML form of its own
        shown = value._repr_html_() if hasattr(value, "_repr_html_") else f"<pre>{html.escape(repr(value))}</pre>"
        return f"<div>{shown}<details><summary>plan</summary>{plan}</details></div>"


def _install_operators() -> None:
    # One helper per class builds every operator, so the two classes cannot drift apart.
    for cls in (FedData, LazyResult):
        for op in _OPERATORS:
            setattr(cls, f"__{op}__", lambda self, other, op=op: self._binop(op, other))
            if op not in ("eq", "ne", "lt", "le", "gt", "ge"):
                setattr(cls, f"__r{op}__", lambda self, other, op=op: self._binop(op, other, True))


_install_operators()


def _hook(name: str) -> Callable[..., Any] | None:
    from .api import hook  # here: the api modules build on this one

    return hook(name)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _iso_date(value: Any) -> str:
    """A date constant as the ISO text ``to_datetime`` reads (in UTC when it has a time zone)."""
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ArgumentError("a missing date (NaT) equals nothing: use .isna() to find missing dates")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.isoformat()


def _positional(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Arguments after the data, all positional with defaults filled in, so equal calls get equal keys."""
    if not kwargs:
        return tuple(args)
    try:
        bound = inspect.signature(fn).bind(None, *args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{getattr(fn, '__name__', fn)}: {exc}") from None
    bound.apply_defaults()
    return tuple(bound.args[1:])


def compute(*results: Any, on_suppressed: str = "raise", on_error: str = "raise") -> tuple[Any, ...]:
    """Evaluate several results in one batch: shared work is done once, one request per server per round.

    When a server's privacy policy suppresses a result, ``on_suppressed="raise"``
    (the default) raises ``fm.PrivacyError`` naming the server, fragment,
    operation and policy; ``"skip"`` pools only the servers that answered and
    warns (``fm.PrivacyWarning``) which were left out; ``"keep"`` hands each
    refused partial to its reduce as the ``fm.PrivacyError`` itself, for a
    reduce written to take, per server, the answers it was given (a
    statistic asking several alternatives in one round). Likewise a server that
    fails or cannot be reached raises by default (``fm.ServerUnavailable``...),
    and ``on_error="skip"`` pools the others with an ``fm.ServerWarning``. A
    result that no server answered always raises.

    Examples
    --------
    >>> import fedmed as fm
    >>> data = fm.FedData([fm.Local([1, 2, 3]), fm.Local([4, 5])])
    >>> fm.compute(data.sum(), data.len(), data.sum() / data.len())
    (15, 5, 3.0)
    """
    nodes, flags = _outputs(results)
    return tuple(execute(nodes, flags, on_suppressed, on_error))


def explain(*results: Any) -> str:
    """The plan of ``compute(*results)`` as text, without sending anything."""
    nodes, flags = _outputs(results)
    return explain_plan(nodes, flags)


def _outputs(results: Sequence[Any]) -> tuple[list[Node], OptFlags]:
    if any(isinstance(r, FedData) for r in results):
        raise ArgumentError("FedData has no value on the client; compute an aggregate of it, e.g. data.sum()")
    for r in results:
        if not isinstance(r, LazyResult) and callable(getattr(r, "compute", None)):
            # an iterative model (logit, poisson) runs its own rounds
            raise ArgumentError(f"{type(r).__name__} cannot join a batch: call its .compute()")
    flags = next((r._flags for r in results if isinstance(r, LazyResult)), OptFlags())
    return [r.node if isinstance(r, LazyResult) else Scalar(_plain(r)) for r in results], flags
