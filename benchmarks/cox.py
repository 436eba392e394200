"""Cox benchmark (issue 17): requests per server, and a server's time per Newton iteration against statsmodels'.

Three in-process servers (``fm.Simulation``: msgpack encoding and the
server's evaluation, no sockets) each hold ``--rows`` rows (default 100k)
of 5 covariates, follow-up in whole days (up to 10 years: at most 3650
distinct event times, as in registry data) and 60% events, under
``example/config-exact.yaml``. It reports, side by side in one run:

- requests per server for one ``fm.stats.coxph`` fit (the servers' own
  ``traffic`` counts) against 1 + Newton iterations;
- per iteration, on one server's fragment, at the fitted coefficients:
  the ``cox_step`` map alone (one sort, cell sums, reverse cumulative sum),
  the whole round (3 servers' requests with msgpack, answers pooled), and statsmodels'
  ``PHReg.score`` + ``PHReg.hessian`` on the same rows;
- the client's time per iteration (pooling the sums, the likelihood terms).

Both tie methods; values are checked against ``PHReg`` on the pooled rows.
Run ``python benchmarks/cox.py`` or ``--rows 20000`` for a quick look. No test
asserts a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np
import pandas as pd
from statsmodels.duration.hazard_regression import PHReg

import fedmed as fm
from fedmed.ops import private
from fedmed.stats.cox import TIES, _derivatives

from .support import median_time

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "example/config-exact.yaml")
X = [f"x{i}" for i in range(1, 6)]


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    hazard = np.exp(x @ np.array([0.3, -0.2, 0.1, 0.0, 0.5]))
    days = np.minimum(np.ceil(rng.exponential(1000 / hazard)), 3650)
    return pd.DataFrame({"t": days, "e": (rng.random(rows) < 0.6) & (days < 3650), **dict(zip(X, x.T))})




def run(rows: int, repeats: int) -> None:
    frames = [frame(rows, seed) for seed in range(3)]
    servers = []
    for df in frames:
        server = fm.Server(config=CONFIG)
        server["d"] = df
        servers.append(server)
    data = fm.FedData([fm.Simulation(s, "d", name=f"h{i}") for i, s in enumerate(servers)], config=CONFIG)
    pooled = pd.concat(frames, ignore_index=True)
    print(f"3 servers x {rows} rows, 5 covariates, {int(pooled.e.sum())} events, "
          f"{pooled.t[pooled.e].nunique()} distinct event times")
    print(f"{'ties':8} {'requests/server':>16} {'1+iter':>7} {'map s':>8} {'round s':>10} "
          f"{'PHReg score+hess s':>19} {'map/PHReg':>10} {'client s':>9} {'max rel diff':>13}")
    for ties in TIES:
        before = [s.traffic.requests for s in servers]
        fit = fm.stats.coxph(data, "t", "e", X, ties=ties).compute()
        requests = [s.traffic.requests - b for s, b in zip(servers, before)]
        reference = PHReg(pooled.t, pooled[X], status=pooled.e.astype(float), ties=ties).fit(tol=1e-12)
        diff = float(np.max(np.abs(fit.params.to_numpy() / reference.params - 1)))
        beta = fit.params.to_numpy()
        one, grid = frames[0], np.unique(pooled.t[pooled.e])
        args = ([float(b) for b in beta], grid.tolist(), TIES[ties], False, *(one[c] for c in X))
        series = (one["t"], one["e"].astype(float))
        on_map = median_time(lambda: private.cox_step(*series, *args), repeats)
        request = data["t"]._aggregate("cox_step", (data["e"], *args[:4], *(data[c] for c in X)))
        on_request = median_time(request.compute, repeats)  # the whole round: 3 servers, their answers pooled
        model = PHReg(one.t, one[X], status=one.e.astype(float), ties=ties)
        on_phreg = median_time(lambda: (model.score(beta), model.hessian(beta)), repeats)
        parts = request.compute()["parts"]
        on_client = median_time(lambda: _derivatives(parts, False, beta, TIES[ties]), repeats)
        print(f"{ties:8} {str(requests):>16} {fit.rounds:>7} {on_map:8.4f} {on_request:10.4f} "
              f"{on_phreg:19.4f} {on_map / on_phreg:10.2f} {on_client:9.4f} {diff:13.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    run(options.rows, options.repeats)


if __name__ == "__main__":
    main()
