"""GLM families benchmark (issue 17): requests per server, and a server's time per IRLS round against statsmodels'.

Three in-process servers (``fm.Simulation``: msgpack encoding and the
server's evaluation, no sockets) each hold ``--rows`` rows (default 100k) of
4 covariates, under ``example/config-exact.yaml``. Two models:

- a gamma GLM with the log link (a skewed cost);
- a Poisson GLM with an exposure (counts over a follow-up time; its log joins the offset).

Side by side in one run, for each model:

- requests per server for one ``fm.stats.glm`` fit (the servers' own
  ``traffic`` counts) against its IRLS iterations;
- per round, on one server's fragment, at the fitted coefficients: the
  ``glm_family_step`` map alone, and the whole round (3 servers' requests with
  msgpack, answers pooled);
- statsmodels ``GLM(...).fit()`` on the same fragment: its time per IRLS
  iteration (the whole fit divided by its iterations) and its iterations.

Coefficients are checked against statsmodels on the pooled rows. Run
``python benchmarks/glm.py`` or ``--rows 20000`` for a quick look. No test
asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np
import pandas as pd
import statsmodels.api as sm

import fedmed as fm
from fedmed.ops import private

from .support import median_time

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "example/config-exact.yaml")
X = [f"x{i}" for i in range(1, 5)]
BETA = np.array([0.3, -0.2, 0.1, 0.0])


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4))
    eta = 0.5 + x @ BETA
    years = rng.uniform(0.5, 5.0, rows)
    return pd.DataFrame({"cost": rng.gamma(2.0, np.exp(eta) / 2.0), "visits": rng.poisson(years * np.exp(eta - 1.0)),
                         "years": years, **dict(zip(X, x.T))}).astype(float)


#: name: (y, glm keywords, statsmodels family, statsmodels keywords from a frame)
MODELS = {
    "gamma log": ("cost", {"family": "gamma", "link": "log"}, sm.families.Gamma(sm.families.links.Log()), {}),
    "poisson exposure": ("visits", {"family": "poisson", "exposure": "years"}, sm.families.Poisson(),
                         {"exposure": "years"}),
}




def statsmodels_fit(df: pd.DataFrame, y: str, family, extra: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sm.GLM(df[y], sm.add_constant(df[X]), family=family, **{k: df[v] for k, v in extra.items()}).fit()


def run(rows: int, repeats: int) -> None:
    frames = [frame(rows, seed) for seed in range(3)]
    servers = []
    for df in frames:
        server = fm.Server(config=CONFIG)
        server["d"] = df
        servers.append(server)
    data = fm.FedData([fm.Simulation(s, "d", name=f"h{i}") for i, s in enumerate(servers)], config=CONFIG)
    pooled, one = pd.concat(frames, ignore_index=True), frames[0]
    print(f"3 servers x {rows} rows, {len(X)} covariates + intercept; per round on one server's fragment")
    print(f"{'model':17} {'requests/server':>16} {'iter':>5} {'map s':>8} {'round s':>8} {'sm s/iter':>10} "
          f"{'sm iter':>8} {'map/sm':>7} {'fit s':>7} {'sm fit s':>9} {'max rel diff':>13}")
    for name, (y, keywords, family, extra) in MODELS.items():
        before = [s.traffic.requests for s in servers]
        start = time.perf_counter()
        fit = fm.stats.glm(data, y, X, **keywords).compute()
        on_fit = time.perf_counter() - start
        requests = [s.traffic.requests - b for s, b in zip(servers, before)]
        reference = statsmodels_fit(pooled, y, family, extra)
        diff = float(np.max(np.abs(fit.params.to_numpy() / reference.params.to_numpy() - 1)))
        beta = [float(b) for b in fit.params]
        roles = ["offset"] if "exposure" in keywords else []
        columns = [np.log(one["years"])] if roles else []
        link = keywords.get("link", "log")
        on_map = median_time(lambda: private.glm_family_step(one[y], keywords["family"], link, True, beta, 1.0,
                                                             False, roles, *columns, *(one[c] for c in X)), repeats)
        model = fm.stats.glm(data, y, X, **keywords)
        on_round = median_time(lambda: model._step(np.asarray(beta)).compute(), repeats)
        site = statsmodels_fit(one, y, family, extra)
        on_sm = median_time(lambda: statsmodels_fit(one, y, family, extra), repeats)
        iterations = site.fit_history["iteration"]
        on_pooled_sm = median_time(lambda: statsmodels_fit(pooled, y, family, extra), 1)
        print(f"{name:17} {str(requests):>16} {fit.iterations:>5} {on_map:8.4f} {on_round:8.4f} "
              f"{on_sm / iterations:10.4f} {iterations:>8} {on_map / (on_sm / iterations):7.2f} {on_fit:7.3f} "
              f"{on_pooled_sm:9.3f} {diff:13.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    run(options.rows, options.repeats)


if __name__ == "__main__":
    main()
