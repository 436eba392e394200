"""The benchmark suites run end to end on tiny sizes: every section of the main suite, every request shape of
``benchmarks/memory.py`` (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


MEMORY_SHAPES = {"wide_tree", "many_tasks", "text_table", "broadcast_rows", "broadcast_constants", "text_doubling_duckdb"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_memory_benchmark_smoke_run_measures_every_request_shape(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/memory.py", "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["settings"]["budget"] == 512 * 2**20
    assert {"cpu", "cores", "ram_gb", "python", "versions", "date"} <= set(result["machine"])
    assert set(result["shapes"]) == MEMORY_SHAPES
    measured = [shape for shape in result["shapes"].values() if "skipped" not in shape]
    for shape in [*measured, *result["cache"]["requests"]]:
        assert shape["status"] is not None and shape["msgpack"], shape
        assert shape["peak_growth"] is not None and shape["peak_growth"] >= 0, shape
        assert shape["next_query_ok"], shape
    assert len(result["cache"]["requests"]) == result["settings"]["counts"]
    assert all(query["statuses"] == [200] for query in result["honest"].values()), result["honest"]
    assert "| honest query |" in done.stdout
