"""Run the benchmark suite: ``python -m benchmarks [--quick]`` or ``python benchmarks/run.py [--quick]``.

Five sections (see ``benchmarks/README.md``): round trips and bytes, latency
over many servers, server throughput, client overhead, load. Full mode takes
several minutes; ``--quick`` under two. Each run writes
``benchmarks/results/latest.md`` and ``latest.json`` (or into ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: import ``benchmarks`` as a package, from the repo root
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    __package__ = "benchmarks"

import fedmed as fm  # noqa: E402

from benchmarks import latency, overhead, report, roundtrips, throughput  # noqa: E402
from benchmarks.original import Original  # noqa: E402

HERE = Path(__file__).resolve().parent
LOAD = HERE / "load.py"


@dataclass(frozen=True)
class Settings:
    mode: str
    servers: int = 3
    rows: int = 10_000
    roundtrip_repeats: int = 3
    latency_servers: tuple[int, ...] = (1, 4, 16, 32)
    latency_repeats: int = 3
    delay: float = 0.020
    threads: int = 4
    host_processes: int = 2  # child processes holding FedMed's servers (one per core)
    throughput_rows: tuple[int, ...] = (1_000_000, 10_000_000)
    throughput_repeats: int = 5
    overhead_nodes: tuple[int, int] = (1_000, 10_000)
    overhead_repeats: int = 5
    original: bool = True
    load: str | None = "full"
    seed: int = 2024


MODES = {
    "full": Settings("full"),
    "quick": Settings(
        "quick", roundtrip_repeats=1, latency_servers=(1, 4, 8), latency_repeats=1,
        throughput_rows=(100_000, 1_000_000), overhead_repeats=3, load="quick",
    ),
    # tiny sizes for the test suite: seconds, no original, no load test
    "smoke": Settings(
        "smoke", servers=2, rows=200, roundtrip_repeats=1, latency_servers=(1, 2), latency_repeats=1,
        throughput_rows=(10_000,), throughput_repeats=3, overhead_nodes=(100, 1_000), overhead_repeats=1,
        original=False, load=None,
    ),
}


def load_section(settings: Settings) -> report.Section:
    """Section 5: ``benchmarks/load.py`` (16 concurrent clients on one server), when it exists."""
    about = ("Requests per second of one FedMed server under 16 concurrent clients, measured by "
             "`benchmarks/load.py` (run as a separate program; its own summary is quoted below).")
    section = report.Section("load", "5. Load", about)
    result: dict[str, Any] = {}
    output = ""
    if settings.load is None:
        status = f"skipped in {settings.mode} mode"
    elif not LOAD.exists():
        status = "not available (benchmarks/load.py does not exist)"
    else:
        command = [sys.executable, str(LOAD)] + (["--quick"] if settings.load == "quick" else [])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=HERE.parent)
            output = done.stdout.strip()
            status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode}) {done.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            status = "failed: no result within 600 s"
        result = _json_line(output)
    latency = result.get("latency_ms", {})
    section.tables.append(report.Table(
        "One server, 16 concurrent clients",
        ["status", "requests/second", "latency p50, ms", "latency p95, ms", "errors"],
        [[status, _cell(result.get("requests_per_second")), _cell(latency.get("p50")), _cell(latency.get("p95")),
          _cell(result.get("errors"))]],
    ))
    section.quote = "\n".join(line for line in output.splitlines() if not line.startswith("{"))
    section.data = {"status": status, "command": settings.load, "result": result, "output": output}
    return section


def _json_line(output: str) -> dict[str, Any]:
    """The last line of ``output`` that is a JSON object, or ``{}``."""
    for line in reversed(output.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}


def _cell(value: Any) -> str:
    return "n/a" if value is None else f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat: under two minutes")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-original", action="store_true", help="skip the original fedmed 0.3.2 columns")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for latest.md and latest.json")
    args = parser.parse_args(argv)
    settings = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # naive plans queue on purpose
    fm.options.progress = False

    started = time.perf_counter()
    sections: list[report.Section] = []

    def timed_section(make: Any, *args: Any) -> None:
        begun = time.perf_counter()
        section = make(*args)
        section.seconds = time.perf_counter() - begun
        sections.append(section)
        print(f"{section.title}: {section.seconds:.0f} s", file=sys.stderr, flush=True)

    original, note = Original.launch(settings.original and not args.no_original)
    try:
        timed_section(roundtrips.run, settings, original, note)
        timed_section(latency.run, settings, original, note)
    finally:
        if original is not None:
            original.close()
    timed_section(throughput.run, settings)
    timed_section(overhead.run, settings)
    timed_section(load_section, settings)
    run = {
        "mode": settings.mode,
        "machine": report.machine(),
        "settings": asdict(settings),
        "original": note,
        "seconds": time.perf_counter() - started,
    }
    md, js = report.write(run, sections, args.out)
    print(f"wrote {md} and {js} in {run['seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
