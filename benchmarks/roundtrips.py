"""Section 1: round trips and bytes of each analysis over real waitress servers on loopback.

For FedMed's optimised and naive plans: requests per server and rounds
(``explain()`` states them; the servers' ``traffic`` counts confirm the
requests), request and response body bytes per server (``server.traffic``).
For the original fedmed 0.3.2: the same counts taken by a WSGI middleware;
it sends every operation to one server after another, so all its requests
are sequential round trips. Wall times without added delay, side by side.
"""

from __future__ import annotations

from typing import Any, Callable

from .cluster import ANALYSES, ORIGINAL_SUPPORTS, Cluster
from .compare import VARIANTS, largest_difference, side_by_side, summarize
from .original import Original
from .report import Section, Table, div, ms, ratio


def run(settings: Any, original: Original | None, original_note: str) -> Section:
    n, rows = settings.servers, settings.rows
    with Cluster(n, rows, seed=settings.seed, threads=settings.threads, processes=settings.host_processes) as cluster:
        if original is not None:
            original.start(n, rows, 0.0, settings.seed)
            original.run("mean")  # warm-up: the original's first requests set Flask up
        plans = {a: {v: cluster.plan(a, v == "optimised") for v in ("optimised", "naive")} for a in ANALYSES}
        side_by_side(cluster, None, 1)  # warm-up: connections, imports
        runs = side_by_side(cluster, original, settings.roundtrip_repeats)
    results = {a: {v: summarize(runs[a][v]) for v in VARIANTS} for a in ANALYSES}
    for a, result in results.items():
        for v in ("optimised", "naive"):
            rounds, requests = plans[a][v]
            result[v].update(rounds=rounds, explain_requests=requests)
        o = result["original"]
        if o and "error" not in o:
            o["rounds"] = o["requests"]  # one server after another: each request is its own round trip
            o["largest_relative_difference_to_fedmed"] = largest_difference(o["value"], result["optimised"]["value"])

    def fedmed(a: str, v: str, key: str, fmt: Callable[[Any], str] = str) -> str:
        return fmt(results[a][v][key])

    def original_cell(a: str, key: str, fmt: Callable[[Any], str] = str) -> str:
        o = results[a]["original"]
        if a not in ORIGINAL_SUPPORTS:
            return "n/a"
        return "not run" if o is None else "failed" if "error" in o else fmt(o[key])

    def count(v: float) -> str:
        return f"{v:,.0f}"

    def agreement(d: float) -> str:
        return f"same (rel. diff {d:.0e})" if d < 1e-9 else f"differs (rel. diff {d:.1e})"

    requests = Table(
        "Requests per server and rounds (exact)",
        ["analysis", "requests/server optimised", "naive", "original 0.3.2",
         "rounds optimised", "naive", "original (sequential)", "original's value vs FedMed"],
        [[ANALYSES[a][0], fedmed(a, "optimised", "requests_per_server"), fedmed(a, "naive", "requests_per_server"),
          original_cell(a, "requests_per_server"), fedmed(a, "optimised", "rounds"), fedmed(a, "naive", "rounds"),
          original_cell(a, "rounds"), original_cell(a, "largest_relative_difference_to_fedmed", agreement)]
         for a in ANALYSES],
    )
    volume = Table(
        "Bytes per server (HTTP bodies, exact)",
        ["analysis", "request optimised", "naive", "original 0.3.2", "response optimised", "naive", "original 0.3.2"],
        [[ANALYSES[a][0], *(fedmed(a, v, "bytes_in_per_server", count) for v in ("optimised", "naive")),
          original_cell(a, "bytes_in_per_server", count),
          *(fedmed(a, v, "bytes_out_per_server", count) for v in ("optimised", "naive")),
          original_cell(a, "bytes_out_per_server", count)]
         for a in ANALYSES],
    )

    def wall(a: str, v: str) -> float | None:
        s = results[a][v]
        return s["wall_median"] if s and "error" not in s else None

    walls = Table(
        f"Wall time without added delay, ms (median of {settings.roundtrip_repeats})",
        ["analysis", "optimised", "naive", "original 0.3.2", "naive / optimised", "original / optimised"],
        [[ANALYSES[a][0], ms(wall(a, "optimised")), ms(wall(a, "naive")), original_cell(a, "wall_median", ms),
          ratio(div(wall(a, "naive"), wall(a, "optimised"))),
          ratio(div(wall(a, "original"), wall(a, "optimised"))) if a in ORIGINAL_SUPPORTS else "n/a"]
         for a in ANALYSES],
    )
    stated = all(results[a][v]["explain_requests"] == results[a][v]["requests"] for a in ANALYSES
                 for v in ("optimised", "naive"))
    notes = [
        f"{n} servers, {rows:,} rows each (columns x, y, z, w, g); FedMed servers use the default config "
        "(no privacy policies), the original's `privacy: []`.",
        "FedMed's rounds come from `explain()`; the requests it states "
        + ("equal those the servers counted." if stated else "differ from those the servers counted (see the JSON)."),
        "The original sends each operation to one server after another, so its requests are all sequential.",
        "The original cannot filter rows: its t-test reads x split by g into two fragments per server "
        "(FedMed filters `x[g == 1]`, `x[g == 0]` on the server). It has no correlation matrix or regression (n/a).",
        f"Original: {original_note}.",
    ]
    notes += [f"Original failed on {a}: {results[a]['original']['error']}" for a in ANALYSES
              if results[a]["original"] and "error" in results[a]["original"]]
    if not all(r[v]["counts_equal_across_repeats"] for r in results.values() for v in VARIANTS
               if r[v] and "error" not in r[v]):
        notes.append("Some counts differed between repeats (see the JSON).")
    return Section(
        "roundtrips", "1. Round trips and bytes", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(),
        [requests, volume, walls], notes,
        {"servers": n, "rows_per_server": rows, "repeats": settings.roundtrip_repeats, "analyses": results},
    )
