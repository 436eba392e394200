"""The FedMed side: real waitress servers on loopback holding the synthetic cohort, and the analyses.

``Cluster(n, rows, delay)`` starts ``n`` default-config servers (no privacy
policies, as the original's ``privacy: []``), each holding one fragment
``"cohort"`` (a DataFrame of ``support.COLUMNS``) behind
``support.Middleware`` (the delay per request), served by waitress in
child processes (``hosts.Hosts``: the client's process does only the
client's work, as on a machine of its own; ``replay=True`` answers repeated
requests from memory, ``hosts.Replay``). ``Cluster.run`` computes one
analysis with the optimised or the naive plan and returns its wall time,
its value and the servers' exact traffic.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import fedmed as fm
from .hosts import Hosts
from .support import run_record, timed

#: Each analysis, built from the FedData of the cohort; labels as in the tables.
ANALYSES: dict[str, tuple[str, Callable[[fm.FedData], fm.LazyResult]]] = {
    "mean": ("mean", lambda d: fm.stats.mean(d["x"])),
    "std": ("std (var)", lambda d: fm.stats.std(d["x"])),
    "describe": ("describe", lambda d: fm.stats.describe(d["x"])),
    "pearson": ("pearson", lambda d: fm.stats.pearson(d["x"], d["y"])),
    "welch": ("Welch t-test", lambda d: fm.stats.ttest_ind(d["x"][d["g"] == 1], d["x"][d["g"] == 0], equal_var=False)),
    "corr": ("corr matrix, 4 columns", lambda d: fm.stats.corr(d, ["x", "y", "z", "w"])),
    "ols": ("OLS, 3 predictors", lambda d: fm.stats.ols(d, "y", ["x", "z", "w"])),
}

#: What the original fedmed 0.3.2 can compute (``original_driver.ANALYSES``); corr and OLS it cannot.
ORIGINAL_SUPPORTS = ("mean", "std", "describe", "pearson", "welch")

_PLAN = re.compile(r"(\d+) rounds? · (\d+) requests?")


def comparable(name: str, value: Any) -> list[float]:
    """A FedMed result as the plain numbers the original's driver returns for the same analysis."""
    if name == "describe":
        return [float(value[k]) for k in ("count", "mean", "std", "min", "max")]
    if name == "welch":
        return [value.statistic, value.pvalue]
    if name == "corr":
        return [float(v) for v in value.to_numpy().ravel()]
    if name == "ols":
        return [float(v) for v in value.params]
    return [float(value)]


class Cluster:
    """``servers`` FedMed servers on loopback, each delaying every request by ``delay`` seconds."""

    def __init__(self, servers: int, rows: int, delay: float = 0.0, seed: int = 2024, threads: int = 4,
                 processes: int = 2, replay: bool = False) -> None:
        self.hosts = Hosts(servers, processes, delay, rows=rows, replay=replay, fragment="cohort", seed=seed,
                           threads=threads)
        self.urls = self.hosts.urls
        sources = [fm.Remote(ip=url, fragment="cohort") for url in self.urls]
        # made once, as an analyst would: FedData() reads its config, which is not what is measured
        self._data = {optimize: fm.FedData(sources, optimize=optimize) for optimize in (True, False)}

    def data(self, optimize: bool = True) -> fm.FedData:
        return self._data[optimize]

    def plan(self, analysis: str, optimize: bool = True) -> tuple[int, int]:
        """``(rounds, requests)`` as ``explain()`` states them (nothing is sent)."""
        header = ANALYSES[analysis][1](self.data(optimize)).explain().splitlines()[0]
        found = _PLAN.search(header)
        assert found, header
        return int(found.group(1)), int(found.group(2))

    def run(self, analysis: str, optimize: bool = True) -> dict[str, Any]:
        """Build and compute ``analysis``: wall seconds, value, and per-server traffic of this call."""
        before = self.hosts.traffic()[0]
        build = ANALYSES[analysis][1]
        wall, value = timed(lambda: build(self.data(optimize)).compute())
        after = self.hosts.traffic()[0]
        return run_record(wall, value, [{k: a[k] - b[k] for k in a} for a, b in zip(after, before)])

    def close(self) -> None:
        self.hosts.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
