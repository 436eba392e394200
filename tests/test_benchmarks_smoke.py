"""The benchmark suite runs end to end on tiny sizes and writes every section (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = {"roundtrips", "latency", "throughput", "overhead", "load"}


def test_smoke_run_writes_every_section_and_counts_fewer_requests_for_the_optimised_plan(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    result = json.loads((tmp_path / "latest.json").read_text())
    assert result["mode"] == "smoke"
    assert set(result["sections"]) == SECTIONS
    assert {"cpu", "cores", "ram_gb", "python", "versions", "date"} <= set(result["machine"])
    markdown = (tmp_path / "latest.md").read_text()
    assert all(f"## {section['title']}" in markdown for section in result["sections"].values())

    # counts are exact: describe is one request per server optimised (moments, min, max together), three naive
    describe = result["sections"]["roundtrips"]["data"]["analyses"]["describe"]
    assert describe["optimised"]["requests_per_server"] < describe["naive"]["requests_per_server"]
    assert (describe["optimised"]["requests_per_server"], describe["naive"]["requests_per_server"]) == (1, 3)
    assert describe["optimised"]["rounds"] == 1
    assert describe["original"] is None  # the smoke run leaves the original fedmed out
