"""Memory per request: what each request shape of issue 14, and an honest query mix, costs a ``fedmed serve`` process.

``python benchmarks/memory.py [--quick] [--out PATH] [--fedmed DIR]`` (or
``python -m benchmarks.memory``). Full mode takes 15 s to a minute and a half
on the 2-core test machine (a server that refuses is quick; one that runs
out of memory is not), ``--quick`` a little less; the hidden ``--smoke``
(tiny sizes), run by ``tests/test_benchmarks_smoke.py``, about 12 s.

Every server is ``fedmed serve`` in a child process on 127.0.0.1 with its
address space capped at 3 GiB (``RLIMIT_AS``, as in the issue), 2 waitress
threads and ``limits.memory_bytes`` 512 MiB, started by
``tests/reliability/memory_support.py`` (shared with
``tests/reliability/test_memory_attacks.py``). Each attack gets a fresh
server, so that none inherits another's memory; the honest queries share
one. Per request: the status, the first error's type and message, the peak
resident memory above the resident memory just before the request
(``VmHWM`` reset through ``/proc/PID/clear_refs``), the resident memory
after it, the wall time, and whether the server then answers ``x.sum()``
correctly. The shapes (200,000 rows: ``x`` float64, ``y`` int64, ``t`` text
of 5 characters):

- (a) a balanced tree of ``+`` over 8,192 copies of ``x``, every node its own
  table entry (16,385 entries, ~300 KB, ~16 distinct keys);
- (b) 2,000 tasks ``(x + i).sum()`` in one request;
- (c) ``(data * 100000).len()``: text repeated through a whole-table operand;
- (d) nine 10-number constants, each along its own axis, added (1.5 KB
  asking 10 ** 9 float64, 7.5 GiB), then added to ``x`` or handed to
  ``x.count_below`` as constants only;
- (e) ``x = x + x`` 18 times on ``t`` of a Parquet file served ``--in-place``
  (DuckDB), then ``.count()``;
- (f) 20 distinct ``value_counts`` (``(u + i).value_counts()``; 10 in quick
  mode) of a column of 200,000 distinct integers under
  ``example/config.yaml``'s policies (``CacheLimit`` first): each request's
  cost, and what the server still holds after the last above what it held
  after the first. (The issue used 1,000,000 values: ~100 MiB kept per
  answer, 5 s per request; a server with a memory budget now refuses that
  request whole, ~850 MiB estimated, and the cache is never reached.)
- honest: ``x.sum()``, ``describe(x)``, a filtered ``moments``, ``pearson``,
  ``t.value_counts()``, a histogram; median wall time of ``--repeats``.

``--fedmed DIR`` serves another checkout (a ``git archive`` of an older
commit, say) with its own example configs, to measure before and after.
Writes ``benchmarks/results/memory.json`` (``--out`` takes a folder or a
``.json`` path). Nothing is asserted: a refusal and an answer are both
results; the issue's target is a peak under the 512 MiB budget.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

from benchmarks import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _support() -> Any:
    spec = importlib.util.spec_from_file_location("memory_support", ROOT / "tests" / "reliability" / "memory_support.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["memory_support"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


ms = _support()

SIZES: dict[str, dict[str, int]] = {
    "full": {"rows": 200_000, "leaves": 8192, "tasks": 2000, "times": 100_000, "dims": 9, "doublings": 18,
             "unique": 200_000, "counts": 20, "repeats": 5},
    "quick": {"rows": 200_000, "leaves": 8192, "tasks": 2000, "times": 100_000, "dims": 9, "doublings": 18,
              "unique": 200_000, "counts": 10, "repeats": 3},
    "smoke": {"rows": 2_000, "leaves": 64, "tasks": 20, "times": 10, "dims": 3, "doublings": 4,
              "unique": 2_000, "counts": 3, "repeats": 1},
}


def shapes(size: dict[str, int]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """key -> (label, server, request) for every single-request attack."""
    leaves, tasks, times, dims, doublings = (size[k] for k in ("leaves", "tasks", "times", "dims", "doublings"))
    return {
        "wide_tree": (f"(a) tree of + over {leaves:,} repeated entries of x", "plain", ms.wide_tree("d", leaves=leaves)),
        "many_tasks": (f"(b) {tasks:,} tasks (x + i).sum()", "plain", ms.many_sums("d", tasks=tasks)),
        "text_table": (f"(c) (data * {times:,}).len()", "plain", ms.text_repetition("d", times=times)),
        "broadcast_rows": (f"(d) {dims} broadcasting constants added, (x + c).sum()", "plain",
                           ms.broadcast("d", into="rows", dims=dims)),
        "broadcast_constants": (f"(d) {dims} broadcasting constants added, x.count_below(c)", "plain",
                                ms.broadcast("d", into="constants", dims=dims)),
        "text_doubling_duckdb": (f"(e) x = x + x, {doublings} times, on text, --in-place", "duckdb",
                                 ms.doubling("d", times=doublings)),
    }


def record(answer: Any, served: Any, fragment: str, expected: float) -> dict[str, Any]:
    """One request's numbers, and whether the server answered ``x.sum()`` right after it."""
    error = answer.errors[0] if answer.errors else None
    following = served.post(ms.ordinary(fragment)) if served.alive() and not served.unanswered else None
    return {
        "status": answer.status,
        "no_answer": answer.error,
        "msgpack": answer.is_msgpack,
        "refused": answer.refused,
        "content_type": answer.content_type,
        "error": None if error is None else {"type": error.get("type"), "message": str(error.get("message"))[:300]},
        "peak_growth": answer.peak_growth,
        "rss_before": answer.rss_before,
        "rss_after": answer.rss_after,
        "seconds": answer.seconds,
        "next_query_ok": following is not None and following.status == 200
        and isinstance((following.values or [None])[0], float)
        and abs(following.values[0] - expected) <= 1e-9 * abs(expected),
    }


def measure_shapes(files: dict[str, Any], size: dict[str, int], start: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, (label, server, request) in shapes(size).items():
        if server == "duckdb" and "cohort.parquet" not in files:
            out[key] = {"label": label, "skipped": "DuckDB or pyarrow not installed"}
            continue
        entries, size_bytes = ms.sizes([(key, request)])[key]
        try:
            with start(server) as served:
                idle = served.started_rss
                answer = served.measure(request)
                out[key] = {"label": label, "entries": entries, "bytes": size_bytes, "idle_rss": idle,
                            **record(answer, served, "d", files["sums"]["d"])}
        except Exception as exc:  # the others still run; the failure is in the table and the JSON
            out[key] = {"label": label, "entries": entries, "bytes": size_bytes,
                        "failed": f"{type(exc).__name__}: {str(exc)[:500]}"}
        print(f"  {label}: {_line(out[key])}", file=sys.stderr, flush=True)
    return out


def measure_cache(files: dict[str, Any], size: dict[str, int], start: Callable[[str], Any]) -> dict[str, Any]:
    """(f): ``counts`` distinct ``value_counts`` in a row, each request's numbers, and what the server keeps."""
    label = f"(f) {size['counts']} distinct value_counts of {size['unique']:,} distinct values, CacheLimit"
    result: dict[str, Any] = {"label": label, "requests": []}
    try:
        with start("private") as served:
            result["idle_rss"] = served.started_rss
            for shift in range(size["counts"]):
                request = ms.value_counts("u", shift=shift)
                answer = served.measure(request)
                result["requests"].append(record(answer, served, "u", files["sums"]["u"]))
                if answer.status is None:
                    break
            result["bytes"] = ms.sizes([("f", request)])["f"][1]
    except Exception as exc:
        result["failed"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    done = result["requests"]
    if done and all(r["rss_after"] is not None for r in done):
        result["rss_after_first"], result["rss_after_last"] = done[0]["rss_after"], done[-1]["rss_after"]
        result["kept_after_first"] = done[-1]["rss_after"] - done[0]["rss_after"]
    print(f"  {label}: kept {ms.mib(result.get('kept_after_first'))} after the first", file=sys.stderr, flush=True)
    return result


def measure_honest(files: dict[str, Any], repeats: int, start: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with start("plain") as served:
        for name, request in ms.honest_mix("d").items():
            answers = [served.measure(request) for _ in range(repeats)]
            peaks = [a.peak_growth for a in answers if a.peak_growth is not None]
            out[name] = {
                "statuses": sorted({a.status for a in answers}, key=str),
                "errors": sorted({e.get("type") for a in answers for e in a.errors}),
                "peak_growth": max(peaks) if peaks else None,
                "seconds": statistics.median(a.seconds for a in answers),
                "seconds_each": [a.seconds for a in answers],
            }
    return out


def prepare(folder: Path, size: dict[str, int], example: Path) -> dict[str, Any]:
    cohort, uniques = ms.cohort(size["rows"]), ms.uniques(size["unique"])
    cohort.to_csv(folder / "cohort.csv", index=False)
    files: dict[str, Any] = {
        "cohort.csv": folder / "cohort.csv",
        "plain": ms.write_config(folder, "plain", privacy=False, example=example),
        "private": ms.write_config(folder, "private", privacy=True, example=example),
        "sums": {"d": float(cohort["x"].sum()), "u": float(uniques["x"].sum())},
    }
    try:
        uniques.to_parquet(folder / "uniques.parquet")
        files["uniques"] = folder / "uniques.parquet"
        cohort.to_parquet(folder / "cohort.parquet")
        if importlib.util.find_spec("duckdb") is not None:  # --in-place needs it
            files["cohort.parquet"] = folder / "cohort.parquet"
    except ImportError:
        uniques.to_csv(folder / "uniques.csv", index=False)
        files["uniques"] = folder / "uniques.csv"
    return files


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / ms.MiB:,.0f}"


def _status(r: dict[str, Any]) -> str:
    if "failed" in r:
        return "benchmark failed"
    if "skipped" in r:
        return "skipped"
    if r["status"] is None:
        return f"no answer ({r['no_answer']})"
    body = "" if r["msgpack"] else f" ({r['content_type'] or 'no body'})"
    return f"{r['status']}{body}"


def _error(r: dict[str, Any]) -> str:
    error = r.get("error")
    return "" if not error else f"{error['type']}: {error['message'][:70]}".replace("|", "\\|")


def _line(r: dict[str, Any]) -> str:
    if "failed" in r or "skipped" in r:
        return r.get("failed") or r["skipped"]
    return (f"status {_status(r)}, peak +{_mib(r['peak_growth'])} MiB, {r['seconds']:.2f} s"
            + (f", {_error(r)}" if r.get("error") else ""))


def table(document: dict[str, Any]) -> str:
    budget = document["settings"]["budget"]
    lines = [
        "| request | entries | bytes | status | first error | peak RSS growth, MiB | RSS after, MiB | wall, s "
        "| within budget | next x.sum() |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in document["shapes"].values():
        if "failed" in r or "skipped" in r:
            lines.append(f"| {r['label']} | {r.get('entries', '')} | {r.get('bytes', '')} | {_status(r)} "
                         "| | | | | | |")
            continue
        within = "yes" if r["peak_growth"] is not None and r["peak_growth"] <= budget else "NO"
        lines.append(
            f"| {r['label']} | {r['entries']:,} | {r['bytes']:,} | {_status(r)} | {_error(r)} "
            f"| {_mib(r['peak_growth'])} | {_mib(r['rss_after'])} | {r['seconds']:.2f} | {within} "
            f"| {'ok' if r['next_query_ok'] else 'NO'} |"
        )
    f = document["cache"]
    done = f["requests"]
    if done:
        peaks = [r["peak_growth"] for r in done if r["peak_growth"] is not None]
        statuses = ", ".join(f"{n} x {s}" for s, n in _counts(_status(r) for r in done).items())
        within = "yes" if peaks and max(peaks) <= budget and len(peaks) == len(done) else "NO"
        lines.append(
            f"| {f['label']} | | {f.get('bytes', 0):,} each | {statuses} | {_error(next((r for r in done if r['error']), {}))} "
            f"| {_mib(max(peaks) if peaks else None)} (largest) | {_mib(done[-1]['rss_after'])} (after #{len(done)}) "
            f"| {sum(r['seconds'] for r in done):.2f} (all) | {within} | {'ok' if done[-1]['next_query_ok'] else 'NO'} |"
        )
    lines += [
        "",
        "| honest query | status | peak RSS growth, MiB (largest) | wall, ms (median) |",
        "|---|---|---|---|",
    ]
    for name, r in document["honest"].items():
        status = ", ".join(map(str, r["statuses"])) + (f" ({', '.join(r['errors'])})" if r["errors"] else "")
        lines.append(f"| {name} | {status} | {_mib(r['peak_growth'])} | {1000 * r['seconds']:.1f} |")
    return "\n".join(lines)


def _counts(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 value_counts in (f) instead of 20, 3 repeats of the honest queries")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the test's tiny sizes
    parser.add_argument("--repeats", type=int, help="repeats of each honest query (default 5; quick 3)")
    parser.add_argument("--cap", type=int, default=ms.CAP, help="the servers' address-space cap in bytes (0: none)")
    parser.add_argument("--budget", type=int, default=ms.BUDGET, help="limits.memory_bytes of the servers")
    parser.add_argument("--threads", type=int, default=ms.THREADS, help="waitress threads of each server")
    parser.add_argument("--fedmed", type=Path, help="serve the fedmed of this checkout (its example configs too)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="a folder (memory.json is written there) "
                                                                  "or a .json file")
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    size = dict(SIZES[mode])
    if args.repeats:
        size["repeats"] = args.repeats
    source = args.fedmed.resolve() if args.fedmed else ms.SOURCE
    env = {"PYTHONPATH": str(source)} if args.fedmed else {}
    cap = args.cap or None
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="fedmed-memory-"))
    try:
        files = prepare(folder, size, source / "example")
        servers = {
            "plain": dict(config=files["plain"], data={"d": files["cohort.csv"]}),
            "duckdb": dict(config=files["plain"], data={"d": files.get("cohort.parquet")}, in_place=True),
            "private": dict(config=files["private"], data={"u": files["uniques"]}),
        }

        def start(name: str) -> Any:
            return ms.Served(**servers[name], cap=cap, threads=args.threads, env=env)

        print(f"memory benchmark ({mode}): fedmed from {source}", file=sys.stderr, flush=True)
        document: dict[str, Any] = {
            "benchmark": "memory",
            "mode": mode,
            "machine": report.machine(),
            "settings": {
                **size, "cap": cap, "budget": args.budget, "threads": args.threads, "fedmed": str(source),
                "server": "fedmed serve in a child process, RLIMIT_AS = cap, limits.memory_bytes = budget; "
                          "a fresh server per attack, one for the honest queries",
                "peak_growth": "VmHWM after the request (reset through /proc/PID/clear_refs before it) "
                               "minus VmRSS before it",
            },
        }
        document["shapes"] = measure_shapes(files, size, start)
        document["cache"] = measure_cache(files, size, start)
        document["honest"] = measure_honest(files, size["repeats"], start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    document["seconds"] = time.perf_counter() - started
    path = report.write_json(document, args.out, "memory.json")

    m = document["machine"]
    print(f"Machine: {m['cpu']}, {m['cores_usable']} of {m['cores']} cores, {m['ram_gb']} GB RAM; fedmed at "
          f"{m['commit']}{'' if not args.fedmed else f' serving {source}'}; {m['date']}. Servers: fedmed serve, "
          f"{args.threads} threads, address space capped at {_mib(cap)} MiB, budget (limits.memory_bytes) "
          f"{_mib(args.budget)} MiB; {size['rows']:,} rows.\n")
    print(table(document))
    cache = document["cache"]
    if "kept_after_first" in cache:
        print(f"\n- (f): RSS after the first value_counts {_mib(cache['rss_after_first'])} MiB, after the last "
              f"{_mib(cache['rss_after_last'])} MiB: {_mib(cache['kept_after_first'])} MiB kept "
              f"(CacheLimit's byte bound: 64 MiB)")
    print(f"\nwrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({document['seconds']:.0f} s)")
    broken = [k for k, r in document["shapes"].items() if "failed" in r] + (["cache"] if "failed" in cache else [])
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
