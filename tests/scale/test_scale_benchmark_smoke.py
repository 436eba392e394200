"""``benchmarks/scale.py`` end to end on 20,000 rows: every engine measured and equal to pandas (no time asserted).

About 15 s on the 2-core test machine, most of it the Dask cluster's start.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

for _module in ("duckdb", "dask.dataframe", "distributed", "pyarrow"):
    pytest.importorskip(_module)

ROOT = Path(__file__).resolve().parents[2]
ENGINES = {"pandas", "duckdb", "dask"}


def test_smoke_run_measures_every_engine_and_each_gives_pandas_results(tmp_path: Path) -> None:
    out, data = tmp_path / "scale.json", tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "benchmarks/scale.py", "--smoke", "--repeats", "1", "--data", str(data), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["mode"] == "smoke" and result["settings"]["rows"] == 20_000
    assert {"cpu", "cores", "ram_gb", "python", "versions", "date"} <= set(result["machine"])
    engines = result["engines"]
    assert set(engines) == ENGINES
    for name, engine in engines.items():
        assert "error" not in engine, (name, engine)
        assert engine["same_as_pandas"] is True, (name, engine["max_rel_diff"], engine["max_rel_diff_at"])
        assert engine["max_rel_diff"] <= 1e-9
        assert len(engine["calls"]) == 2
        assert engine["peak_server_rss"] >= engine["server_rss"]["idle"]["peak"] > 0
    assert len(engines["dask"]["peak_worker_rss"]) == 2
    assert set(result["targets"]) == {
        "duckdb_peak_rss_under_quarter_of_pandas", "duckdb_call_time_no_worse", "duckdb_ready_and_first_call_no_worse"
    }
    assert "| duckdb |" in done.stdout

    # the reference itself: the pandas engine's describe is the pooled rows' own
    frame = pd.read_parquet(data / "parquet")
    values = engines["pandas"]["values"]
    assert values["describe.count"] == len(frame) == 20_000
    assert values["describe.mean"] == pytest.approx(frame["x"].mean(), rel=1e-12)
    assert values["describe.std"] == pytest.approx(frame["x"].std(), rel=1e-12)
    assert (values["describe.min"], values["describe.max"]) == (frame["x"].min(), frame["x"].max())
