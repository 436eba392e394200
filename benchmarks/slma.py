"""SLMA benchmark: requests per server of a logit meta-analysis over 8 servers, beside the pooled logit.

Synthetic patients (age, BMI, a binary outcome whose intercept differs by
site) are split unevenly over 8 in-process ``fm.Server`` s (``fm.Simulation``:
msgpack encoding and the server's evaluation, no sockets). Side by side in
one run, under ``example/config-exact.yaml`` and (with ``--privacy``)
``example/config.yaml``:

- **SLMA**: ``fm.stats.slma(fm.stats.logit, ...)``: each server fits its own
  logit to convergence in one request;
- **pooled logit**: ``fm.stats.logit`` on the same data: one request per
  Newton iteration;
- **statsmodels per site**: ``sm.Logit`` fitted on each site's frame in turn,
  the same work the servers do, without FedMed.

It prints requests per server (counted on the servers), the median wall time
and the largest difference from statsmodels of the per-site coefficients.
Run ``python benchmarks/slma.py`` (8 x 50k rows, 3 repeats) or ``--rows 5000``
for a quick look. No test asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import statistics
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import numpy as np
import pandas as pd

import fedmed as fm

from .support import timed


ROOT = Path(__file__).resolve().parents[1]
SHARES = np.array([0.05, 0.08, 0.1, 0.12, 0.13, 0.15, 0.17, 0.2])  # uneven sites
X = ["age", "bmi"]


def sites(rows: int, seed: int = 0) -> list[pd.DataFrame]:
    rng = np.random.default_rng(seed)
    frames = []
    for i, share in enumerate(SHARES):
        n = max(int(rows * share * len(SHARES)), 50)
        age, bmi = rng.uniform(30, 80, n), rng.normal(27, 4, n)
        eta = -9.0 + 0.3 * (i % 3) + 0.08 * age + 0.12 * bmi
        frames.append(pd.DataFrame({"age": age, "bmi": bmi, "y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)}))
    return frames


def federation(frames: list[pd.DataFrame], config: str) -> tuple[list[fm.Server], fm.FedData]:
    servers, sources = [], []
    for i, frame in enumerate(frames):
        server = fm.Server(config=str(ROOT / config))
        server["d"] = frame
        servers.append(server)
        sources.append(fm.Simulation(server, "d", name=f"site{i}"))
    return servers, fm.FedData(sources, config=str(ROOT / config))




def run(rows: int, repeats: int, privacy: bool) -> None:
    import statsmodels.api as sm

    frames = sites(rows)
    reference = lambda: [sm.Logit(f["y"], sm.add_constant(f[X])).fit(disp=0, tol=1e-12).params for f in frames]  # noqa: E731
    configs = ["example/config-exact.yaml"] + (["example/config.yaml"] if privacy else [])
    print(f"logit y ~ age + bmi over 8 servers, {sum(map(len, frames))} rows ({min(map(len, frames))}"
          f" to {max(map(len, frames))} per server), median of {repeats}")
    print(f"{'':34} {'requests/server':>16} {'seconds':>9} {'max |site - statsmodels|':>25}")
    times, expected = zip(*(timed(reference) for _ in range(repeats)))
    print(f"{'statsmodels, per site in turn':34} {'-':>16} {statistics.median(times):9.3f} {'-':>25}")
    for config in configs:
        for label, build in (("SLMA", lambda d: fm.stats.slma(fm.stats.logit, d, y="y", X=X)),
                             ("pooled logit", lambda d: fm.stats.logit(d, y="y", X=X))):
            seconds, counts, result = [], None, None
            for _ in range(repeats):
                servers, data = federation(frames, config)
                elapsed, result = timed(build(data).compute)
                seconds.append(elapsed)
                counts = sorted({s.traffic.requests for s in servers})
            diff = "-"
            if label == "SLMA":
                diff = f"{max(np.max(np.abs(result.sites.iloc[i].to_numpy() - e.to_numpy())) for i, e in enumerate(expected[0])):.1e}"
            print(f"{label + ' (' + Path(config).stem + ')':34} {'/'.join(map(str, counts)):>16} "
                  f"{statistics.median(seconds):9.3f} {diff:>25}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per server on average")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--privacy", action="store_true", help="also under example/config.yaml")
    args = parser.parse_args()
    run(args.rows, args.repeats, args.privacy)


if __name__ == "__main__":
    main()
