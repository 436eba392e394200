"""Differential privacy: noise on released numbers, and a budget per client.

``Noise`` releases every number through an OpenDP measurement, never
through hand-written samplers: numpy's floating-point Laplace leaks the
input through the low-order bits of its output (Mironov 2012), and OpenDP's
samplers are exact. Counts (``len``, ``count``, histogram bins) get integer
(discrete) Laplace or Gaussian noise; a bounded sum (``sum``, ``sqsum``) is
computed exactly on a power-of-two grid and released through OpenDP's float
mechanism on that grid, so its output is a multiple of the grid step
whatever the input. OpenDP finds each noise scale for the target epsilon
(and delta) at the aggregate's sensitivity, and its privacy map confirms it.

``Budget`` keeps the privacy parameters of every release of an account and
composes them with OpenDP (basic composition) to refuse the release that
would exceed the account's epsilon or delta: with Noise, the one
combination here with a formal guarantee.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import threading
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..expr.rowwise import Column
from ..ops.columns import COLUMNS
from .base import Policy, Task
from .shapes import map_numbers

COUNTS = {"len", "count"}
#: Tables whose labels are fixed by the query (bins): their counts can be noised.
CELLS = {"histogram"}
#: Tables whose labels are the data's own values: noise on the counts would not hide them.
LABELLED = {"value_counts", "crosstab", "set", "unique"}
BOUNDED_SUMS = {"sum", "sqsum"}
#: A bounded sum is released on the grid 2**k with k = floor(log2(sensitivity)) - GRID_BITS:
#: about a millionth of the sensitivity, far below the noise, and coarse enough that sums of
#: up to 2**32 rows are exact in float64.
GRID_BITS = 20
#: Relative slack when comparing a composed total with the allowance: OpenDP rounds every
#: sum of privacy parameters up, so ten releases of 0.1 compose to 1.0000000000000007.
ROUNDING = 1e-9


@lru_cache(maxsize=None)
def _opendp() -> Any:
    """``opendp.prelude`` with its ``contrib`` features on (imported when first needed: it is slow)."""
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


class Noise(Policy):
    """Noise on every released number.

    Parameters
    ----------
    mode : ``"laplace"`` (epsilon-DP), ``"gaussian"`` ((epsilon, delta)-DP)
        or ``"simple"`` (the original fedmed's: Laplace noise of scale
        ``value``, no guarantee and no budget cost).
    epsilon, delta : privacy parameters of one release.
    bounds : ``[lo, hi]`` for every summed expression, or a mapping from
        column name to ``[lo, hi]`` (key ``"*"`` for the rest). A sum with
        no bounds is refused: its sensitivity would be unknown.
    value, type : the simple mode's noise scale, and ``"int"`` to round.
    seed : simple mode only, for tests. The other modes sample from the
        operating system's CSPRNG through OpenDP, which cannot be seeded:
        they ignore it.

    Examples
    --------
    >>> noise = Noise(mode="laplace", epsilon=0.5, bounds=[0, 120])
    >>> noise.cost, noise.delta_cost
    (0.5, 0.0)
    >>> Noise(mode="gaussian", epsilon=0.5)
    Traceback (most recent call last):
    ...
    ValueError: mode 'gaussian' needs delta in (0, 1)
    """

    def __init__(self, mode: str = "laplace", epsilon: float | None = None, delta: float | None = None,
                 bounds: Any = None, value: float | None = None, type: str = "float", seed: int | None = None) -> None:
        if mode not in ("laplace", "gaussian", "simple"):
            raise ValueError("mode must be 'laplace', 'gaussian' or 'simple'")
        if mode != "simple" and not (epsilon is not None and 0 < epsilon < math.inf):
            raise ValueError(f"mode {mode!r} needs a positive, finite epsilon")
        if mode == "gaussian" and not (delta and 0 < delta < 1):
            raise ValueError("mode 'gaussian' needs delta in (0, 1)")
        if mode == "simple" and (value is None or value < 0):
            raise ValueError("mode 'simple' needs a noise scale 'value' >= 0")
        _check_bounds(bounds)
        self.mode, self.delta, self.bounds, self.value, self.type = mode, delta, bounds, value, type
        self.epsilon = float(epsilon) if mode != "simple" else 0.0  # type: ignore[arg-type]
        self.cost = self.epsilon  # what Budget charges per release
        self.delta_cost = float(delta) if mode == "gaussian" else 0.0  # type: ignore[arg-type]
        self._rng = np.random.default_rng(seed)  # simple mode only
        self._measurements: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def admit(self, task: Task) -> None:
        if self.mode == "simple":
            return
        task.noised = True  # threshold policies then judge the noisy value, not the exact one
        self._check(task)

    def apply(self, task: Task, value: Any) -> Any:
        if self.mode == "simple":
            return self._perturb(task, value, self.value)  # type: ignore[arg-type]
        if isinstance(value, dict) and COLUMNS in value:
            raise task.refuse(self, "noise on a whole table would spend one epsilon per column; ask column by column")
        self._check(task)
        if getattr(task.disclosure, "derived_rows", False):
            # the guarantee is about one row of a fragment; a join copies a person into many rows
            raise task.refuse(self, "noise here is calibrated to one row of a fragment, and a joined or derived "
                              "table holds a person in many rows; ask it of the fragment itself")
        if task.op in COUNTS:
            return self._release("count", 1, self._whole(task, value))
        if task.op in CELLS:
            counts = [self._whole(task, c) for c in value["counts"]]
            return {**value, "counts": self._release("cells", 1, counts) if counts else counts}
        return self._sum(task)

    def _release(self, space: str, sensitivity: float, value: Any, grid: int | None = None) -> Any:
        """``value`` through the OpenDP measurement of ``space`` at ``sensitivity``.

        ``space`` is ``"count"`` (one integer, absolute distance),
        ``"cells"`` (a list of integers: L1 distance for Laplace, L2 for
        Gaussian; one row changes one cell by 1) or ``"sum"`` (one float on
        the grid ``2**grid``).
        """
        return self._measurement(space, sensitivity, grid)(value)

    def _check(self, task: Task) -> None:
        """Refuse, before anything is computed, what noise cannot protect."""
        op = task.op
        if op in LABELLED:
            raise task.refuse(self, f"{op} releases the data's own values as labels, which noise cannot hide; "
                              "use a histogram with fixed bins")
        if op in BOUNDED_SUMS:
            self._bounds(task)
        elif op not in COUNTS and op not in CELLS:
            raise task.refuse(self, f"Noise cannot protect {op!r}: its sensitivity is unbounded; use sum and count")

    def _bounds(self, task: Task) -> tuple[float, float]:
        bounds = self.bounds
        if isinstance(bounds, Mapping):
            column = task.node.args[0]  # type: ignore[attr-defined]
            name = column.name if isinstance(column, Column) else None
            bounds = bounds.get(name, bounds.get("*"))
        if bounds is None:
            raise task.refuse(self, "a noisy sum needs declared bounds for its values")
        low, high = map(float, bounds)
        return low, high

    def _whole(self, task: Task, value: Any) -> int:
        """A count as an integer (the integer mechanisms take nothing else)."""
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        if not number or not float(value).is_integer():
            raise task.refuse(self, f"Noise expects whole counts from {task.op}, got {value!r}")
        return int(value)

    def _sum(self, task: Task) -> float:
        """The sum of the rows' values clipped to the bounds, computed exactly on the grid, then noised.

        The server's own sum is not used: the clipping must happen row by
        row, on the values the server computed for this task.
        """
        low, high = self._bounds(task)
        if task.disclosure is None:
            raise task.refuse(self, "this fragment cannot show the per-row values a noisy sum must clip")
        terms = _per_row(task.disclosure.inputs[0])
        if terms is None:
            raise task.refuse(self, "a noisy sum needs one number per row")
        terms = np.clip(terms[~np.isnan(terms)], low, high)
        if task.op == "sqsum":
            terms, (low, high) = np.square(terms), _square_range(low, high)
        grid = math.frexp(max(abs(low), abs(high)))[1] - 1 - GRID_BITS
        # values rounded onto the grid sum exactly (integers); the bounds rounded the same way
        # bound them, so one row moves the sum by at most the larger rounded bound
        units = np.rint(np.ldexp(terms, -grid)).astype(np.int64)
        sensitivity = math.ldexp(float(np.abs(np.rint(np.ldexp([low, high], -grid))).max()), grid)
        total = math.ldexp(float(int(units.sum())), grid)
        return float(self._release("sum", sensitivity, total, grid))

    def _measurement(self, space: str, sensitivity: float, grid: int | None) -> Any:
        key = (space, sensitivity, grid)
        with self._lock:
            if key not in self._measurements:
                self._measurements[key] = calibrate(self.mode, space, sensitivity, self.epsilon, self.delta, grid)
            return self._measurements[key]

    def _draw(self, scale: float) -> float:
        with self._lock:
            return float(self._rng.laplace(0.0, scale))

    def _perturb(self, task: Task, value: Any, scale: float) -> Any:
        """Simple mode: numpy Laplace noise of a fixed scale on every number (no guarantee)."""
        whole = self.type == "int"

        def noisy(x: Any) -> Any:
            if isinstance(x, float) and math.isnan(x):
                return x
            out = x + self._draw(scale)
            return int(round(out)) if whole or isinstance(x, int) else out

        return map_numbers(task.op, value, noisy)


def calibrate(mode: str, space: str, sensitivity: float, epsilon: float, delta: float | None,
              grid: int | None = None) -> Any:
    """The OpenDP measurement of one release: the least noise OpenDP proves (epsilon[, delta])-DP.

    OpenDP searches the scale; its privacy map at ``sensitivity`` then
    bounds the loss (it adds one grid step for the rounding of a float
    input onto the grid). Gaussian noise is zCDP in OpenDP, converted to
    (epsilon, delta)-DP by OpenDP's conversion, which holds for any epsilon.

    >>> m = calibrate("laplace", "count", 1, 0.5, None)
    >>> m.map(1) <= 0.5, isinstance(m(10), int)
    (True, True)
    """
    dp = _opendp()
    domain, metric = _space(dp, mode, space)
    if mode == "laplace":
        def make(scale: float) -> Any:
            return dp.m.make_laplace(domain, metric, scale=scale, k=grid)
        d_out: Any = epsilon
    else:
        def make(scale: float) -> Any:
            zcdp = dp.m.make_gaussian(domain, metric, scale=scale, k=grid)
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(zcdp), delta)
        d_out = (epsilon, delta)
    measurement = make(dp.binary_search_param(make, d_in=sensitivity, d_out=d_out, T=float))
    if not measurement.check(sensitivity, d_out):  # never expected: OpenDP's search guarantees it
        raise RuntimeError(f"OpenDP could not calibrate {mode} noise for {space} at sensitivity {sensitivity}")
    return measurement


def _space(dp: Any, mode: str, space: str) -> tuple[Any, Any]:
    if space == "count":
        return dp.atom_domain(T="i64"), dp.absolute_distance(T="i64")
    if space == "cells":
        distance = dp.l1_distance if mode == "laplace" else dp.l2_distance
        return dp.vector_domain(dp.atom_domain(T="i64")), distance(T="i64")
    if space == "sum":
        return dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    raise ValueError(f"unknown space {space!r}")


def _check_bounds(bounds: Any) -> None:
    """Bounds are checked when the config is loaded, not when a sum is first asked."""
    for pair in (bounds.values() if isinstance(bounds, Mapping) else [bounds] if bounds is not None else []):
        try:
            low, high = map(float, pair)
        except (TypeError, ValueError):
            raise ValueError(f"bounds must be [lo, hi] pairs of numbers, got {pair!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low <= high and (low or high)):
            raise ValueError(f"bounds must be finite with lo <= hi and not both 0, got {pair!r}")


def _per_row(values: Any) -> np.ndarray | None:
    """The task's per-row values as floats (NaN for missing), or None when they are not numbers."""
    if isinstance(values, pd.DataFrame):
        return None
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    try:
        return series.to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError):
        return None


def _square_range(low: float, high: float) -> tuple[float, float]:
    """Where the squares of values in [low, high] lie."""
    if low >= 0:
        return low * low, high * high
    if high <= 0:
        return high * high, low * low
    return 0.0, max(low * low, high * high)


class Budget(Policy):
    """Refuse noisy queries once a client has spent ``epsilon`` (and ``delta``).

    The cost of a task is the epsilon (and delta) of the ``Noise`` policies
    that apply to it; it is charged when the query is admitted, before
    anything is computed, so a task that then fails or is refused by
    another policy has still cost it (conservative). Repeated questions
    answered from a ``CacheLimit`` cost nothing.

    Each account keeps the list of its releases' ``(epsilon, delta)``
    (Laplace releases are pure: delta 0; a Gaussian release's pair is the
    one OpenDP's zCDP conversion proves for its noise). OpenDP composes
    them by basic composition: releases ``(e_i, d_i)`` together are
    ``(sum e_i, sum d_i)``-DP, which holds when each query and its
    parameters are chosen after seeing earlier answers, and when the
    budget decides when to stop (a privacy filter: Rogers, Roth, Ullman and
    Vadhan 2016; Whitehouse, Ramdas, Rogers and Wu 2023). A task is
    refused when the composed total would exceed ``epsilon`` or ``delta``
    (up to a relative 1e-9 of rounding). ``delta`` is 0 by default, so a
    ``Budget`` admits gaussian noise only when the server owner sets one.

    ``per="client"`` keys the account by the client's identity (its token
    name when authentication is on, else its address); ``per="server"``
    keeps one account for everyone. With ``state_file`` the releases are
    saved after every charge (atomically) and survive a restart; when the
    file cannot be written the task is refused and nothing is charged.

    Examples
    --------
    >>> from fedmed.expr.rowwise import Column, Fragment, Map
    >>> budget = Budget(epsilon=1.0)
    >>> node = Map("len", (Column(Fragment(), "age"),))
    >>> for _ in range(4):
    ...     budget.admit(Task("cohort", 1, node, client="alice", epsilon=0.25))
    >>> budget.spent("alice")
    1.0
    >>> budget.admit(Task("cohort", 1, node, client="alice", epsilon=0.25))
    Traceback (most recent call last):
    ...
    fedmed.errors.PrivacyError: privacy budget exhausted for 'alice': spent epsilon 1 of 1; this query needs ...
    """

    def __init__(self, epsilon: float = 1.0, per: str = "client", state_file: str | None = None,
                 delta: float = 0.0) -> None:
        if per not in ("client", "server"):
            raise ValueError("per must be 'client' or 'server'")
        if not 0 <= delta < 1:
            raise ValueError("delta must be in [0, 1)")
        if not 0 <= epsilon < math.inf:
            raise ValueError("epsilon must be finite and >= 0")
        self.epsilon, self.delta, self.per, self.state_file = float(epsilon), float(delta), per, state_file
        self._releases: dict[str, list[tuple[float, float]]] = {}
        self._totals: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        if state_file and os.path.exists(state_file):
            self._releases = _read_state(state_file)
            self._totals = {account: compose(releases) for account, releases in self._releases.items()}

    def spent(self, client: str) -> float:
        """The epsilon the account of ``client`` has spent, composed by OpenDP."""
        return self._totals.get(self._account(client), (0.0, 0.0))[0]

    def spent_delta(self, client: str) -> float:
        """The delta the account of ``client`` has spent."""
        return self._totals.get(self._account(client), (0.0, 0.0))[1]

    def _account(self, client: str) -> str:
        return client if self.per == "client" else "*"

    def admit(self, task: Task) -> None:
        if task.epsilon <= 0 and task.delta <= 0:
            return
        if task.epsilon <= 0:
            raise task.refuse(self, "a release with a delta but no epsilon cannot be accounted")
        account = self._account(task.client)
        with self._lock:
            before = self._releases.get(account, [])
            releases = [*before, (task.epsilon, task.delta)]
            total = compose(releases)
            if total[0] > self.epsilon * (1 + ROUNDING) or total[1] > self.delta * (1 + ROUNDING):
                raise task.refuse(self, self._exhausted(task, account))
            self._releases[account], self._totals[account] = releases, total
            try:
                self._save()
            except OSError as exc:
                # nothing has been computed yet: undo the charge and refuse (fail closed)
                self._releases[account], self._totals[account] = before, compose(before)
                raise task.refuse(self, f"the privacy budget cannot be saved on this server "
                                  f"({exc.strerror or type(exc).__name__}); noisy queries are refused until it can be")

    def _exhausted(self, task: Task, account: str) -> str:
        spent, spent_delta = self._totals.get(account, (0.0, 0.0))
        text = f"privacy budget exhausted for {task.client!r}: spent epsilon {spent:g} of {self.epsilon:g}"
        if self.delta or task.delta:
            text += f" and delta {spent_delta:g} of {self.delta:g}"
        text += f"; this query needs epsilon {task.epsilon:g}"
        return text + (f" and delta {task.delta:g}" if task.delta else "")

    def _save(self) -> None:
        """Write every account's releases and totals; atomic, and no temporary file survives a failure."""
        if not self.state_file:
            return
        state = {
            "releases": {a: [list(r) for r in rs] for a, rs in self._releases.items() if rs},
            "epsilon": {a: t[0] for a, t in self._totals.items() if t[0]},
            "delta": {a: t[1] for a, t in self._totals.items() if t[1]},
        }
        folder = os.path.dirname(os.path.abspath(self.state_file))
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".budget-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.state_file)  # a crash never leaves half a file
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def describe(self) -> str:
        delta = f", delta={self.delta!r}" if self.delta else ""
        return f"Budget(epsilon={self.epsilon!r}{delta}, per={self.per!r})"


def compose(releases: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The (epsilon, delta) of ``releases`` together, by OpenDP's basic composition.

    >>> compose([(0.25, 0.0), (0.5, 1e-6)])
    (0.75, 1e-06)
    """
    if not releases:
        return 0.0, 0.0
    dp = _opendp()
    epsilon, delta = dp.c.make_composition([_standin(e, d) for e, d in releases]).map(1.0)
    return float(epsilon), float(delta)


@lru_cache(maxsize=1024)
def _standin(epsilon: float, delta: float) -> Any:
    """An OpenDP measurement whose privacy loss at one row is exactly ``(epsilon, delta)``.

    The canonical noise mechanism (Awan and Vadhan 2023) is calibrated from
    its privacy parameters, so its privacy map returns them unchanged: it
    stands for a past release in the composition. Its map is cheap, unlike
    a Gaussian's zCDP conversion, so an account of thousands of releases
    composes in milliseconds. (OpenDP's privacy filter would do the same
    check, but it crashes the interpreter on these measurements in 0.16.)
    """
    dp = _opendp()
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    return dp.m.make_canonical_noise(*space, d_in=1.0, d_out=(float(epsilon), float(delta)))


def _read_state(path: str) -> dict[str, list[tuple[float, float]]]:
    """Releases by account, from this version's file or from the two older forms.

    An older file keeps only each account's total: it becomes one release
    of that total (basic composition adds, so the total bounds the past).
    """
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if isinstance(saved.get("releases"), dict):
        return {str(a): [(float(e), float(d)) for e, d in rs] for a, rs in saved["releases"].items()}
    if isinstance(saved.get("epsilon"), dict):  # epsilon and delta totals by account
        deltas = saved.get("delta", {})
        totals = {str(a): (float(e), float(deltas.get(a, 0.0))) for a, e in saved["epsilon"].items()}
    else:  # written before delta was accounted: epsilon by account
        totals = {str(a): (float(e), 0.0) for a, e in saved.items()}
    return {a: [t] for a, t in totals.items() if t[0] > 0}
