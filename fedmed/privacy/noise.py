"""Differential privacy: noise on released numbers, and a budget per client.

``Noise`` adds Laplace or Gaussian noise calibrated to each aggregate's
sensitivity (the most one person can change it). For sums the sensitivity
is only known if values are bounded: the server clips the values to the
declared ``bounds`` before summing. Sensitivities (one person added or
removed): ``len``/``count`` 1; ``sum`` max(|lo|, |hi|); ``sqsum``
max(lo², hi²); each cell of ``value_counts``, ``histogram`` and
``crosstab`` 1 (a person is in one cell). A mean is released as a noisy sum
over a noisy count (post-processing costs nothing). Aggregates whose
sensitivity is unbounded (min, max, moments, regression blocks...) are
refused under ``Noise``.

``Budget`` accounts the epsilon each client has spent on noisy releases and
refuses further noisy queries once it is gone: with Noise, the one
combination here with a formal guarantee (sequential composition: the
total epsilon spent bounds what a client can learn about anyone).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..expr.rowwise import Column
from .base import Policy, Task
from ..ops.columns import COLUMNS
from .shapes import map_numbers

COUNTS = {"len", "count"}
#: Tables whose labels are fixed by the query (bins): their counts can be noised.
CELLS = {"histogram"}
#: Tables whose labels are the data's own values: noise on the counts would not hide them.
LABELLED = {"value_counts", "crosstab", "set", "unique"}
BOUNDED_SUMS = {"sum", "sqsum"}


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
    seed : for tests only; a server must not fix it.
    """

    def __init__(self, mode: str = "laplace", epsilon: float | None = None, delta: float | None = None,
                 bounds: Any = None, value: float | None = None, type: str = "float", seed: int | None = None) -> None:
        if mode not in ("laplace", "gaussian", "simple"):
            raise ValueError("mode must be 'laplace', 'gaussian' or 'simple'")
        if mode != "simple" and (epsilon is None or epsilon <= 0):
            raise ValueError(f"mode {mode!r} needs a positive epsilon")
        if mode == "gaussian" and not (delta and 0 < delta < 1):
            raise ValueError("mode 'gaussian' needs delta in (0, 1)")
        if mode == "gaussian" and epsilon >= 1:  # type: ignore[operator]
            # the classical Gaussian mechanism's proof (Dwork and Roth, theorem A.1) needs epsilon < 1
            raise ValueError(f"mode 'gaussian' needs epsilon < 1 (got {epsilon}): its noise bound is proven "
                             "only there; use mode 'laplace' for larger epsilon")
        if mode == "simple" and (value is None or value < 0):
            raise ValueError("mode 'simple' needs a noise scale 'value' >= 0")
        self.mode, self.delta, self.bounds, self.value, self.type = mode, delta, bounds, value, type
        self.epsilon = float(epsilon) if mode != "simple" else 0.0  # type: ignore[arg-type]
        self.cost = self.epsilon  # what Budget charges per release
        self.delta_cost = float(delta) if mode == "gaussian" else 0.0  # type: ignore[arg-type]
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def apply(self, task: Task, value: Any) -> Any:
        if self.mode == "simple":
            return self._perturb(task, value, self.value)  # type: ignore[arg-type]
        op = task.op
        if isinstance(value, dict) and COLUMNS in value:
            raise task.refuse(self, "noise on a whole table would spend one epsilon per column; ask column by column")
        if op in LABELLED:
            raise task.refuse(self, f"{op} releases the data's own values as labels, which noise cannot hide; "
                              "use a histogram with fixed bins")
        if op in COUNTS or op in CELLS:
            return self._perturb(task, value, self._scale(1.0))
        if op in BOUNDED_SUMS:
            low, high = self._bounds(task)
            terms = pd.Series(task.disclosure.inputs[0]).astype(float).clip(low, high)
            if op == "sqsum":
                terms, sensitivity = terms**2, max(low * low, high * high)
            else:
                sensitivity = max(abs(low), abs(high))
            return float(terms.sum()) + self._draw(self._scale(sensitivity))
        raise task.refuse(self, f"Noise cannot protect {op!r}: its sensitivity is unbounded; use sum and count")

    def _bounds(self, task: Task) -> tuple[float, float]:
        bounds = self.bounds
        if isinstance(bounds, Mapping):
            column = task.node.args[0]  # type: ignore[attr-defined]
            name = column.name if isinstance(column, Column) else None
            bounds = bounds.get(name, bounds.get("*"))
        if bounds is None or task.disclosure is None:
            raise task.refuse(self, "a noisy sum needs declared bounds for its values")
        low, high = map(float, bounds)
        return low, high

    def _scale(self, sensitivity: float) -> float:
        if self.mode == "laplace":
            return sensitivity / self.epsilon
        return sensitivity * math.sqrt(2 * math.log(1.25 / self.delta)) / self.epsilon  # type: ignore[arg-type]

    def _draw(self, scale: float) -> float:
        with self._lock:
            if self.mode == "gaussian":
                return float(self._rng.normal(0.0, scale))
            return float(self._rng.laplace(0.0, scale))

    def _perturb(self, task: Task, value: Any, scale: float) -> Any:
        whole = self.type == "int"

        def noisy(x: Any) -> Any:
            if isinstance(x, float) and math.isnan(x):
                return x
            out = x + self._draw(scale)
            return int(round(out)) if whole or isinstance(x, int) else out

        return map_numbers(task.op, value, noisy)


class Budget(Policy):
    """Refuse noisy queries once a client has spent ``epsilon`` (and ``delta``).

    The cost of a task is the epsilon (and delta) of the ``Noise`` policies
    that apply to it; it is charged when the query is admitted (a query
    refused later still costs: conservative). Costs add up (basic
    composition). ``delta`` is the total delta an account may spend on
    gaussian releases: 0 by default, so a ``Budget`` admits gaussian noise
    only when the server owner sets one. Repeated questions answered from a
    ``CacheLimit`` cost nothing. ``per="client"`` keys the account by the
    client's identity (its token name when authentication is on, else its
    address); ``per="server"`` keeps one account for everyone. With
    ``state_file`` the spending survives a restart.
    """

    def __init__(self, epsilon: float = 1.0, per: str = "client", state_file: str | None = None,
                 delta: float = 0.0) -> None:
        if per not in ("client", "server"):
            raise ValueError("per must be 'client' or 'server'")
        if not 0 <= delta < 1:
            raise ValueError("delta must be in [0, 1)")
        self.epsilon, self.delta, self.per, self.state_file = float(epsilon), float(delta), per, state_file
        self._spent: dict[str, float] = {}
        self._spent_delta: dict[str, float] = {}
        self._lock = threading.Lock()
        if state_file and os.path.exists(state_file):
            with open(state_file, encoding="utf-8") as f:
                saved = json.load(f)
            if "epsilon" in saved and isinstance(saved["epsilon"], dict):
                self._spent = {str(k): float(v) for k, v in saved["epsilon"].items()}
                self._spent_delta = {str(k): float(v) for k, v in saved.get("delta", {}).items()}
            else:  # written before delta was accounted: epsilon by account
                self._spent = {str(k): float(v) for k, v in saved.items()}

    def spent(self, client: str) -> float:
        return self._spent.get(self._account(client), 0.0)

    def spent_delta(self, client: str) -> float:
        return self._spent_delta.get(self._account(client), 0.0)

    def _account(self, client: str) -> str:
        return client if self.per == "client" else "*"

    def admit(self, task: Task) -> None:
        if task.epsilon <= 0 and task.delta <= 0:
            return
        account = self._account(task.client)
        with self._lock:
            spent, spent_delta = self._spent.get(account, 0.0), self._spent_delta.get(account, 0.0)
            if spent + task.epsilon > self.epsilon * (1 + 1e-12):
                raise task.refuse(
                    self, f"privacy budget exhausted for {task.client!r}: spent {spent:g} of {self.epsilon:g}, "
                    f"this query needs {task.epsilon:g}"
                )
            if spent_delta + task.delta > self.delta * (1 + 1e-12):
                raise task.refuse(
                    self, f"privacy budget exhausted for {task.client!r}: spent delta {spent_delta:g} of "
                    f"{self.delta:g}, this query needs {task.delta:g}"
                )
            self._spent[account] = spent + task.epsilon
            if task.delta > 0:
                self._spent_delta[account] = spent_delta + task.delta
            self._save()

    def _save(self) -> None:
        if not self.state_file:
            return
        folder = os.path.dirname(os.path.abspath(self.state_file))
        with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, encoding="utf-8") as f:
            json.dump({"epsilon": self._spent, "delta": self._spent_delta}, f)
        os.replace(f.name, self.state_file)  # atomic: a crash never leaves half a file

    def describe(self) -> str:
        delta = f", delta={self.delta!r}" if self.delta else ""
        return f"Budget(epsilon={self.epsilon!r}{delta}, per={self.per!r})"
