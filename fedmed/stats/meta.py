"""Study-level meta-analysis (SLMA): one model fitted on each server, pooled by inverse variance.

Each server fits the model on its own rows to convergence in one request
(the ``site_fit`` map) and releases only its coefficients, their covariance
and its row count (a Cox fit: and its number of events). The client pools each coefficient across sites: a fixed
effect and a random effects estimate (DerSimonian–Laird, Paule–Mandel or
REML), with the heterogeneity statistics tau², I², Q and Q's p-value. The
fixed effect, DerSimonian–Laird and Paule–Mandel come from
``statsmodels.stats.meta_analysis.combine_effects``; REML, which statsmodels
lacks, solves its score equation with scipy.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ArgumentError, DataError
from ..lazy import FedData, LazyResult
from . import cox, regression
from .lazy_call import aggregate, call


@dataclass(frozen=True)
class SitePlan:
    """What the servers run for one ``slma`` call: the fit, its row-wise inputs besides the outcome and the
    predictors, and what the client counts beside it (in the same request)."""

    fit: str  #: ``fedmed.ops.private.SITE_FITS``' key, or ``"glm/<family>/<link>[/<roles>]"``
    inputs: tuple[FedData, ...] = ()  #: read after the outcome, before the predictors (a GLM's offset, weights)
    #: ``(message, mask)``: rows no fit can take, as ``fm.stats.glm`` counts them; the message formats the count.
    checks: tuple[tuple[str, FedData], ...] = ()


@dataclass(frozen=True)
class SiteModel:
    """How ``slma`` runs a model function on each site: the server's fit and the keywords it passes on."""

    fit: str  #: the key of ``fedmed.ops.private.SITE_FITS`` the server runs without options
    iterative: bool = True  #: takes ``max_iter`` and ``tol``
    #: ``options(data, outcome, **keywords) -> SitePlan``: the model function's keywords that ``slma`` passes
    #: on (its keyword-only parameters), checked and planned; None for a model that takes none per site.
    options: "Callable[..., SitePlan] | None" = None
    #: The keywords naming the outcome's columns, in the order the server reads them.
    outcome: tuple[str, ...] = ("y",)
    intercept: bool = True  #: has an intercept (a Cox model has none: its baseline hazard absorbs it)


def _glm_plan(data: FedData, outcome: Sequence[FedData], *, family: str = "gaussian", link: "str | None" = None,
              offset: Any = None, exposure: Any = None, freq_weights: Any = None,
              var_weights: Any = None) -> SitePlan:
    """``fm.stats.glm``'s ``family`` and ``link`` (checked as ``glm`` checks them), offset and weights per site.

    The pooled ``glm`` turns the offset, exposure (its log joins the offset) and weights into its
    inputs by role and names the rows no fit can take; the site fit reads the same inputs after ``y``.
    """
    family, link = regression.family_link(family, link, "slma")
    given = {"offset": offset, "exposure": exposure, "freq_weights": freq_weights, "var_weights": var_weights}
    columns = {role: regression._column(data, item, "slma", role) for role, item in given.items() if item is not None}
    pooled = regression.glm(data, outcome[0], (), family, link, **columns)  # built, never computed
    if not pooled.extra:  # the fit as before: the server checks y itself
        return SitePlan(f"glm/{family}/{link}")
    # an exposure's log hides a non-positive exposure from the server (NaN reads as missing): count as glm does
    return SitePlan(f"glm/{family}/{link}/{','.join(pooled.extra)}", tuple(pooled.extra.values()),
                    tuple(pooled._checks()))


def _poisson_plan(data: FedData, outcome: Sequence[FedData], *, offset: Any = None,
                  exposure: Any = None) -> SitePlan:
    """``fm.stats.poisson``: Newton's Poisson fit, or with an ``offset`` or ``exposure`` the Poisson GLM, as
    ``poisson`` itself."""
    if offset is None and exposure is None:
        return SitePlan("poisson")
    return _glm_plan(data, outcome, family="poisson", offset=offset, exposure=exposure)


def _cox_plan(data: FedData, outcome: Sequence[FedData], *, ties: str = "breslow") -> SitePlan:
    """``fm.stats.coxph``'s ``ties`` (no strata per site: a site is its own stratum)."""
    if ties not in cox.TIES:
        raise ArgumentError(f"slma: coxph's ties is one of {sorted(cox.TIES)}, not {ties!r}")
    return SitePlan(f"cox/{ties}")


#: Model functions ``slma`` can run per site. Adding a model is one entry here and one fit in ``SITE_FITS``.
SITE_MODELS: dict[Callable[..., Any], SiteModel] = {
    regression.ols: SiteModel("ols", iterative=False),
    regression.logit: SiteModel("logit"),
    regression.poisson: SiteModel("poisson", options=_poisson_plan),
    regression.glm: SiteModel("glm", options=_glm_plan),
    cox.coxph: SiteModel("cox", options=_cox_plan, outcome=("duration", "event"), intercept=False),
}

#: ``method`` names to ``combine_effects``' ``method_re`` (REML is solved here: statsmodels has no REML).
METHODS = {"dl": "chi2", "pm": "iterated", "reml": None}


def slma(model: Callable[..., Any], data: FedData, method: str = "dl", *, y: Any = None, duration: Any = None,
         event: Any = None, X: Any = (), intercept: "bool | None" = None, rows_per_parameter: float = 10.0,
         max_iter: int = 50, tol: float = 1e-10, **options: Any) -> LazyResult:
    """``model`` fitted on each server's rows separately, pooled by inverse-variance meta-analysis.

    ``model`` is ``fm.stats.ols``, ``fm.stats.logit``, ``fm.stats.poisson``
    (with its ``offset`` and ``exposure``: then the Poisson ``glm``),
    ``fm.stats.glm`` (with its ``family``, ``link``, ``offset``, ``exposure``,
    ``freq_weights`` and ``var_weights``, column names or expressions as
    ``glm`` takes them; an exposure's log joins the offset) or
    ``fm.stats.coxph`` (with its ``ties``; no strata: each site has its own
    baseline hazard); ``y`` (Cox: ``duration`` and ``event``), ``X`` and
    ``intercept`` (by default the model's: none for Cox) are given as to that
    function. Each server fits the model to convergence in one request and
    releases only its coefficients, their covariance and its row count (Cox:
    and its number of events); a server refuses (``fm.PrivacyError``) when it
    holds fewer than ``rows_per_parameter`` complete rows per coefficient
    (rows missing y, a predictor, an offset or a weight are left out; with
    weights, rows of positive weight, counted as rows, not as the sum of the
    frequency weights), or for Cox fewer events per coefficient (or fewer
    than its own floor, at least 3). Non-positive exposures and negative
    weights are refused, as ``glm`` refuses them.
    The client pools each coefficient: a fixed effect and random effects by
    ``method`` ``"dl"`` (DerSimonian–Laird), ``"pm"`` (Paule–Mandel) or
    ``"reml"``. One round, one request per server.

    Returns a lazy :class:`SLMAResult`.

    Examples
    --------
    >>> import fedmed as fm
    >>> sites = [{"y": [1.0, 2.1, 2.9, 4.2, 5.1, 5.8], "x": [1, 2, 3, 4, 5, 6]},
    ...          {"y": [2.0, 2.8, 4.1, 5.2, 5.9, 7.1], "x": [1, 2, 3, 4, 5, 6]}]
    >>> data = fm.FedData([fm.Local(s) for s in sites])
    >>> meta = fm.stats.slma(fm.stats.ols, data, y="y", X=["x"], rows_per_parameter=3).compute()
    >>> [round(float(v), 4) for v in meta.fixed], round(float(meta.i2["x"]), 4)
    ([0.5164, 1.0034], 0.0)
    >>> round(float(meta.random["Intercept"]), 4), len(meta.sites)  # one row of estimates per site
    (0.5073, 2)
    """
    site_model = SITE_MODELS.get(model)
    if site_model is None:
        known = ", ".join(f"fm.stats.{m.__name__}" for m in SITE_MODELS)
        raise ArgumentError(f"slma runs {known} on each site, not {getattr(model, '__name__', model)!r}")
    if method not in METHODS:
        raise ArgumentError(f"slma: method is one of {sorted(METHODS)} (random effects), not {method!r}")
    intercept = _intercept(site_model, model, intercept)
    predictors = regression._predictors(data, X, "slma")
    if not predictors and not intercept:
        raise ArgumentError("slma needs a predictor in X" + (" or an intercept" if site_model.intercept else ""))
    outcome = _outcome(site_model, model, data, {"y": y, "duration": duration, "event": event})
    plan = _plan(site_model, model, data, outcome, options)
    names = ([regression.INTERCEPT] if intercept else []) + [name for name, _ in predictors]
    fits = aggregate(outcome[0], "site_fit", plan.fit, intercept, float(rows_per_parameter), int(max_iter),
                     float(tol), *outcome[1:], *plan.inputs, *(column for _, column in predictors), needed_by="slma")
    if plan.checks:
        fits = call(_checked, fits, tuple(message for message, _ in plan.checks),
                    *(mask.sum() for _, mask in plan.checks))
    sites = tuple(_site_name(source) for source in data.sources)
    return call(_pool, fits, tuple(names), sites, method)


def _intercept(site_model: SiteModel, model: Callable[..., Any], intercept: "bool | None") -> bool:
    if intercept is None:
        return site_model.intercept
    if intercept and not site_model.intercept:
        raise ArgumentError(f"slma: fm.stats.{model.__name__} has no intercept (its baseline absorbs it)")
    return bool(intercept)


def _outcome(site_model: SiteModel, model: Callable[..., Any], data: FedData,
             given: Mapping[str, Any]) -> list[FedData]:
    """The outcome's columns as the model names them (``y``; Cox's ``duration`` and ``event``), checked."""
    wrong = sorted(name for name, value in given.items() if value is not None and name not in site_model.outcome)
    missing = [name for name in site_model.outcome if given[name] is None]
    if wrong or missing:
        raise ArgumentError(f"slma: fm.stats.{model.__name__}'s outcome is {' and '.join(site_model.outcome)}"
                            + (f", not {wrong}" if wrong else f"; give {' and '.join(missing)}"))
    return [regression._column(data, given[name], "slma", name) for name in site_model.outcome]


def _plan(site_model: SiteModel, model: Callable[..., Any], data: FedData, outcome: Sequence[FedData],
          options: Mapping[str, Any]) -> SitePlan:
    """What the servers run: the model's own fit, or the plan its options make (``fm.stats.glm``'s family,
    link, offset and weights)."""
    if site_model.options is None:
        if options:
            raise ArgumentError(f"slma: fm.stats.{model.__name__} takes no {sorted(options)} per site")
        return SitePlan(site_model.fit)
    known = [name for name, parameter in inspect.signature(site_model.options).parameters.items()
             if parameter.kind is inspect.Parameter.KEYWORD_ONLY]
    if set(options) - set(known):
        raise ArgumentError(f"slma: fm.stats.{model.__name__} per site takes {', '.join(known)}, "
                            f"not {sorted(set(options) - set(known))}")
    return site_model.options(data, outcome, **options)


def _checked(fits: Sequence[Mapping[str, Any]], messages: tuple[str, ...],
             *counts: int) -> Sequence[Mapping[str, Any]]:
    """The sites' fits, or a ``DataError`` naming the first input no fit can take (as ``fm.stats.glm`` says it)."""
    for message, count in zip(messages, counts):
        if count:
            raise DataError(f"slma: {message.format(int(count))}")
    return fits


def _site_name(source: Any) -> str:
    """A simulated server's own name; a remote one's address and fragment."""
    name = getattr(source, "name", None)
    return name if isinstance(name, str) and name != "simulation" else f"{source.server} {source.fragment}"


@dataclass(frozen=True, eq=False)
class SLMAResult:
    """Per-site coefficients and their pooled fixed and random effects, one meta-analysis per coefficient.

    ``fixed``/``random`` and their standard errors ``fixed_bse``/``random_bse``,
    ``tau2``, ``i2``, ``q``, ``q_pvalue`` are Series by coefficient;
    ``sites`` and ``sites_bse`` are DataFrames (a row per site, a column per
    coefficient), ``nobs`` a Series by site.
    """

    fixed: pd.Series
    fixed_bse: pd.Series
    random: pd.Series
    random_bse: pd.Series
    tau2: pd.Series
    i2: pd.Series
    q: pd.Series
    q_pvalue: pd.Series
    sites: pd.DataFrame
    sites_bse: pd.DataFrame
    nobs: pd.Series
    method: str

    def conf_int(self, alpha: float = 0.05, effect: str = "random") -> pd.DataFrame:
        """Normal confidence intervals of the pooled ``"random"`` or ``"fixed"`` coefficients."""
        from scipy import stats as sps

        estimate, bse = (self.random, self.random_bse) if effect == "random" else (self.fixed, self.fixed_bse)
        z = sps.norm.ppf(1 - alpha / 2)
        return pd.DataFrame({"lower": estimate - z * bse, "upper": estimate + z * bse})

    def summary(self) -> pd.DataFrame:
        """One row per coefficient: fixed and random effects with standard errors, tau², I², Q, p(Q)."""
        return pd.DataFrame({
            "fixed": self.fixed, "fixed se": self.fixed_bse, f"random ({self.method})": self.random,
            "random se": self.random_bse, "tau2": self.tau2, "i2": self.i2, "q": self.q, "p(q)": self.q_pvalue,
        })

    def plot(self, coefficient: str | None = None, ax: Any = None) -> Any:
        """A forest plot of one coefficient (the first predictor by default): sites, fixed and random effects."""
        from ..plot import forest

        if coefficient is None:
            coefficient = next((c for c in self.fixed.index if c != regression.INTERCEPT), self.fixed.index[0])
        if coefficient not in self.fixed.index:
            raise ArgumentError(f"slma has no coefficient {coefficient!r}; it has {list(self.fixed.index)}")
        pooled = {"fixed effect": (self.fixed[coefficient], self.fixed_bse[coefficient]),
                  f"random effects ({self.method})": (self.random[coefficient], self.random_bse[coefficient])}
        return forest(self.sites[coefficient], self.sites_bse[coefficient], pooled=pooled, title=coefficient, ax=ax)

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_() + self.sites.assign(n=self.nobs)._repr_html_()

    def __repr__(self) -> str:
        return f"SLMA · {len(self.sites)} sites · {self.method}\n{self.summary().to_string()}\nper site:\n" \
               f"{self.sites.assign(n=self.nobs).to_string()}"


def _pool(fits: Sequence[Mapping[str, Any]], names: tuple[str, ...], sites: tuple[str, ...],
          method: str) -> SLMAResult:
    if len(fits) < 2:
        raise DataError("slma pools the fits of at least two sites; with one, fit the model on it directly")
    estimates = pd.DataFrame([f["params"] for f in fits], index=list(sites), columns=list(names))
    bse = pd.DataFrame([np.sqrt(np.diag(f["cov"])) for f in fits], index=list(sites), columns=list(names))
    rows = [_meta(estimates[name].to_numpy(), bse[name].to_numpy() ** 2, method) for name in names]
    table = pd.DataFrame(rows, index=list(names))
    return SLMAResult(
        *(table[column] for column in ("fixed", "fixed_bse", "random", "random_bse", "tau2", "i2", "q", "q_pvalue")),
        sites=estimates, sites_bse=bse, nobs=pd.Series([f["n"] for f in fits], index=list(sites)), method=method,
    )


def _meta(effect: np.ndarray, variance: np.ndarray, method: str) -> dict[str, float]:
    """One coefficient's meta-analysis: statsmodels for the fixed effect, Q, I², DL's and PM's tau²; REML here.

    statsmodels (0.15) leaves DerSimonian–Laird's tau² and I² negative when Q
    falls below its degrees of freedom; both are truncated at 0, as
    DerSimonian and Laird and Higgins and Thompson define them, and the random
    effects pool with that tau².
    """
    from scipy import stats as sps
    from statsmodels.stats.meta_analysis import combine_effects

    with np.errstate(invalid="ignore"):  # statsmodels takes square roots of its negative tau2
        result = combine_effects(effect, variance, method_re=METHODS[method] or "chi2")
    tau2 = max(0.0, float(result.tau2) if METHODS[method] else _reml_tau2(effect, variance))
    weights = 1.0 / (variance + tau2)
    q = float(result.q)
    return {
        "fixed": float(result.mean_effect_fe), "fixed_bse": float(result.sd_eff_w_fe),
        "random": float(weights @ effect / weights.sum()), "random_bse": float(np.sqrt(1.0 / weights.sum())),
        "tau2": tau2, "i2": max(0.0, float(result.i2)), "q": q, "q_pvalue": float(sps.chi2.sf(q, len(effect) - 1)),
    }


def reml_score(tau2: float, effect: np.ndarray, variance: np.ndarray) -> float:
    """The derivative of the restricted log-likelihood in tau² (0 at the REML estimate inside (0, inf))."""
    w = 1.0 / (variance + tau2)
    mean = w @ effect / w.sum()
    return 0.5 * float(w**2 @ (effect - mean) ** 2 - w.sum() + (w**2).sum() / w.sum())


def _reml_tau2(effect: np.ndarray, variance: np.ndarray) -> float:
    """REML's tau²: the root of its score, or 0 when the likelihood falls from tau² = 0 on."""
    from scipy.optimize import brentq

    if reml_score(0.0, effect, variance) <= 0:
        return 0.0
    high = float(np.var(effect) + variance.max()) or 1.0
    while reml_score(high, effect, variance) > 0:
        high *= 4
    return float(brentq(reml_score, 0.0, high, args=(effect, variance), xtol=1e-14, rtol=1e-14))
