"""Cox proportional hazards regression: one round for the event-time grid, then one per Newton iteration.

Round 1 (``cox_step`` without a grid): each server sends its distinct
event times; the client pools them into one grid. Every later round
(``cox_step`` at ``beta`` on the grid): each server sends, per stratum and
grid time ``t``, the number of events ``d``, the risk-set sums ``S0``,
``S1``, ``S2`` of ``w``, ``w x``, ``w x x'`` over its rows still at risk
(time ``>= t``, ``w = exp(x'beta)``), for Efron the same sums over the
events tied at ``t`` (``E0``, ``E1``, ``E2``), and the sum of ``x`` over its
events. The risk set of a time is the union of the servers' risk sets, so
adding the sums per stratum and time gives the pooled partial likelihood,
its gradient and its information matrix exactly. ``strata="server"`` never
adds sums of two servers: each site has its own baseline hazard.

Exact event times identify people, and per-time sums late in follow-up
rest on few persons: servers with threshold policies (``example/config.yaml``)
refuse ``cox_step`` (``docs/privacy.md``); the model is exact on servers
without them. With them, fit the model per site and pool the estimates:
``fm.stats.slma(fm.stats.coxph, data, duration=..., event=..., X=[...])``.
The partial-likelihood math is ``fedmed.ops.cox``, shared with the servers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, FedMedError
from ..executor import progress
from ..lazy import FedData, LazyResult, compute
from ..ops import cox as partial_likelihood
from .lazy_call import aggregate
from .regression import ConvergenceWarning, Predictors, RegressionResult, _check_design, _predictors, _rounded

#: How ties are broken: does the server send the sums over the tied events (Efron)?
TIES = {"breslow": False, "efron": True}

SERVER = "server"


@dataclass(frozen=True, eq=False)
class CoxResult(RegressionResult):
    """A Cox model's coefficients (log hazard ratios), as statsmodels' ``PHRegResults`` reports them.

    ``extra`` holds ``llf`` (log partial likelihood), ``events``,
    ``iterations``, ``converged``, ``ties``, ``strata``, ``grid_times``
    (distinct event times on the grid) and ``rounds`` (requests per server).
    """

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Wald confidence intervals, one row per coefficient (columns 0 and 1, as statsmodels)."""
        from scipy import stats as sps

        z = sps.norm.ppf(1 - alpha / 2)
        return pd.DataFrame({0: self.params - z * self.bse, 1: self.params + z * self.bse})

    @property
    def hazard_ratios(self) -> pd.Series:
        return np.exp(self.params)


class CoxFit:
    """A Cox model fitted on ``compute()``: one round for the grid, then one per Newton iteration."""

    def __init__(self, data: FedData, duration: Any, event: Any, X: Predictors, ties: str, strata: Any,
                 max_iter: int, tol: float) -> None:
        if ties not in TIES:
            raise ArgumentError(f"coxph: ties is one of {sorted(TIES)}, not {ties!r}")
        predictors = _predictors(data, X, "coxph")
        if not predictors:
            raise ArgumentError("coxph needs at least one predictor in X (a Cox model has no intercept)")
        self.names = [name for name, _ in predictors]
        self.time = _column(data, duration, "duration")
        self.event = _column(data, event, "event")
        self.columns = [column for _, column in predictors]
        self.ties, self.max_iter, self.tol = ties, max_iter, tol
        self.by_server = isinstance(strata, str) and strata == SERVER
        self.stratum = None if strata is None or self.by_server else _column(data, strata, "strata")
        self.strata = strata if isinstance(strata, str) or strata is None else "column"

    def _ask(self, beta: "np.ndarray | None", grid: "np.ndarray | None") -> LazyResult:
        columns = self.columns + ([self.stratum] if self.stratum is not None else [])
        return aggregate(
            self.time, "cox_step", self.event, None if beta is None else [float(b) for b in beta],
            None if grid is None else [float(t) for t in grid], TIES[self.ties], self.stratum is not None,
            *columns, needed_by="coxph",
        )

    def explain(self) -> str:
        return (self._ask(None, None).explain() + "\n(round 1: the event-time grid)\n"
                + self._ask(np.zeros(len(self.names)), np.zeros(1)).explain()
                + f"\n(repeated once per Newton iteration, at most {self.max_iter})")

    def _grid(self) -> Mapping[str, Any]:
        if self.stratum is not None:
            self._code_strata()
        first = self._ask(None, None).compute()
        if first["bad"]:
            raise DataError(f"coxph: event is not 0/1 (or False/True) on {first['bad']} complete rows; recode it "
                            "(e.g. event=data['status'] == 2)")
        if first["events"] == 0:
            raise DataError(f"coxph: no events among the {first['n']} complete rows; there is no hazard to model")
        return first

    def _code_strata(self) -> None:
        """Text strata become numbers 1, 2, ... (the servers read numbers); rows of other levels are left out."""
        levels = list(self.stratum.unique().compute())
        if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in levels):
            return
        keep = self.stratum.isin(list(levels))
        code = sum((self.stratum == level) * (i + 1) for i, level in enumerate(levels))
        self.time, self.event = self.time[keep], self.event[keep]
        self.columns, self.stratum = [c[keep] for c in self.columns], code[keep]

    def compute(self) -> CoxResult:
        from scipy import stats as sps  # here, not at the top: scipy.stats is half of fedmed's import time

        first = self._grid()
        grid = first["times"]
        beta = np.zeros(len(self.names))
        last, converged, iterations = None, False, 0
        with progress() as bar:
            for iterations in range(1, self.max_iter + 1):
                bar.stage(f"coxph Newton round {iterations}/{self.max_iter}")
                step = _derivatives(self._ask(beta, grid).compute()["parts"], self.by_server, beta, TIES[self.ties])
                change, last = self._change(step, beta, last, iterations, first["n"])
                beta = beta + change
                if np.max(np.abs(change)) < self.tol * (1.0 + np.max(np.abs(beta))):
                    converged = True
                    break
        if not converged:
            warnings.warn(f"coxph did not converge in {self.max_iter} iterations; estimates are from the last one",
                          ConvergenceWarning, stacklevel=2)
        # As in GLMFit: the last information matrix is one step (below tol) before the estimate.
        bse = np.sqrt(np.diag(np.linalg.inv(step["information"])))
        z = beta / bse
        series = lambda values: pd.Series(values, index=self.names, dtype=float)  # noqa: E731
        return CoxResult(
            series(beta), series(bse), series(z), series(2 * sps.norm.sf(np.abs(z))), int(first["n"]),
            float(first["n"] - len(beta)),
            {"llf": step["loglik"], "events": int(first["events"]), "converged": converged,
             "iterations": iterations, "ties": self.ties, "strata": self.strata, "grid_times": len(grid),
             "bin_width": None, "rounds": 1 + iterations},
        )

    def _change(self, step: Mapping[str, Any], beta: np.ndarray, last: Any, iteration: int,
                n: int) -> tuple[np.ndarray, Any]:
        """The Newton step, halved back when the last one overshot (the partial likelihood is concave)."""
        info, gradient, loglik = step["information"], step["gradient"], step["loglik"]
        if not (np.all(np.isfinite(info)) and np.all(np.isfinite(gradient)) and math.isfinite(loglik)):
            raise FedMedError(f"coxph overflowed in round {iteration + 1} (coefficients {_rounded(self.names, beta)}):"
                              " a predictor holds very large values; rescale it (e.g. X={'age/10': data['age'] / 10})")
        if iteration == 1:
            # at beta = 0 the information is the within-risk-set spread of the predictors
            _check_design(info, self.names, n, "coxph", centred=True)
        if last is not None and loglik < last[0] - 1e-9 * (1.0 + abs(last[0])):
            return -last[1] / 2, (last[0], last[1] / 2)
        change = np.linalg.solve(info, gradient)
        return change, (loglik, change)


def _column(data: FedData, item: Any, role: str) -> FedData:
    from .regression import _column as column

    return column(data, item, "coxph", role)


def _blocks(parts: Sequence[Mapping[str, Any]], by_server: bool) -> list[dict[str, np.ndarray]]:
    """The servers' sums added per stratum (per server and stratum with ``strata="server"``)."""
    pooled: dict[Any, dict[str, np.ndarray]] = {}
    for site, part in enumerate(parts):
        for i, label in enumerate(part.get("labels", [])):
            key = (site, label) if by_server else label
            sums = {name: value[i] for name, value in part.items() if name not in ("n", "labels", "xsum", "off_grid")}
            if key in pooled:
                sums = {name: pooled[key][name] + value for name, value in sums.items()}
            pooled[key] = sums
    return list(pooled.values())


def _derivatives(parts: Sequence[Mapping[str, Any]], by_server: bool, beta: np.ndarray, efron: bool) -> dict[str, Any]:
    """Log partial likelihood, gradient and information from the servers' sums added per stratum and time
    (``fedmed.ops.cox.derivatives``: the same math a server's own Cox fit runs)."""
    if any(part.get("off_grid") for part in parts):
        raise DataError("coxph: a server's event times are not on the grid agreed in the first round (its rows "
                        "changed between rounds); compute the model again")
    blocks = _blocks(parts, by_server)
    sums = {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}
    xsum = np.sum([part["xsum"] for part in parts], axis=0)  # the events' predictors, all servers
    return partial_likelihood.derivatives(sums, xsum, beta, efron)


def coxph(data: FedData, duration: Any, event: Any, X: Predictors, ties: str = "breslow", strata: Any = None,
          max_iter: int = 25, tol: float = 1e-10) -> CoxFit:
    """Cox proportional hazards regression, equal to statsmodels' ``PHReg`` on the pooled rows.

    ``duration`` (follow-up time) and ``event`` (1/True for an event, 0/False
    for censored) are column names or columns of ``data``; ``X`` names the
    predictors as in :func:`fedmed.stats.ols` (no intercept: the baseline
    hazard absorbs it). ``ties`` is ``"breslow"`` or ``"efron"``. ``strata``
    is None, a column (a baseline hazard per value; text values cost one
    more round), or ``"server"`` (a baseline hazard per site: no sums of two
    servers are ever added). Rows missing any value are left out.

    Rounds: 1 for the pooled grid of event times, then 1 per Newton
    iteration (typically 4 to 6), in which each server sends its risk-set
    sums per event time (section 4.9 of ``docs/statistics.md``). Servers
    with threshold policies refuse these sums (``fm.PrivacyError``).

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"t": [5.0, 8, 3, 9, 7], "died": [1, 0, 1, 1, 0], "age": [70, 50, 80, 40, 60]})
    >>> b = fm.Local({"t": [6.0, 2, 10, 4], "died": [1, 1, 0, 1], "age": [55, 75, 45, 65]})
    >>> fit = fm.stats.coxph(fm.FedData([a, b]), "t", "died", ["age"]).compute()
    >>> round(float(fit.params["age"]), 4), fit.events, fit.rounds
    (0.1627, 6, 7)
    """
    return CoxFit(data, duration, event, X, ties, strata, max_iter, tol)
