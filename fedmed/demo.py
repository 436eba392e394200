"""``fedmed demo``: two real servers on loopback, a short analysis, its plan, and a clean stop."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .backend import Remote
from .lazy import FedData, compute
from .server import Server
from .serving import BackgroundServer


def cohort(seed: int, rows: int) -> pd.DataFrame:
    """A small synthetic cohort (age, bmi, sex, smoker) for demos and examples."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "bmi": np.round(rng.normal(26.5, 4.0, rows), 1),
            "sex": rng.choice(["F", "M"], rows),
            "smoker": rng.random(rows) < 0.2,
        }
    )


def run(print_: "callable" = print) -> dict[str, float]:  # type: ignore[valid-type]
    """Start two servers, run the analysis, print results and plan, stop the servers."""
    fragments = [cohort(1, 120), cohort(2, 80)]
    servers = [Server(), Server()]
    servers[0]["cohort 1/2"], servers[1]["cohort 2/2"] = fragments
    running = [BackgroundServer(s.app) for s in servers]
    try:
        data = FedData(
            [Remote(ip=running[0].url, fragment="cohort 1/2"), Remote(ip=running[1].url, fragment="cohort 2/2")]
        )
        age = data["age"]
        mean = age.sum() / age.len()
        variance = ((age - mean) ** 2).sum() / (age.len() - 1)
        older_bmi = data[age >= 65]["bmi"]
        mean_bmi_65 = older_bmi.sum() / older_bmi.count()
        print_(f"FedMed demo: 2 servers on {running[0].url} and {running[1].url}\n")
        results = dict(zip(("mean age", "sd of age", "mean BMI at 65+"), compute(mean, variance**0.5, mean_bmi_65)))
        pooled = pd.concat(fragments)  # only possible here because the demo made the data
        check = (pooled["age"].mean(), pooled["age"].std(), pooled[pooled["age"] >= 65]["bmi"].mean())
        print_(f"{'':>16}  {'FedMed':>10}  {'pandas on pooled data':>22}")
        for (label, value), expected in zip(results.items(), check):
            print_(f"{label:>16}: {value:10.4f}  {expected:22.4f}")
        requests = sum(s.traffic.requests for s in servers)
        print_(f"\n{requests} requests in all ({requests // 2} per server: rounds = dependency depth)\n")
        print_(mean.explain())
        print_("\nThe standard deviation needs the mean first, so it takes two rounds:\n")
        print_((variance**0.5).explain())
        return results
    finally:
        for r in running:
            r.stop()
