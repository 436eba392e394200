"""Cox proportional hazards regression: one round per Newton iteration (one more under privacy policies).

Every round (``cox_step`` at ``beta``): each server sends, per cell of its
complete rows that share a stratum and a time, the cell's time, its events,
the sums of ``w``, ``w x``, ``w x x'`` over its rows (``w = exp(x'beta)``),
for Efron the same sums over its events, and the sum of ``x`` over all its
events. The client adds the cells of all servers per stratum and time and
sums them backwards over time: the risk set of a time is every row, on
any server, whose time is that or later, so this gives the pooled partial
likelihood, its gradient and information exactly, with no grid of event
times agreed first. ``strata="server"`` never adds cells of two servers:
each site has its own baseline hazard.

Exact event times identify people, and cells late in follow-up hold few
persons. Servers with threshold policies (``example/config.yaml``) judge
every time bin as a cell (``fedmed.ops.private.cox_release``): the persons
leaving follow-up in it, its events, and within it the persons with each
predictor (and product of two) zero and non-zero, each 0 or at least k.
With ``bin_width="auto"`` and policies, one first round asks every server,
in one request, which of the binnings of ``LADDER`` it releases
(``cox_bins``: exact times and power-of-two bins, whose bins nest), and the
model is fitted at the binning every server allows that keeps the most
event times: exactly statsmodels' ``PHReg`` on the times moved down to the
start of their bins, which the result states. The partial-likelihood math
is ``fedmed.ops.cox``, shared with the servers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError, FedMedError, PrivacyError, PrivacyWarning
from ..executor import progress
from ..lazy import FedData, LazyResult, compute
from ..ops import cox as partial_likelihood
from .lazy_call import aggregate
from .regression import ConvergenceWarning, Predictors, RegressionResult, _check_design, _predictors, _rounded

#: How ties are broken: does the server send the sums over the tied events (Efron)?
TIES = {"breslow": False, "efron": True}

AUTO = "auto"
#: Coarser binnings tried after a finer one is refused in a later round (``Dominance`` at a fitted ``beta``).
MAX_REFITS = 5
#: The binnings ``bin_width="auto"`` asks for under privacy policies (``fedmed.ops.cox.binned``): exact
#: times, then every power-of-two width from about a thousandth to about a billion time units, alone and
#: widening with time (1 to 16 bins per doubling past ``width * per_octave``, for the thin tail of
#: follow-up). Powers of two make every bin a dyadic interval: bins of any two binnings nest.
LADDER: tuple[Any, ...] = (0.0, *(2.0**j for j in range(-10, 31)),
                           *([2.0**j, 2.0**p] for p in range(0, 5) for j in range(-10, 31)))

SERVER = "server"


@dataclass(frozen=True, eq=False)
class CoxResult(RegressionResult):
    """A Cox model's coefficients (log hazard ratios), as statsmodels' ``PHRegResults`` reports them.

    ``extra`` holds ``llf`` (log partial likelihood), ``events``,
    ``iterations``, ``converged``, ``ties``, ``strata``, ``grid_times``
    (distinct event times on the grid), ``bin_width`` (None for exact
    times, else the binning, ``fedmed.ops.cox.binned``),
    ``note`` and ``rounds`` (requests per server).
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
                 max_iter: int, tol: float, bin_width: Any = AUTO) -> None:
        if not (bin_width is None or bin_width == AUTO or _is_binning(bin_width)):
            raise ArgumentError(f"coxph: bin_width is 'auto', None (exact times), a width >= 0 or [width, bins per "
                                f"octave], not {bin_width!r}")
        self.bin_width = bin_width
        self.policies = bool(data.config.privacy)
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

    def _ask(self, beta: np.ndarray, bins: Any) -> LazyResult:
        """A Newton round: every server's sums per stratum and time bin at ``beta``."""
        return aggregate(self.time, "cox_step", self.event, [float(b) for b in beta], *self._options(bins),
                         needed_by="coxph")

    def _ask_bins(self, bins: Any) -> LazyResult:
        """Whether every server releases sums in ``bins``, and how many event times they keep."""
        return aggregate(self.time, "cox_bins", self.event, *self._options(bins), needed_by="coxph")

    def _options(self, bins: Any) -> tuple[Any, ...]:
        return (TIES[self.ties], self.stratum is not None, bins, *self.columns,
                *([self.stratum] if self.stratum is not None else []))

    def explain(self) -> str:
        ladder = self.bin_width == AUTO and self.policies
        first = (self._ask_bins(LADDER[-1]).explain()
                 + f"\n(round 1: {len(LADDER)} binnings of the times in one request; the model uses one every "
                   "server answered)\n") if ladder else ""
        return (first + self._ask(np.zeros(len(self.names)), self._binnings()[-1]).explain()
                + f"\n(once per Newton iteration, at most {self.max_iter})")

    def _binnings(self) -> tuple[Any, ...]:
        """The binnings to choose from: the analyst's, else exact times (no privacy policies) or the ladder."""
        if self.bin_width is None:
            return (0.0,)
        if self.bin_width != AUTO:
            return (self.bin_width,)
        return LADDER if self.policies else (0.0,)

    def _ladder(self) -> list[Any]:
        """One round: every binning of ``LADDER`` asked at once; those every server answered, the ones keeping
        the most event times (summed over servers) first."""
        asked = self._round(lambda: compute(*[self._ask_bins(bins) for bins in LADDER], on_suppressed="keep"))
        usable = [i for i, answers in enumerate(asked) if not any(isinstance(a, Exception) for a in answers)]
        if not usable:  # a server that answered none says why at the coarsest binning
            refused = next((answers for answers in zip(*asked) if all(isinstance(a, Exception) for a in answers)),
                           asked[-1])
            raise next(a for a in reversed(refused) if isinstance(a, Exception))
        usable.sort(key=lambda i: (-sum(a["times"] for a in asked[i]), i))
        return [LADDER[i] for i in usable]

    def _round(self, ask: Any) -> Any:
        """One round of requests, counted (a refused round too: it was sent)."""
        self.rounds += 1
        return ask()

    def _candidates(self) -> list[Any]:
        """The binnings to fit at, best first: the analyst's, exact times, or those the ladder allows."""
        if len(self._binnings()) > 1:
            return self._ladder()
        return [self._binnings()[0]]

    def _start(self, bins: Any) -> list[dict[str, Any]]:
        """Every server's sums at ``beta = 0``, checked: event codes and events."""
        parts = self._round(lambda: self._ask(np.zeros(len(self.names)), bins).compute())
        bad, events, n = (sum(int(p[key]) for p in parts) for key in ("bad", "events", "n"))
        if bad:
            raise DataError(f"coxph: event is not 0/1 (or False/True) on {bad} complete rows; recode it "
                            "(e.g. event=data['status'] == 2)")
        if events == 0:
            raise DataError(f"coxph: no events among the {n} complete rows; there is no hazard to model")
        return parts

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

        if self.stratum is not None:
            self._code_strata()
        self.rounds = 0
        candidates, refused = self._candidates(), []
        while True:
            bins = candidates[0]
            try:
                beta, step, n, events, iterations, converged = self._fit(bins)
                break
            except PrivacyError as error:
                auto = self.bin_width == AUTO
                if auto and not self.policies and not refused and candidates == [0.0]:
                    candidates = self._ladder()  # the client's config has no policies, a server's has
                elif auto and len(candidates) > 1 and len(refused) < MAX_REFITS:
                    candidates = candidates[1:]  # a later round refused (dominance at a fitted beta): coarser bins
                else:
                    raise
                refused.append(error)
        note = self._note(bins, refused)
        if note:
            warnings.warn(note, PrivacyWarning, stacklevel=2)
        if not converged:
            warnings.warn(f"coxph did not converge in {self.max_iter} iterations; estimates are from the last one",
                          ConvergenceWarning, stacklevel=2)
        # As in GLMFit: the last information matrix is one step (below tol) before the estimate.
        bse = np.sqrt(np.diag(np.linalg.inv(step["information"])))
        z = beta / bse
        series = lambda values: pd.Series(values, index=self.names, dtype=float)  # noqa: E731
        return CoxResult(
            series(beta), series(bse), series(z), series(2 * sps.norm.sf(np.abs(z))), n, float(n - len(beta)),
            {"llf": step["loglik"], "events": events, "converged": converged, "iterations": iterations,
             "ties": self.ties, "strata": self.strata, "grid_times": step["times"], "bin_width": bins or None,
             "note": note, "rounds": self.rounds},
        )

    def _fit(self, bins: Any) -> tuple[np.ndarray, dict[str, Any], int, int, int, bool]:
        """Newton from ``beta = 0`` at ``bins``: the estimate, the last round's derivatives, rows, events,
        iterations and whether it converged."""
        parts = self._start(bins)
        n, events = (sum(int(p[key]) for p in parts) for key in ("n", "events"))
        beta = np.zeros(len(self.names))
        last, converged, iterations = None, False, 0
        with progress() as bar:
            for iterations in range(1, self.max_iter + 1):
                bar.stage(f"coxph Newton round {iterations}/{self.max_iter}")
                if iterations > 1:
                    parts = self._round(lambda: self._ask(beta, bins).compute())
                step = _derivatives(parts, self.by_server, beta, TIES[self.ties], n)
                change, last = self._change(step, beta, last, iterations, n)
                beta = beta + change
                if np.max(np.abs(change)) < self.tol * (1.0 + np.max(np.abs(beta))):
                    converged = True
                    break
        return beta, step, n, events, iterations, converged

    def _note(self, bins: Any, refused: Sequence[PrivacyError] = ()) -> str:
        if not bins:
            return ""
        chosen = ("of the binnings every server's privacy policies allow, the one keeping the most event times"
                  if self.bin_width == AUTO else "as asked")
        later = [error for error in refused if "cox_bins" not in str(error)]
        if self.policies and later:
            chosen += (f"; {len(later)} finer binning(s) refused in a later round "
                       f"({later[-1].message.split(';')[0][-120:]})")
        return (f"coxph: event times in {partial_likelihood.describe_bins(bins)} ({chosen}): the model is "
                f"statsmodels' PHReg on every time moved down to the start of its bin, the events of a bin tied "
                f"({self.ties})")

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


def _is_binning(value: Any) -> bool:
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0  # noqa: E731
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(number(v) for v in value)
    return number(value)


def _column(data: FedData, item: Any, role: str) -> FedData:
    from .regression import _column as column

    return column(data, item, "coxph", role)


def _derivatives(parts: Sequence[Mapping[str, Any]], by_server: bool, beta: np.ndarray, efron: bool,
                 n: int) -> dict[str, Any]:
    """Log partial likelihood, gradient and information from the servers' cells, added per stratum and time
    (per server and stratum with ``strata="server"``) and summed backwards into risk sets
    (``fedmed.ops.cox``: the same math a server's own Cox fit runs)."""
    if sum(int(p["n"]) for p in parts) != n:
        raise DataError("coxph: the servers' complete rows changed between rounds; compute the model again")
    keys: dict[Any, int] = {}
    stratum = [keys.setdefault((site, label) if by_server else label, len(keys))
               for site, part in enumerate(parts) for label in part["stratum"]]
    width = (2 if efron else 1) * (1 + len(beta) + len(beta) ** 2) + 1  # fedmed.ops.cox.row_terms
    cells = [part["cells"].reshape(len(part["stratum"]), width) for part in parts]
    sums = partial_likelihood.pooled_sums(np.asarray(stratum, dtype=float),
                                          np.concatenate([part["time"] for part in parts]),
                                          np.concatenate(cells), len(beta), efron)
    xsum = np.sum([part["xsum"] for part in parts], axis=0)  # the events' predictors, all servers
    out = partial_likelihood.derivatives(sums, xsum, beta, efron)
    out["times"] = int(np.count_nonzero(sums["d"]))
    return out


def coxph(data: FedData, duration: Any, event: Any, X: Predictors, ties: str = "breslow", strata: Any = None,
          max_iter: int = 25, tol: float = 1e-10, bin_width: Any = AUTO) -> CoxFit:
    """Cox proportional hazards regression, equal to statsmodels' ``PHReg`` on the pooled rows.

    ``duration`` (follow-up time) and ``event`` (1/True for an event, 0/False
    for censored) are column names or columns of ``data``; ``X`` names the
    predictors as in :func:`fedmed.stats.ols` (no intercept: the baseline
    hazard absorbs it). ``ties`` is ``"breslow"`` or ``"efron"``. ``strata``
    is None, a column (a baseline hazard per value; text values cost one
    more round), or ``"server"`` (a baseline hazard per site: no sums of two
    servers are ever added). Rows missing any value are left out.

    Rounds: 1 per Newton iteration (typically 4 to 6), in which each
    server sends its sums per cell of rows sharing a stratum and time
    (section 4.9 of ``docs/statistics.md``); 1 more under privacy policies.

    ``bin_width``: ``"auto"`` (the default) uses the exact times when the
    config has no privacy policies; with policies, round 1 asks for the
    event times at exact resolution and at every power-of-two binning at
    once, and the model uses the binning every server allows that keeps the
    most event times (each time bin
    a cell of at least k persons leaving, events, and persons with each
    predictor zero and non-zero; ``docs/privacy.md`` 4.10). The result's
    ``bin_width`` says which (None: exact), and a ``PrivacyWarning`` says
    so: the estimates are then statsmodels' ``PHReg`` on the times moved
    down to the start of their bins. ``None`` asks for exact times; a number
    for bins of that width; ``[width, per_octave]`` for bins of ``width``
    that widen past ``width * per_octave`` to ``per_octave`` bins per
    doubling of time (``fedmed.ops.cox.binned``). Under privacy policies
    widths and ``per_octave`` are powers of two.

    Examples
    --------
    >>> import fedmed as fm
    >>> a = fm.Local({"t": [5.0, 8, 3, 9, 7], "died": [1, 0, 1, 1, 0], "age": [70, 50, 80, 40, 60]})
    >>> b = fm.Local({"t": [6.0, 2, 10, 4], "died": [1, 1, 0, 1], "age": [55, 75, 45, 65]})
    >>> fit = fm.stats.coxph(fm.FedData([a, b]), "t", "died", ["age"]).compute()
    >>> round(float(fit.params["age"]), 4), fit.events, fit.rounds
    (0.1627, 6, 6)
    """
    return CoxFit(data, duration, event, X, ties, strata, max_iter, tol, bin_width)
