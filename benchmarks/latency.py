"""Section 2: wall time with a delay per request (a network round trip), over more and more servers.

Every server, FedMed's and the original's, sleeps ``delay`` (20 ms) in a WSGI
middleware before answering each request. Per server count, the three
variants run side by side in each repeat; the tables give medians and their
ratios. The checks report (they do not assert) whether the optimised plan's
wall time grows by less than 2x from one server to the most, and stays within
1.5x of one round trip per round (a round trip: the median of a few
``GET /v1/info`` to one delayed server, i.e. the delay plus HTTP overhead).
The servers share this machine's cores with each other and the client, so
the optimised plan is timed a second time with every server answering
repeated requests from memory (``hosts.Replay``): the servers' own work is
left out, as with a machine per server, and what remains is the client's
fan-out, waitress and the delay.
"""

from __future__ import annotations

import os
from typing import Any

import requests

import fedmed as fm

from .cluster import ANALYSES, ORIGINAL_SUPPORTS, Cluster
from .compare import VARIANTS, side_by_side, summarize
from .original import Original
from .report import Section, Table, div, ms, ratio
from .support import median, timed

GROWTH_LIMIT = 2.0
PER_ROUND_LIMIT = 1.5


def round_trip(cluster: Cluster, times: int = 7) -> float:
    """Median seconds of ``GET /v1/info`` to the first server (through its delay)."""
    session = requests.Session()
    url = cluster.urls[0] + "/v1/info"
    session.get(url)
    return median(timed(lambda: session.get(url).raise_for_status())[0] for _ in range(times))


def replayed_walls(servers: int, settings: Any) -> dict[str, float]:
    """Median wall time of each analysis's optimised plan, the servers answering repeats from memory."""
    with Cluster(servers, settings.rows, settings.delay, seed=settings.seed, threads=settings.threads,
                 processes=settings.host_processes, replay=True) as cluster:
        walls: dict[str, list[float]] = {a: [] for a in ANALYSES}
        for a in ANALYSES:
            cluster.run(a)  # the servers compute and remember their answers
        for _ in range(settings.latency_repeats):
            for a in ANALYSES:
                walls[a].append(cluster.run(a)["wall"])
    return {a: median(w) for a, w in walls.items()}


def run(settings: Any, original: Original | None, original_note: str) -> Section:
    counts, delay, repeats = settings.latency_servers, settings.delay, settings.latency_repeats
    by_count: dict[int, dict[str, Any]] = {}
    for n in counts:
        with Cluster(n, settings.rows, delay, seed=settings.seed, threads=settings.threads,
                     processes=settings.host_processes) as cluster:
            rtt = round_trip(cluster)
            rounds = {a: cluster.plan(a)[0] for a in ANALYSES}
            if original is not None:
                original.start(n, settings.rows, delay, settings.seed)
                original.run("mean")  # warm-up
            side_by_side(cluster, None, 1)  # warm-up
            runs = side_by_side(cluster, original, repeats)
        replayed = replayed_walls(n, settings)
        by_count[n] = {
            "round_trip": rtt,
            "replayed": replayed,
            "analyses": {a: {"rounds": rounds[a], **{v: summarize(runs[a][v]) for v in VARIANTS}} for a in ANALYSES},
        }

    def wall(n: int, a: str, v: str) -> float | None:
        s = by_count[n]["analyses"][a][v]
        return s["wall_median"] if s and "error" not in s else None

    rows = []
    for n in counts:
        for a in ANALYSES:
            opt, naive, orig = (wall(n, a, v) for v in VARIANTS)
            if a not in ORIGINAL_SUPPORTS:
                orig_cell = orig_ratio = "n/a"
            elif orig is None:
                orig_cell, orig_ratio = "not run" if original is None else "failed", "n/a"
            else:
                orig_cell, orig_ratio = ms(orig), ratio(div(orig, opt))
            rows.append([n, ANALYSES[a][0], by_count[n]["analyses"][a]["rounds"], ms(opt), ms(naive), orig_cell,
                         ratio(div(naive, opt)), orig_ratio])
    walls = Table(
        f"Wall time, ms, with {1000 * delay:g} ms per request (median of {repeats})",
        ["servers", "analysis", "rounds", "optimised", "naive", "original 0.3.2", "naive / optimised",
         "original / optimised"],
        rows,
    )

    first, last = counts[0], counts[-1]
    rtt = by_count[first]["round_trip"]
    checks, check_data = [], {}
    for a in ANALYSES:
        growth = div(wall(last, a, "optimised"), wall(first, a, "optimised"))
        w0, w1 = wall(first, a, "optimised"), wall(last, a, "optimised")
        slope = None if w0 is None or w1 is None or last == first else (w1 - w0) / (last - first)
        per_round = {n: div(wall(n, a, "optimised"), by_count[n]["analyses"][a]["rounds"] * rtt) for n in counts}
        replay_growth = div(by_count[last]["replayed"][a], by_count[first]["replayed"][a])
        single = all(by_count[n]["analyses"][a]["rounds"] == 1 for n in counts)
        within = all(r is not None and r <= PER_ROUND_LIMIT for r in per_round.values())
        check_data[a] = {"growth": growth, "seconds_per_added_server": slope, "growth_below_limit": growth is not None and growth < GROWTH_LIMIT,
                         "wall_per_round_trip": {str(n): r for n, r in per_round.items()},
                         "single_round": single, "within_per_round_limit": within if single else None,
                         "replayed_growth": replay_growth,
                         "replayed_growth_below_limit": replay_growth is not None and replay_growth < GROWTH_LIMIT}
        checks.append([
            ANALYSES[a][0], ms(wall(first, a, "optimised")), ms(wall(last, a, "optimised")), ratio(growth),
            "yes" if check_data[a]["growth_below_limit"] else "no", ms(slope),
            ratio(per_round[first]), ratio(per_round[last]),
            ("yes" if within else "no") if single else "n/a (several rounds)",
            ms(by_count[first]["replayed"][a]), ms(by_count[last]["replayed"][a]), ratio(replay_growth),
            "yes" if check_data[a]["replayed_growth_below_limit"] else "no",
        ])
    check_table = Table(
        f"Checks on the optimised plan (reported, not asserted); one round trip = {ms(rtt)} ms",
        ["analysis", f"ms, {first} server{'s' if first > 1 else ''}", f"ms, {last} servers",
         f"growth {first} -> {last}", f"< {GROWTH_LIMIT:g}x?", "ms per added server", f"wall / round trip, {first}",
         f"wall / round trip, {last}", f"<= {PER_ROUND_LIMIT:g}x at every count?",
         f"replayed: ms, {first}", f"replayed: ms, {last}", f"replayed: growth {first} -> {last}",
         f"replayed: < {GROWTH_LIMIT:g}x?"],
        checks,
    )
    notes = [
        f"FedMed's servers run in {settings.host_processes} child processes and the client in this one, on a "
        f"{os.cpu_count()}-core machine: the servers' CPU work (HTTP, evaluation, encoding; about 2 ms per request) "
        "shares these cores with the client, which separate machines would do in parallel. The original's "
        "servers and client share its driver's process.",
        f"{settings.rows:,} rows per server; each waitress server has {settings.threads} threads, so a naive plan's "
        "parallel requests to one server queue once they outnumber the threads.",
        f"FedMed sends each round's requests to all servers at once (up to {fm.options.max_parallel_requests} in "
        "parallel); the original sends its requests one server after another.",
        "Replayed: the optimised plan again, every server answering a repeated request with the bytes it sent "
        "the first time (its HTTP handling by waitress and the delay remain; its evaluation does not), "
        f"median of {repeats}. Replayed wall times per server count (ms): "
        + "; ".join(f"{n}: " + ", ".join(f"{ANALYSES[a][0]} {ms(by_count[n]['replayed'][a])}" for a in ANALYSES)
                    for n in counts) + ".",
        "Round trip per server count (ms): " + ", ".join(f"{n}: {ms(by_count[n]['round_trip'])}" for n in counts) + ".",
        f"Original: {original_note}.",
    ]
    return Section(
        "latency", "2. Latency", __doc__.split("\n\n", 1)[1].replace("\n", " ").strip(), [walls, check_table], notes,
        {"delay": delay, "repeats": repeats, "rows_per_server": settings.rows, "servers": list(counts),
         "by_servers": {str(n): v for n, v in by_count.items()}, "checks": check_data},
    )
