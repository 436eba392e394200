"""Side by side: each analysis with FedMed's optimised plan, its naive plan and the original, per repeat.

The three run one after another inside each repeat, so all three see the
same moment of a noisy machine; ``summarize`` turns the repeats of one
variant into exact counts, the median wall time and the value.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .cluster import ANALYSES, ORIGINAL_SUPPORTS, Cluster, comparable
from .original import Original
from .support import median

VARIANTS = ("optimised", "naive", "original")


def side_by_side(
    cluster: Cluster, original: Original | None, repeats: int, analyses: Sequence[str] = tuple(ANALYSES)
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``runs[analysis][variant]``: one entry per repeat (the original only where it has the analysis)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {a: {v: [] for v in VARIANTS} for a in analyses}
    for _ in range(repeats):
        for a in analyses:
            for variant, optimize in (("optimised", True), ("naive", False)):
                result = cluster.run(a, optimize)
                result["value"] = comparable(a, result["value"])
                runs[a][variant].append(result)
            if original is not None and a in ORIGINAL_SUPPORTS:
                result = original.run(a)
                if "value" in result:
                    value = result["value"]
                    result["value"] = [float(v) for v in value] if isinstance(value, list) else [float(value)]
                runs[a]["original"].append(result)
    return runs


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Counts (checked equal across repeats), median and all wall times, the value; or the error."""
    if not runs:
        return None
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"]}
    first = ok[0]
    counts = ("requests_per_server", "bytes_in", "bytes_out")
    servers = len(first["requests_per_server"])
    return {
        "requests_per_server": max(first["requests_per_server"]),
        "requests_per_server_all": first["requests_per_server"],
        "requests": sum(first["requests_per_server"]),
        "bytes_in_per_server": first["bytes_in"] / servers,
        "bytes_out_per_server": first["bytes_out"] / servers,
        "counts_equal_across_repeats": all(all(r[c] == first[c] for c in counts) for r in ok),
        "wall_median": median(r["wall"] for r in ok),
        "walls": [r["wall"] for r in ok],
        "failed_repeats": len(runs) - len(ok),
        "value": first["value"],
    }


def largest_difference(a: Sequence[float], b: Sequence[float]) -> float:
    """The largest relative difference between two results (nan counts as equal to nan)."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if math.isnan(x) and math.isnan(y):
            continue
        worst = max(worst, abs(x - y) / max(abs(x), abs(y), 1e-300))
    return worst
