"""Cox benchmark (issue 17): requests per server, and a server's time per Newton iteration against statsmodels'.

Three in-process servers (``fm.Simulation``: msgpack encoding and the
server's evaluation, no sockets) each hold ``--rows`` rows (default 100k)
of 5 covariates, follow-up in whole days (up to 10 years: at most 3650
distinct event times, as in registry data) and 60% events. It reports two
tables in one run.

Under ``example/config-exact.yaml`` (exact times, no policies):

- requests per server for one ``fm.stats.coxph`` fit (the servers' own
  ``traffic`` counts) against its Newton iterations: one request each,
  no round for a grid of event times;
- per iteration, on one server's fragment, at the fitted coefficients:
  the ``cox_step`` map alone (one sort, sums per time cell),
  the whole round (3 servers' requests with msgpack, answers as arrays),
  and statsmodels' ``PHReg.score`` + ``PHReg.hessian`` on the same rows;
- the client's time per iteration (adding the servers' cells per time,
  summing them backwards into risk sets, the likelihood terms).

Under ``example/config.yaml`` (Anonymity k=5, Dominance), on fresh servers
holding the same fragments, per fit: requests per server (one for the
ladder of ``LADDER`` binnings, then one per Newton iteration), the ladder
round's time and the Newton rounds' time, the binning chosen
(``fit.extra["bin_width"]``) and the event bins it keeps, and the growth
of the process's peak RSS (0: below an earlier peak). The ladder's
``cox_bins`` tasks are judged without ``beta``; a Newton round weighs its
sums by ``exp(x'beta)``, and a fit a round's sums are refused for shows
the rule instead of its numbers.

Both tie methods. Exact fits are checked against ``PHReg`` on the pooled
rows; binned fits against ``PHReg`` on the pooled times moved down to the
start of their bins (``fedmed.ops.cox.binned``: they should agree to
rounding) and on the exact times (what the binning costs, also in the
exact fit's standard errors). Run
``python benchmarks/cox.py`` or ``--rows 20000`` for a quick look. No test
asserts a time.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np
import pandas as pd
from statsmodels.duration.hazard_regression import PHReg

import fedmed as fm
from fedmed.errors import PrivacyWarning
from fedmed.ops import cox, private
from fedmed.stats.cox import LADDER, TIES, _derivatives

from .support import median, median_time, timed

ROOT = Path(__file__).resolve().parents[1]
EXACT = str(ROOT / "example/config-exact.yaml")
POLICIES = str(ROOT / "example/config.yaml")
X = [f"x{i}" for i in range(1, 6)]


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    hazard = np.exp(x @ np.array([0.3, -0.2, 0.1, 0.0, 0.5]))
    days = np.minimum(np.ceil(rng.exponential(1000 / hazard)), 3650)
    return pd.DataFrame({"t": days, "e": (rng.random(rows) < 0.6) & (days < 3650), **dict(zip(X, x.T))})


def federation(frames: list[pd.DataFrame], config: str) -> tuple[list[fm.Server], fm.FedData]:
    """New servers holding ``frames`` under ``config``, and the FedData over them."""
    servers = []
    for df in frames:
        server = fm.Server(config=config)
        server["d"] = df
        servers.append(server)
    return servers, fm.FedData([fm.Simulation(s, "d", name=f"h{i}") for i, s in enumerate(servers)], config=config)


def phreg(pooled: pd.DataFrame, times: pd.Series, ties: str):
    return PHReg(times, pooled[X], status=pooled.e.astype(float), ties=ties).fit(tol=1e-12)


def max_rel_diff(fit, reference) -> float:
    return float(np.max(np.abs(fit.params.to_numpy() / reference.params - 1)))


def standard_errors(fit, reference) -> float:
    """The largest change of a coefficient in the reference's standard errors: a relative difference
    overstates the change of a coefficient near 0."""
    return float(np.max(np.abs(fit.params.to_numpy() - reference.params) / reference.bse))


def run(rows: int, repeats: int) -> None:
    frames = [frame(rows, seed) for seed in range(3)]
    pooled = pd.concat(frames, ignore_index=True)
    print(f"3 servers x {rows} rows, 5 covariates, {int(pooled.e.sum())} events, "
          f"{pooled.t[pooled.e].nunique()} distinct event times")
    exact = {ties: phreg(pooled, pooled.t, ties) for ties in TIES}
    exact_config(frames, pooled, exact, repeats)
    policy_config(frames, pooled, exact, repeats)


def exact_config(frames: list[pd.DataFrame], pooled: pd.DataFrame, exact: dict, repeats: int) -> None:
    servers, data = federation(frames, EXACT)
    print("\nunder example/config-exact.yaml (exact times); per iteration on one server's fragment")
    print(f"{'ties':8} {'requests/server':>16} {'iterations':>10} {'map s':>8} {'round s':>10} "
          f"{'PHReg score+hess s':>19} {'map/PHReg':>10} {'client s':>9} {'max rel diff':>13}")
    for ties in TIES:
        before = [s.traffic.requests for s in servers]
        fit = fm.stats.coxph(data, "t", "e", X, ties=ties).compute()
        requests = [s.traffic.requests - b for s, b in zip(servers, before)]
        beta = fit.params.to_numpy()
        one = frames[0]
        args = ([float(b) for b in beta], TIES[ties], False, 0.0, *(one[c] for c in X))
        series = (one["t"], one["e"].astype(float))
        on_map = median_time(lambda: private.cox_step(*series, *args), repeats)
        request = data["t"]._aggregate("cox_step", (data["e"], *args[:4], *(data[c] for c in X)))
        on_request = median_time(request.compute, repeats)  # the whole round: 3 servers, their answers as arrays
        model = PHReg(one.t, one[X], status=one.e.astype(float), ties=ties)
        on_phreg = median_time(lambda: (model.score(beta), model.hessian(beta)), repeats)
        parts = request.compute()
        on_client = median_time(lambda: _derivatives(parts, False, beta, TIES[ties], len(pooled)), repeats)
        print(f"{ties:8} {str(requests):>16} {fit.rounds:>10} {on_map:8.4f} {on_request:10.4f} "
              f"{on_phreg:19.4f} {on_map / on_phreg:10.2f} {on_client:9.4f} {max_rel_diff(fit, exact[ties]):13.2e}")


def policy_config(frames: list[pd.DataFrame], pooled: pd.DataFrame, exact: dict, repeats: int) -> None:
    print(f"\nunder example/config.yaml (Anonymity k=5, Dominance); median of {repeats} fits, each on new servers "
          f"(CacheLimit answers a repeated question from its cache); ladder of {len(LADDER)} binnings")
    print(f"{'ties':8} {'requests/server':>16} {'iterations':>10} {'ladder s':>9} {'Newton s':>9} {'fit s':>8} "
          f"{'event bins':>10} {'vs binned':>10} {'vs exact':>9} {'exact SEs':>10} {'peak RSS +MiB':>14}  binning")
    for ties in TIES:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        runs = [policy_fit(frames, ties) for _ in range(repeats)]
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
        first = runs[0]
        ladder, total = (median(r[key] for r in runs) for key in ("ladder", "total"))
        head = f"{ties:8} {str(first['requests']):>16}"
        if first["refused"]:  # the ladder's binning passed, a Newton round's sums (weighed at beta) did not
            print(f"{head} {'-':>10} {ladder:9.3f} {total - ladder:9.3f} {total:8.3f} {'-':>10} {'-':>10} {'-':>9} "
                  f"{'-':>10} {grown:14.0f}  {cox.describe_bins(first['bins'])}; refused: {first['refused']}")
            continue
        fit, bins = first["fit"], first["bins"]
        binned = phreg(pooled, pd.Series(cox.binned(pooled.t.to_numpy(), bins)), ties)
        print(f"{head} {fit.iterations:>10} {ladder:9.3f} {total - ladder:9.3f} {total:8.3f} "
              f"{fit.extra['grid_times']:>10} {max_rel_diff(fit, binned):10.2e} "
              f"{max_rel_diff(fit, exact[ties]):9.2e} {standard_errors(fit, exact[ties]):10.3f} {grown:14.0f}  "
              f"{cox.describe_bins(bins)}")


def policy_fit(frames: list[pd.DataFrame], ties: str) -> dict:
    """One fit on new servers under ``POLICIES``: its result (or the refusal that stopped it), requests per
    server, the binning chosen, the ladder's and the whole fit's seconds. The ladder is timed inside the
    fit's own ``compute`` (the same requests, no extra one)."""
    servers, data = federation(frames, POLICIES)
    model = fm.stats.coxph(data, "t", "e", X, ties=ties)
    out: dict = {"fit": None, "refused": ""}
    ladder = model._ladder

    def timed_ladder():
        out["ladder"], out["bins"] = timed(ladder)
        return out["bins"]

    model._ladder = timed_ladder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # the note that times are binned: the table says so
        started = time.perf_counter()
        try:
            out["fit"] = model.compute()
        except fm.PrivacyError as error:
            out["refused"] = str(error).split(" [")[0]  # the rule, without the server and the whole operation
        out["total"] = time.perf_counter() - started
    out["requests"] = [s.traffic.requests for s in servers]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    run(options.rows, options.repeats)


if __name__ == "__main__":
    main()
